"""A simulation on a real Ray cluster: a head and a second raylet started with `ray start` on loopback."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

slow = pytest.mark.slow  # raylets and `fedctx simulate` / `flwr run` processes: about 3 minutes a test on 2 cores

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ["--set", "dim=4", "--set", "text-dim=8", "--set", "text-epochs=2", "--set", "local-steps=2",
            "--set", "num-rounds=3", "--set", "sample-rate=0.7", "--set", "eval-every=2", "--set", "loss=softmax"]
#: a line the ClientApp prints for every training message, as Ray forwards it from the actor to the driver
TRAINED = re.compile(r"\(ClientAppActor pid=(\d+)(?:, ip=[^)]*)?\) fedctx node: train round (\d+)")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: Ray's driver folds equal lines of different actors into one ("[repeated 2x across cluster]"); off, every
#: actor's lines come through (on loopback each twice: both raylets' log monitors read the head's log folder)
NO_DEDUP = {"RAY_DEDUP_LOGS": "0"}


def _trained(output: str) -> set[tuple[int, int]]:
    """{(actor pid, round)} of the training messages in a run's output."""
    return {(int(pid), int(r)) for pid, r in TRAINED.findall(ANSI.sub("", output))}


def _simulate(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    from common.privacy.sampling import SAMPLING_KEY_ENV

    env = {**os.environ, **NO_DEDUP, SAMPLING_KEY_ENV: "ray-cluster-test"}  # the same users sampled (test key)
    return subprocess.run([sys.executable, "-m", "simulations.cli", "simulate", "--data", str(data), "--nodes", "2",
                           "--no-baselines", *SETTINGS, *extra, "--out", str(out)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def _results(out: Path) -> dict:
    with np.load(out / "global_model.npz") as f:
        model = {k: f[k] for k in f.files}
    with open(out / "rounds.csv") as f:
        rows = [{k: v for k, v in r.items() if "seconds" not in k} for r in csv.DictReader(f)]  # times differ
    return {"model": model, "rounds": rows, "metrics": json.loads((out / "summary.json").read_text())["systems"]}


@slow
def test_a_simulation_on_a_two_raylet_cluster_uses_both_and_equals_the_local_run(small_synthetic, tmp_path):
    """2 SuperNodes' shards on a cluster of 2 raylets of 1 CPU each: Flower's pool puts one ClientApp actor on
    each raylet, both train, and the run's users, examples, losses, metrics and global model equal a run on a
    local Ray (same seed and sampling key). Equal up to float32 rounding, not bit for bit: two runs on a local Ray
    are bit-equal, but a node's float32 update computed in another process can differ in the last bits (at 1000
    users and dim 32, python -m simulations.benchmarks.ray: max abs 3e-6 to 6e-6 on entries up to 0.2 after 4 rounds,
    with identical per-round losses and HR), and server Adam's division by sqrt(v) magnifies that on near-zero
    coordinates; the server's sum of 2 replies itself is order-free."""
    from simulations.rigs.raycluster import LoopbackRay, actor_nodes

    local = _simulate(small_synthetic, tmp_path / "local")
    assert local.returncode == 0, local.stderr[-3000:]
    with LoopbackRay(workers=1, cpus=1, timeout=180) as cluster:
        nodes = cluster.node_ids()
        run = _simulate(small_synthetic, tmp_path / "cluster", "--set", f"ray-address={cluster.address}",
                        "--verbose")
        assert run.returncode == 0, run.stderr[-3000:] + cluster.log_tail()
        where = actor_nodes(cluster.address)  # {pid: Ray node id} of the ClientApp actors the cluster ran
    assert len(nodes) == 2
    trained = {pid for pid, _ in _trained(run.stdout + run.stderr)}
    assert trained and trained <= set(where), f"training messages from {trained}, actors {where}"
    assert {where[pid] for pid in trained} == set(nodes), "the ClientApps did not train on both raylets"
    summary = json.loads((tmp_path / "cluster" / "summary.json").read_text())
    assert summary["ray"] == {"ray-address": cluster.address, "ray-nodes": 2, "ray-cpus": 2}
    assert json.loads((tmp_path / "local" / "summary.json").read_text())["ray"]["ray-address"] == "local"

    a, b = _results(tmp_path / "local"), _results(tmp_path / "cluster")
    assert len(a["rounds"]) == len(b["rounds"]) == 3
    for ra, rb in zip(a["rounds"], b["rounds"]):
        assert ra.keys() == rb.keys()
        for key in ra:  # counts exactly, losses and metrics to float32 rounding
            if key in ("round", "users", "nodes-asked", "nodes-replied", "nodes-failed", "examples"):
                assert ra[key] == rb[key], key
            elif ra[key] != "":
                assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-5, abs=1e-6), key
    assert a["metrics"]["federated"].keys() == b["metrics"]["federated"].keys()
    for key, value in a["metrics"]["federated"].items():
        if isinstance(value, float):
            assert value == pytest.approx(b["metrics"]["federated"][key], rel=1e-5, abs=1e-6), key
        else:
            assert value == b["metrics"]["federated"][key], key
    assert set(a["model"]) == set(b["model"])
    for k in a["model"]:
        np.testing.assert_allclose(a["model"][k], b["model"][k], rtol=1e-4, atol=1e-5, err_msg=k)
    assert not list((tmp_path / "cluster").glob(".ray-probe-*"))  # the shared-path probe is gone


@slow
def test_flwr_run_of_the_ray_cluster_federation_trains_on_both_raylets(small_synthetic, tmp_path):
    """`RAY_ADDRESS=<head> flwr run . ray-cluster` (pyproject's federation: Flower's own path, options.backend
    handed to ray.init): the 2 SuperNodes' training messages run on both raylets and the run completes."""
    from simulations.rigs.loopback import BIN, cluster_env
    from simulations.rigs.raycluster import LoopbackRay, actor_nodes

    run_dir = tmp_path / "run"
    with LoopbackRay(workers=1, cpus=1, timeout=180) as cluster:
        nodes = cluster.node_ids()
        proc = subprocess.run([str(BIN / "flwr"), "run", ".", "ray-cluster", "--run-config",
                               f"num-rounds=2 eval-every=2 dim=4 text-dim=8 text-epochs=2 data='{small_synthetic}' "
                               f"run-dir='{run_dir}'"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                              env={**cluster_env(tmp_path), **NO_DEDUP, "RAY_ADDRESS": cluster.address})
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0 and "Traceback" not in out, out[-4000:] + cluster.log_tail()
        where = actor_nodes(cluster.address)
    trained = _trained(out)
    assert {r for _, r in trained} == {1, 2}, out[-4000:]
    assert {where[pid] for pid, _ in trained} == set(nodes) and len(nodes) == 2
    assert (run_dir / "global_model.npz").is_file()


def test_a_ray_address_where_nothing_listens_is_one_clear_error_at_once():
    """A typo in ray-address fails in seconds with the setting, the address and the fix (Ray itself would retry
    for about 2 minutes and then raise a ConnectionError without a message)."""
    import socket
    import time

    from simulations.rigs.raycluster import RayClusterError, connect

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(RayClusterError, match=rf"ray-address: nothing answers at 127.0.0.1:{port} .*ray start --head"):
        connect(f"127.0.0.1:{port}", 1, False)
    assert time.monotonic() - t0 < 15
