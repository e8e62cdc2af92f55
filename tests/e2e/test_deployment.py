"""Deployment: the credentials script, the federation template, and a real federation on loopback.

The slow test runs what docs/deployment.md describes, as real processes: a SuperLink with TLS and SuperNode
authentication, SuperNodes registered with `flwr supernode register`, devices with their own data and state
directories, and `flwr run`. It kills one SuperNode after round 1 (the run goes on and records the failure),
restarts it on the same state-dir (it rejoins with its theta_u; rounds wait for it, `min-connected`), starts an unregistered SuperNode (refused) and a
device whose data is malformed (its replies are dropped with the reason in the server log). The server reads a
catalogue directory that holds no interactions file at all.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from simulations.rigs.loopback import (BIN, ROOT, Cluster, Proc, cluster_env, copy_app, flower, start_listening,
                                  wait_for)

MAKE_CERTS = ROOT / "scripts" / "make-certs.sh"


def _tools_missing() -> list[str]:
    return [t for t in ("openssl", "ssh-keygen") if shutil.which(t) is None]


def _make_certs(out: Path, n: int) -> None:
    subprocess.run(["bash", str(MAKE_CERTS), str(out), str(n)], check=True, capture_output=True, text=True,
                   timeout=120)


# -- fast checks ------------------------------------------------------------------------------------------------

def test_federation_template_points_at_a_local_superlink_with_tls():
    feds = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["federations"]
    local = feds["local-deployment"]
    assert local["address"] == "127.0.0.1:9093"  # flower-superlink's default Control API port
    assert local["root-certificates"] == "certificates/ca.crt"  # scripts/make-certs.sh certificates
    assert not local.get("insecure", False)
    assert feds["default"] == "local-simulation"  # `flwr run .` alone still simulates


@pytest.mark.skipif(bool(_tools_missing()), reason=f"needs {' and '.join(_tools_missing())}")
def test_make_certs_writes_a_ca_a_loopback_server_certificate_and_supernode_keys(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = tmp_path / "certs"
    _make_certs(out, 2)
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    assert server.issuer == ca.subject
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.crt"), str(out / "server.pem")], check=True,
                   capture_output=True)
    for k in range(2):  # what `flwr supernode register` accepts: an OpenSSH NIST P-384 public key
        public = serialization.load_ssh_public_key((out / f"supernode-{k}.pub").read_bytes())
        assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
        assert (out / f"supernode-{k}").stat().st_mode & 0o077 == 0  # private keys: owner only
    assert (out / "ca.key").stat().st_mode & 0o077 == 0 and (out / "server.key").stat().st_mode & 0o077 == 0
    # a second call keeps what exists and only adds key pairs
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _make_certs(out, 3)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name in before} == before
    assert (out / "supernode-2.pub").is_file()


# -- the federation on loopback ---------------------------------------------------------------------------------

def _node_round(state_dir: Path) -> int:
    with np.load(state_dir / "node-state.npz") as f:
        return int(f["round"])


def _superlink(cluster: Cluster, tmp: Path, certs: Path) -> tuple[Proc, int, int]:
    """A SuperLink with TLS and SuperNode authentication, listening; with its Fleet and Control API ports."""
    proc, (fleet, control, serverappio) = start_listening(
        lambda ports, attempt: _start_superlink(cluster, tmp, certs, *ports, attempt), 3, timeout=120)
    return proc, fleet, control


def _start_superlink(cluster: Cluster, tmp: Path, certs: Path, fleet: int, control: int, serverappio: int,
                     attempt: int) -> Proc:
    return cluster.start(f"superlink-{attempt}" if attempt else "superlink", [
        *flower("flower-superlink"), "--ssl-ca-certfile", str(certs / "ca.crt"),
        "--ssl-certfile", str(certs / "server.pem"), "--ssl-keyfile", str(certs / "server.key"),
        "--enable-supernode-auth", "--isolation", "subprocess",
        "--fleet-api-address", f"127.0.0.1:{fleet}", "--control-api-address", f"127.0.0.1:{control}",
        "--serverappio-api-address", f"127.0.0.1:{serverappio}"], cwd=tmp / "superlink",
        FLWR_HOME=str(tmp / "superlink" / "flwr"))


def _register(app: Path, certs: Path, n: int, env: dict) -> list[int]:
    """`flwr supernode register` for keys supernode-0..n-1, in parallel (without TensorFlow: loopback.flower);
    their node ids."""
    regs = [subprocess.Popen([*flower("flwr"), "supernode", "register", str(certs / f"supernode-{k}.pub"),
                              str(app), "loopback", "--format", "json"], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True) for k in range(n)]
    node_ids = []
    for k, reg in enumerate(regs):
        out, err = reg.communicate(timeout=180)
        found = re.search(r'"node-id":\s*(\d+)', out)
        assert found and '"success": true' in out, f"registering supernode-{k} failed:\n{out}\n{err[-2000:]}"
        node_ids.append(int(found.group(1)))
    return node_ids


def _supernode(cluster: Cluster, tmp: Path, certs: Path, fleet: int, k: int, data: Path, extra: str = "",
               name: str | None = None) -> Proc:
    """SuperNode k (key supernode-k) serving `data`, its state in tmp/state-k, its ClientAppIo API listening on a
    free port; `extra`: more node-config."""
    proc, _ = start_listening(lambda ports, attempt: _start_supernode(
        cluster, tmp, certs, fleet, ports[0], k, data, extra, (name or f"supernode-{k}") + (f"-{attempt}" if attempt
                                                                                        else "")), 1, timeout=120)
    return proc


def _start_supernode(cluster: Cluster, tmp: Path, certs: Path, fleet: int, appio: int, k: int, data: Path,
                     extra: str, name: str) -> Proc:
    return cluster.start(name, [
        *flower("flower-supernode"), "--superlink", f"127.0.0.1:{fleet}",
        "--root-certificates", str(certs / "ca.crt"), "--auth-supernode-private-key", str(certs / f"supernode-{k}"),
        "--clientappio-api-address", f"127.0.0.1:{appio}", "--isolation", "subprocess",
        "--node-config", f"data-dir='{data}' state-dir='{tmp / f'state-{k}'}'" + (f" {extra}" if extra else "")],
        cwd=tmp / f"node-{k}", FLWR_HOME=str(tmp / f"node-{k}" / "flwr"))


def _without_device_column(src: Path, dst: Path) -> Path:
    """A copy of device directory src whose interactions lack the declared context column 'device'."""
    shutil.copytree(src, dst)
    with (dst / "interactions.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    with (dst / "interactions.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, [c for c in table[0] if c != "device"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(table)
    return dst


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, cluster_env(tmp_path))
    yield c
    c.close()


@pytest.mark.slow
@pytest.mark.skipif(bool(_tools_missing()), reason=f"needs {' and '.join(_tools_missing())}")
def test_federation_on_loopback_survives_a_killed_node_and_refuses_strangers(tmp_path, cluster):
    try:
        _federation_on_loopback(tmp_path, cluster)
    except BaseException:
        cluster.dump()
        raise


def _federation_on_loopback(tmp: Path, cluster: Cluster) -> None:
    t_start = time.monotonic()
    env = cluster.env

    # credentials: supernode-0..2 for the devices, 3 for the malformed device, 4 never registered
    certs = tmp / "certs"
    _make_certs(certs, 5)

    # the app as `flwr run` ships it, with a federation made from the template for this SuperLink's ports
    link, fleet, control = _superlink(cluster, tmp, certs)  # TLS and SuperNode authentication
    template = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["federations"]["local-deployment"]
    assert set(template) == {"address", "root-certificates"}
    app = copy_app(tmp / "app", "loopback", f'address = "127.0.0.1:{control}"\n'
                                            f'root-certificates = "{certs / "ca.crt"}"')

    # meanwhile, the data: 60 users in 3 devices; the server's directory holds the catalogue only
    subprocess.run([str(BIN / "fedctx"), "data", "generate", "--out", str(tmp / "data"), "--users", "60",
                    "--items", "200", "--format", "csv"], check=True, env=env, capture_output=True, timeout=300)
    subprocess.run([str(BIN / "fedctx"), "data", "partition", str(tmp / "data"), "--out", str(tmp / "fed"),
                    "--devices", "3"], check=True, env=env, capture_output=True, timeout=300)
    fed = tmp / "fed"
    server_files = sorted(p.name for p in (fed / "server").iterdir())
    assert not [n for n in server_files if n.startswith("interactions")], server_files
    assert "interactions" not in tomllib.loads((fed / "server" / "dataset.toml").read_text())["dataset"]
    # a device whose interactions lack the declared context column 'device'
    bad = _without_device_column(fed / "device-1", fed / "device-bad")

    wait_for("the SuperLink's Control API", lambda: f"Control API on 127.0.0.1:{control}" in link.text(), 120, (link,))

    node_ids = _register(app, certs, 4, env)  # SuperNodes 0-3

    def supernode(k: int, data: Path, name: str | None = None) -> Proc:
        return _supernode(cluster, tmp, certs, fleet, k, data, name=name)

    nodes = [supernode(k, fed / f"device-{k}") for k in range(3)]
    malformed = supernode(3, bad)
    stranger = supernode(4, fed / "device-0")

    def activations(node_id: int) -> int:
        return link.text().count(f"Activated node_id={node_id}")

    wait_for("the 4 registered SuperNodes to connect", lambda: all(activations(i) for i in node_ids), 180,
          (link, *nodes, malformed))

    # the run: central DP (population = N from federation.json), strings quoted inside the run config. min-connected=4
    # (the three devices and the malformed one): once the SuperLink has marked the killed node offline, the next
    # round waits until it is back, so the restarted node takes part whatever the speed of the rounds.
    run_dir = tmp / "run"
    run_config = (f"data='{fed / 'server'}' run-dir='{run_dir}' num-rounds=5 eval-every=5 dim=4 text-dim=8 "
                  f"text-epochs=2 local-steps=1 min-nodes=2 min-connected=4 round-timeout=90 privacy='central' "
                  f"population=60 noise-multiplier=0.3 clip-norm=1.0")
    run = cluster.start("flwr-run", [str(BIN / "flwr"), "run", str(app), "loopback", "--stream",
                                     "--run-config", run_config], cwd=tmp)
    wait_for("round 1", lambda: re.search(r"^round\s+1/5", link.text(), re.M), 300, (link, run))

    # kill SuperNode 1 (and its ClientApp processes) after round 1
    killed_id = node_ids[1]
    cluster.kill(nodes[1])
    t_kill = time.monotonic()
    round_at_kill = _node_round(tmp / "state-1")
    assert round_at_kill >= 1
    drop = re.compile(rf"round (\d+): train reply of node {killed_id} dropped: (.+)")
    wait_for("the killed node's reply to be dropped", lambda: drop.search(link.text()), 180, (link, run))
    # restart it on the same key and state-dir. The SuperLink marks a silent node offline 2 heartbeat intervals
    # (2 x 30 s) after its last heartbeat, and refuses a SuperNode that comes back before that (the old one still
    # counts as online): then the new process exits and is started again.
    before = activations(killed_id)
    for attempt in range(4):
        restarted = supernode(1, fed / "device-1", name=f"supernode-1-restart-{attempt}")
        if wait_for("the restarted SuperNode to connect or be refused", lambda: activations(killed_id) > before
                 or restarted.popen.poll() is not None, 180, (link,)) and activations(killed_id) > before:
            break
        assert "FAILED_PRECONDITION" in restarted.text(), "the restarted SuperNode failed otherwise"
        time.sleep(max(0.0, 65 - (time.monotonic() - t_kill)))
    else:
        raise AssertionError("the killed SuperNode could not reconnect")

    wait_for("the run to finish", lambda: run.popen.poll() is not None, 420, (link,))
    server_log = link.text()

    # the stranger was refused and never took part
    assert stranger.popen.wait(timeout=60) != 0
    assert "FAILED_PRECONDITION" in stranger.text() and "No SuperNode found with the given public key" in \
        stranger.text()
    assert not (tmp / "state-4" / "node-state.npz").exists()

    # rounds.csv (under DP the diagnostics sit in run-dir/diagnostics) records the failures
    with (run_dir / "diagnostics" / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2, 3, 4, 5]
    asked, replied, failed = ([int(r[k]) for r in rows] for k in ("nodes-asked", "nodes-replied", "nodes-failed"))
    assert max(asked) == 4  # the three devices and the malformed one; the stranger never
    assert all(a == r + f for a, r, f in zip(asked, replied, failed))
    assert replied[0] == 3 and failed[0] == 1  # round 1: the malformed device fails
    kill_round = int(drop.search(server_log).group(1))
    assert kill_round >= 2 and replied[kill_round - 1] == 2 and failed[kill_round - 1] >= 1
    assert kill_round < 5 and 3 in replied[kill_round:], f"the restarted node never replied again: {replied}"
    assert all(int(r["users"]) > 0 for r in rows)
    assert (run_dir / "global_model.npz").is_file() and (run_dir / "privacy.json").is_file()

    # the malformed device: every reply dropped with its reason in the server log, never aggregated
    bad_drops = re.findall(rf"round (\d+): train reply of node {node_ids[3]} dropped: (.+)", server_log)
    assert [int(r) for r, _ in bad_drops] == [1, 2, 3, 4, 5]
    assert "required column 'device' is missing" in bad_drops[0][1]
    assert "ClientApp raised an exception" in malformed.text()

    # the restarted node went on from its state-dir: its theta_u round advanced past the kill
    assert _node_round(tmp / "state-1") > round_at_kill
    assert _node_round(tmp / "state-0") == 5 and _node_round(tmp / "state-2") == 5
    for k in range(3):
        assert {"store.npz", "content.npz", "schema.json", "global_model.npz"} <= {
            p.name for p in (tmp / f"state-{k}").iterdir()}

    # the SuperLink's "Node Unavailable" error for the killed node is counted against that node, not node 1
    assert "reply of node 1 dropped" not in server_log
    assert "Node Unavailable" in drop.search(server_log).group(2)

    # what `flwr run --stream` showed: the ServerApp's round lines
    assert re.search(r"^round\s+5/5", run.text(), re.M)

    # the device as a product, offline on device-0's state: recommend (from the last global model), then record
    import pandas as pd

    user = str(pd.read_csv(fed / "device-0" / "interactions.csv", dtype=str)["user_id"].iloc[0])
    fedctx = [str(BIN / "fedctx"), "device"]
    rec = subprocess.run([*fedctx, "recommend", "--state", str(tmp / "state-0"), "--user", user, "--json"],
                         capture_output=True, text=True, timeout=300, env=cluster.env)
    assert rec.returncode == 0, rec.stderr[-2000:]
    before = json.loads(rec.stdout)["recommendations"]
    assert len(before) == 10 and json.loads(rec.stdout)["round"] == 5
    item = before[0]["item_id"]
    out = subprocess.run([*fedctx, "record", "--state", str(tmp / "state-0"), "--user", user, "--item", item],
                         capture_output=True, text=True, timeout=300, env=cluster.env)
    assert out.returncode == 0 and "refreshed" in out.stdout, out.stderr[-2000:]
    after = subprocess.run([*fedctx, "recommend", "--state", str(tmp / "state-0"), "--user", user, "--json"],
                           capture_output=True, text=True, timeout=300, env=cluster.env)
    assert item not in {r["item_id"] for r in json.loads(after.stdout)["recommendations"]}  # now in the history
    # each deployed message's time, as the device logged it (docs/benchmarks.md)
    with (tmp / "state-0" / "timings.csv").open() as f:
        timings = list(csv.DictReader(f))
    assert {t["message"] for t in timings} == {"train", "evaluate"} and len(timings) >= 6
    print("device-0 messages (process start to handler, state load, compute, save; s):",
          [(t["message"][0], t["process_start_to_handler_s"], t["state_load_s"], t["compute_s"], t["save_s"])
           for t in timings])
    print(f"federation on loopback: {time.monotonic() - t_start:.0f} s; nodes-replied per round {replied}")


@pytest.mark.slow
@pytest.mark.skipif(bool(_tools_missing()), reason=f"needs {' and '.join(_tools_missing())}")
def test_secure_aggregation_on_real_supernodes_survives_a_node_that_fails_after_sharing_keys(tmp_path, cluster):
    try:
        _secure_federation(tmp_path, cluster)
    except BaseException:
        cluster.dump()
        raise


def _secure_federation(tmp: Path, cluster: Cluster) -> None:
    """SecAgg+ over TLS and authenticated SuperNodes: two devices that require secure aggregation and one whose
    data is malformed, so it takes part in setup and key sharing of the user-count round (secagg-min-users) and
    then fails, every round. The server removes its masks from the shares of the others, and the training round
    goes to the two counted devices (accepted: secagg-accept-two-nodes) and sums them only."""
    t_start = time.monotonic()
    env = cluster.env
    certs = tmp / "certs"
    _make_certs(certs, 3)
    link, fleet, control = _superlink(cluster, tmp, certs)
    app = copy_app(tmp / "app", "loopback", f'address = "127.0.0.1:{control}"\n'
                                            f'root-certificates = "{certs / "ca.crt"}"')
    subprocess.run([str(BIN / "fedctx"), "data", "generate", "--out", str(tmp / "data"), "--users", "40",
                    "--items", "150", "--format", "csv"], check=True, env=env, capture_output=True, timeout=300)
    subprocess.run([str(BIN / "fedctx"), "data", "partition", str(tmp / "data"), "--out", str(tmp / "fed"),
                    "--devices", "2"], check=True, env=env, capture_output=True, timeout=300)
    fed = tmp / "fed"
    bad = _without_device_column(fed / "device-1", fed / "device-bad")  # training fails on this node
    wait_for("the SuperLink's Control API", lambda: f"Control API on 127.0.0.1:{control}" in link.text(), 120, (link,))
    node_ids = _register(app, certs, 3, env)
    datas = [fed / "device-0", fed / "device-1", bad]
    nodes = [_supernode(cluster, tmp, certs, fleet, k, datas[k], extra="require-secure-aggregation=true")
             for k in range(3)]
    wait_for("the 3 SuperNodes to connect", lambda: all(f"Activated node_id={i}" in link.text() for i in node_ids),
             180, (link, *nodes))
    run_dir = tmp / "run"
    run_config = (f"data='{fed / 'server'}' run-dir='{run_dir}' num-rounds=2 eval-every=2 dim=4 text-dim=8 "
                  f"text-epochs=2 local-steps=1 min-nodes=2 round-timeout=120 secure-aggregation=true "
                  f"secagg-max-users=20 population=40 secagg-accept-two-nodes=true")
    run = cluster.start("flwr-run", [str(BIN / "flwr"), "run", str(app), "loopback", "--stream",
                                     "--run-config", run_config], cwd=tmp)
    wait_for("the run to finish", lambda: run.popen.poll() is not None, 900, (link,))
    server_log = link.text()
    assert re.search(r"^round\s+2/2", run.text(), re.M), run.text()[-3000:]
    with (run_dir / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["users"]) for r in rows] == [40, 40]  # the two good devices' 20 users each, summed securely
    # the failing device dropped out of the count round after sharing keys; the training round asked the others
    assert [(int(r["nodes-replied"]), int(r["nodes-failed"])) for r in rows] == [(2, 0)] * 2
    assert 0.0 <= float(rows[1]["test-hr@10"]) <= 1.0
    drops = re.findall(rf"round (\d+): (\S+) reply of node {node_ids[2]} dropped: (.+)", server_log)
    assert [(int(r), phase) for r, phase, _ in drops] == [(1, "secagg-count"), (2, "secagg-count"), (2, "evaluate")]
    assert "required column 'device' is missing" in drops[0][2]
    summary = json.loads((run_dir / "federated.json").read_text())["secure_aggregation"]
    assert summary["rounds_skipped"] == 0
    assert _node_round(tmp / "state-0") == 2 and _node_round(tmp / "state-1") == 2
    print(f"secure federation on loopback: {time.monotonic() - t_start:.0f} s")


@pytest.mark.slow
def test_flwr_run_works_on_the_default_data(tmp_path):
    """The README's `flwr run . --run-config "num-rounds=1"`, as a new user types it (with .venv/bin on PATH): on
    the default (generated) data the server publishes the schema from dataset.toml alone, nothing is fitted."""
    run_dir = tmp_path / "run"
    proc = subprocess.run([str(BIN / "flwr"), "run", ".", "--run-config", f"num-rounds=1 run-dir='{run_dir}'"],
                          cwd=ROOT, env=cluster_env(tmp_path), capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out[-4000:]
    assert (run_dir / "global_model.npz").is_file() and (run_dir / "schema.json").is_file(), out[-4000:]
    schema = json.loads((run_dir / "schema.json").read_text())
    assert [c["vocabulary"] for c in schema["context"]["columns"] if c["name"] == "device"] == [
        ["desktop", "mobile", "tablet"]]


@pytest.mark.slow
@pytest.mark.skipif(bool(_tools_missing()), reason=f"needs {' and '.join(_tools_missing())}")
def test_many_supernodes_with_tls_and_authentication_complete_three_rounds(tmp_path, cluster):
    """FEDCTX_LOOPBACK_NODES SuperNodes (default 5), registered and authenticated over TLS, each a device with 2
    users, run 3 rounds (train and evaluate) to the end within a bound; every round hears from every node. Each
    message starts a flwr-clientapp process with TensorFlow (about 0.3 GiB of its own and several CPU seconds): 30
    (FEDCTX_LOOPBACK_NODES=30) passed on 2 cores in 14 minutes, 8.6 GiB at the peak (docs/benchmarks.md, "Many
    SuperNodes"), so the suite runs 5."""
    import os

    n = int(os.environ.get("FEDCTX_LOOPBACK_NODES", "5"))
    try:
        _many_supernodes(tmp_path, cluster, n)
    except BaseException:
        cluster.dump(20)
        raise


def _many_supernodes(tmp: Path, cluster: Cluster, n: int) -> None:
    t_start = time.monotonic()
    env = cluster.env
    certs = tmp / "certs"
    _make_certs(certs, n)
    link, fleet, control = _superlink(cluster, tmp, certs)
    app = copy_app(tmp / "app", "loopback", f'address = "127.0.0.1:{control}"\n'
                                            f'root-certificates = "{certs / "ca.crt"}"')
    subprocess.run([str(BIN / "fedctx"), "data", "generate", "--out", str(tmp / "data"), "--users", str(2 * n),
                    "--items", "60", "--format", "csv"], check=True, env=env, capture_output=True, timeout=300)
    subprocess.run([str(BIN / "fedctx"), "data", "partition", str(tmp / "data"), "--out", str(tmp / "fed"),
                    "--devices", str(n)], check=True, env=env, capture_output=True, timeout=300)
    fed = tmp / "fed"
    wait_for("the SuperLink's Control API", lambda: f"Control API on 127.0.0.1:{control}" in link.text(), 120, (link,))
    node_ids = _register(app, certs, n, env)
    nodes = [_supernode(cluster, tmp, certs, fleet, k, fed / f"device-{k}") for k in range(n)]
    wait_for(f"the {n} SuperNodes to connect", lambda: all(f"Activated node_id={i}" in link.text() for i in node_ids),
             300, (link, *nodes))
    t_run = time.monotonic()
    run_dir = tmp / "run"
    run_config = (f"data='{fed / 'server'}' run-dir='{run_dir}' num-rounds=3 eval-every=1 dim=4 text-dim=8 "
                  f"text-epochs=2 local-steps=1 min-nodes={n} min-connected={n} round-timeout=900")
    run = cluster.start("flwr-run", [str(BIN / "flwr"), "run", str(app), "loopback", "--stream",
                                     "--run-config", run_config], cwd=tmp)
    wait_for("the run to finish", lambda: run.popen.poll() is not None, 600 + 120 * n, (link,))
    assert re.search(r"^round\s+3/3", run.text(), re.M), run.text()[-3000:]
    with (run_dir / "rounds.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2, 3]
    assert [int(r["nodes-replied"]) for r in rows] == [n] * 3 and all(int(r["users"]) > 0 for r in rows)
    assert all(_node_round(tmp / f"state-{k}") == 3 for k in range(n))
    # each device's messages, as it logged them (docs/benchmarks.md, "Many SuperNodes")
    per_message = []
    for k in range(n):
        with (tmp / f"state-{k}" / "timings.csv").open() as f:
            per_message += list(csv.DictReader(f))
    assert len(per_message) == 6 * n  # a train and an evaluate message per round and node
    cols = ("process_start_to_handler_s", "state_load_s", "compute_s", "save_s")
    medians = {c: float(np.median([float(t[c]) for t in per_message])) for c in cols}
    print(f"{n} SuperNodes on loopback: set-up {t_run - t_start:.0f} s, 3 rounds {time.monotonic() - t_run:.0f} s; "
          f"per message (median over {len(per_message)}): {medians}")
