"""End to end through the real Flower simulation engine and the `fedctx` command line."""

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
from typer.testing import CliRunner

from common.config import Config
from simulations.cli.app import cli

pytestmark = pytest.mark.slow  # real Flower simulations and `fedctx` subprocesses: minutes (make test-fast skips them)

#: one loss: loss=auto (the default) would train two models in every test; test_loss_auto_* covers it
SMALL = ["--set", "dim=4", "--set", "text-dim=8", "--set", "text-epochs=2", "--set", "central-epochs=2",
         "--set", "local-steps=2", "--set", "loss=softmax"]


def _fedctx(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**{k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "simulations.cli", *args], capture_output=True, text=True,
                          env=env, cwd=Path(__file__).resolve().parents[2], timeout=600)


def test_simulate_writes_the_run_directory(small_synthetic, tmp_path):
    out = tmp_path / "run"
    res = _fedctx("simulate", "--data", str(small_synthetic), "--set", "num-rounds=2", *SMALL, "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    last = res.stdout.strip().splitlines()[-1]
    assert last == f"run directory: {out}"
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["systems"]) == {"federated", "centralized", "context-free", "als", "bpr", "popularity"}
    for metrics in summary["systems"].values():
        for key in ("hr@10", "ndcg@10", "hr@10-sampled", "ndcg@10-sampled"):
            assert 0.0 <= metrics[key] <= 1.0
            if key.startswith("ndcg"):
                assert metrics[key] <= metrics[key.replace("ndcg", "hr")] + 1e-12
    assert summary["config"]["num-rounds"] == 2 and summary["config"]["data"] == str(small_synthetic)
    assert {"federated_s", "total_s", "centralized_epoch_s"} <= set(summary["timings"])
    with open(out / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["round"]) for r in rows] == [1, 2]
    assert int(rows[0]["users"]) == summary["dataset"]["users"]
    assert (out / "rounds.png").stat().st_size > 10_000
    assert "round   2/2" in res.stdout


def test_loss_auto_trains_both_candidates_and_keeps_the_better_on_validation(small_synthetic, tmp_path):
    """The default loss=auto: the federation and each centralized model are trained with softmax and with ials, and
    the candidate of the higher validation HR@10 is kept; the run directory is then the kept model's run (the other
    one stays under candidates/), and a resume goes on with the kept model."""
    out = tmp_path / "run"
    small = [x for x in SMALL if x != "loss=softmax"][:-1]  # SMALL without its "--set loss=softmax"
    res = _fedctx("simulate", "--data", str(small_synthetic), "--set", "num-rounds=3", *small, "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    fed = summary["systems"]["federated"]
    kept = summary["config"]["loss"]
    assert kept == fed["loss"] and set(fed["validation"]) == {"softmax", "ials"}
    assert fed["validation"][kept] == max(fed["validation"].values())
    other = ({"softmax", "ials"} - {kept}).pop()

    def best_validation(rounds_csv: Path) -> float:
        with open(rounds_csv) as f:
            return max(float(r["val-hr@10"]) for r in csv.DictReader(f))

    # each candidate's figure is its own run's best validation round; the kept run is the run directory itself
    assert best_validation(out / "rounds.csv") == pytest.approx(fed["validation"][kept])
    assert best_validation(out / "candidates" / other / "rounds.csv") == pytest.approx(fed["validation"][other])
    assert not (out / "candidates" / kept).exists() and (out / "checkpoint.npz").is_file()
    assert sorted(p.name for p in (out / "devices").iterdir()) == ["node-0", "node-1"]
    for name in ("centralized", "context-free"):  # the reference models train the kept loss: no second choice
        assert "validation" not in summary["systems"][name] and "loss" not in summary["systems"][name]
    assert "loss=auto, chosen on validation HR@10: federated " + kept in res.stdout
    # the other candidate ran the rounds asked for too (num-rounds set here is kept by both candidates)
    with open(out / "candidates" / other / "rounds.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
    # a resume goes on with the kept model, in the directory it was moved to
    again = _fedctx("simulate", "--data", str(small_synthetic), "--no-baselines", *small, "--set", "num-rounds=4",
                    "--set", "resume=true", "--out", str(out))
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resume: loss=auto kept loss={kept}" in again.stdout and "loss=auto: training" not in again.stdout
    assert "round   4/4" in again.stdout


def _private_run(data: Path, out: Path, *settings: str, env_extra: dict | None = None) -> dict:
    """`fedctx simulate` without baselines and with the given settings; returns the released privacy.json."""
    sets = [x for s in settings for x in ((s,) if s.startswith("--") else ("--set", s))]
    res = _fedctx("simulate", "--data", str(data), "--no-baselines", *SMALL, *sets, "--out", str(out),
                  env_extra=env_extra)
    assert res.returncode == 0, res.stderr[-3000:]
    privacy = json.loads((out / "privacy.json").read_text())
    assert str(out) not in json.dumps(privacy)  # no path of the server's machine is released
    if "ledger" in privacy:  # beside privacy.json
        privacy["ledger"] = str(out / privacy["ledger"])
    return privacy


def test_local_plus_central_dp_run_reports_both_guarantees(small_synthetic, tmp_path):
    privacy = _private_run(small_synthetic, tmp_path / "ldp", "num-rounds=2", "privacy=local+central",
                           "item-embedding=false", "target-epsilon=8", "sample-rate=0.5",
                           "local-noise-multiplier=1.5")
    assert privacy["unit"] == "user" and 0 < privacy["epsilon"] <= 8.0
    local = privacy["local"]
    assert local["unit"] == "example" and local["noise_multiplier"] == 1.5 and local["exact"]
    # the server states a bound that needs nobody's sampling: a client in both rounds, plus the DP warm start
    from common.privacy.accounting import local_epsilon

    assert local["epsilon"] == pytest.approx(local_epsilon(1.5, 2, 2, 1e-5, warm_starts=1))
    assert "Not covered" in local["statement"] and "add or remove one engagement" in local["statement"]
    # the hybrid item table cannot be combined with local+central (see Config)
    bad = _fedctx("simulate", "--data", str(small_synthetic), "--set", "privacy=local+central")
    assert bad.returncode == 2 and "item-embedding" in bad.stderr


def test_central_dp_run_reports_its_guarantee(small_synthetic, tmp_path):
    out = tmp_path / "dp"
    privacy = _private_run(small_synthetic, out, "num-rounds=3", "privacy=central", "target-epsilon=4",
                           "sample-rate=0.5", "adaptive-clip=true", "clip-norm=1.0")
    assert privacy["unit"] == "user" and privacy["sampling"] == {"scheme": "poisson", "q": 0.5, "secret": True}
    assert privacy["rounds"] == 3 and 0 < privacy["epsilon"] <= 4.0
    # adaptive clipping: every update norm is far below C = 1, so C shrinks toward the median norm;
    # the sum's noise multiplier is larger than the accounted z (the count takes part of the budget)
    adaptive = privacy["adaptive_clipping"]
    assert adaptive["final_clip_norm"] < 1.0 and adaptive["sum_noise_multiplier"] > privacy["noise_multiplier"]
    with open(out / "diagnostics" / "rounds.csv") as f:
        clips = [float(r["clip-norm"]) for r in csv.DictReader(f)]
    assert clips[0] == 1.0 and len(clips) == 3
    assert privacy["delta"] == pytest.approx(0.1 / 24) and privacy["noise_source"] == "SecureGaussian(AES-256-CTR keyed by os.urandom)"
    with open(privacy["ledger"]) as f:
        ledger = list(csv.DictReader(f))
    eps = [float(r["epsilon"]) for r in ledger]
    assert len(ledger) == 3 and eps == sorted(eps) and eps[-1] == pytest.approx(privacy["epsilon"])
    assert "user-level" in privacy["statement"] and "Not covered" in privacy["statement"]


def test_secure_aggregation_through_flower_with_central_dp_and_adaptive_clipping(small_synthetic, tmp_path):
    """SecAgg+ in Flower's simulation engine (Ray actors keep each node's protocol state in its Context)."""
    out = tmp_path / "secagg"
    privacy = _private_run(small_synthetic, out, "num-rounds=2", "privacy=central", "noise-multiplier=0.8",
                           "adaptive-clip=true", "secure-aggregation=true", "--nodes=3")
    assert privacy["secure_aggregation"]["max_users"] == 8  # 24 users in 3 shards
    assert "secure aggregation" in privacy["statement"] and "never one node's" in privacy["statement"]
    assert "flwrlabs/flower#7522" in privacy["statement"] and "2^32" in privacy["secure_aggregation"]["mask_strength"]
    with open(out / "diagnostics" / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["users"]) for r in rows] == [24, 24] and [int(r["nodes-replied"]) for r in rows] == [3, 3]
    assert "train-loss" not in rows[0] and float(rows[0]["secagg-error-bound"]) < 1e-6
    assert 0.0 <= float(rows[-1]["test-hr@10"]) <= 1.0
    assert float(rows[1]["clip-norm"]) != float(rows[0]["clip-norm"])  # the clipped count arrived (securely)


def _numbers(text: str) -> set[float]:
    import re

    return {float(x) for x in re.findall(r"-?\d+\.?\d*(?:[eE][-+]?\d+)?", text)}


def _released_numbers(out) -> set[float]:
    """Every number in the released privacy.json (its decoded values, so "\\u03b5" is not read as 3 and 5; the
    ledger's path on this machine left out) and in privacy_ledger.csv."""
    doc = json.loads((out / "privacy.json").read_text())
    doc.pop("ledger", None)
    found: set[float] = set()

    def walk(v) -> None:
        if isinstance(v, bool):
            return
        if isinstance(v, (int, float)):
            found.add(float(v))
        elif isinstance(v, str):
            found.update(_numbers(v))
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)

    walk(doc)
    return found | _numbers((out / "privacy_ledger.csv").read_text())


def _keys(v) -> set[str]:
    """Every key of a parsed JSON document, at any depth."""
    if isinstance(v, dict):
        return set(v) | set().union(*map(_keys, v.values()))
    if isinstance(v, list):
        return set().union(*map(_keys, v))
    return set()


def test_a_central_dp_run_releases_only_accounted_values_and_secret_sampling(small_synthetic, tmp_path):
    """Central DP: the released files are the last round's model, the public content vectors, privacy.json and
    a ledger of public or DP-released values; every unnoised count, loss and metric sits in diagnostics/; and
    two runs with the same settings sample other users (the sample comes from a fresh server secret)."""
    from server.checkpoint import load_checkpoint

    settings = ("num-rounds=4", "privacy=central", "noise-multiplier=0.8", "sample-rate=0.5", "eval-every=1",
                "adaptive-clip=true", "clip-count-stddev=3")
    public = {0.8, 0.5, 3.0, 0.02, 0.2}  # the settings above and the defaults the statement names (C, clip-lr)
    run_keys = []
    for name in ("a", "b"):
        out = tmp_path / name
        _private_run(small_synthetic, out, *settings)
        assert sorted(p.name for p in out.iterdir()) == ["checkpoint.npz", "devices", "diagnostics", "global_model.npz",
                                                        "item_vectors.npy", "privacy.json", "privacy_ledger.csv",
                                                        "round-journal.json", "schema.json"]
        with open(out / "diagnostics" / "rounds.csv") as f:
            rows = list(csv.DictReader(f))
        users = [int(r["users"]) for r in rows]
        # every data-dependent value of the run (sampled users, examples, losses, validation and test metrics)
        secret = {float(v) for r in rows for k, v in r.items()
                  if k not in ("round", "epsilon", "clip-norm", "seconds", "train-seconds", "unclipped-share") and v}
        summary = json.loads((out / "diagnostics" / "summary.json").read_text())
        secret |= {float(v) for v in summary["systems"]["federated"].values() if v is not None}
        secret -= {0.0, 1.0, 2.0, 3.0, 4.0}  # round numbers and small constants appear legitimately
        leaked = (secret & _released_numbers(out)) - public  # a value equal to a public setting reveals nothing
        assert not leaked, f"unnoised data-dependent values in released files: {sorted(leaked)[:5]}"
        # no field of the released files is a sample count or a sampling seed; the sampling is stated secret
        doc = json.loads((out / "privacy.json").read_text())
        with open(out / "privacy_ledger.csv", newline="") as f:
            columns = csv.DictReader(f).fieldnames
        assert columns == ["round", "sample_rate", "noise_multiplier", "clip_norm", "epsilon"]
        assert not _keys(doc) & {"users", "users_sampled", "num-users", "num-examples", "sampling-seed", "seed"}
        assert doc["sampling"] == {"scheme": "poisson", "q": 0.5, "secret": True}
        # the released model is the last round's (no choice made on unnoised validation metrics)
        last = load_checkpoint(out / "checkpoint.npz")
        assert last.round == 4 and summary["systems"]["federated"]["selected_round"] == 4
        with np.load(out / "global_model.npz") as f:
            for k, v in last.params.items():
                np.testing.assert_array_equal(f[k.replace("/", ".")], v)
        # the published config holds the experiment seed; replaying the sampling with it does not give the sample
        from common.data.datasets import load_cached
        from common.privacy.sampling import poisson_sample

        # the run sampled with its server secret: the logged counts are exactly that key's samples, and the key
        # is fresh for every run (P(equal keys) = 2^-256; P(equal masks over 4 rounds of 24 users) = 2^-96)
        keys = np.asarray(load_cached(str(small_synthetic)).user_ids).astype(str)
        key = last.sampling_key
        assert key is not None and key.secret
        # each node sampled its own users with its own seed (the key and its node id, kept in its device.json)
        nodes = [(json.loads((d / "device.json").read_text())["node-id"],
                  np.load(d / "node-state.npz")["user_keys"].astype(str))
                 for d in sorted((out / "devices").iterdir(), key=lambda d: int(d.name.split("-")[1]))]
        assert np.array_equal(np.concatenate([u for _, u in nodes]), keys) and len({n for n, _ in nodes}) == 2
        mine = [np.concatenate([poisson_sample(u, 0.5, key.round_seed(r, 0, n), r) for n, u in nodes])
                for r in range(1, 5)]
        assert any((m != poisson_sample(keys, 0.5, key.round_seed(r), r)).any() for r, m in enumerate(mine, 1))
        assert [int(m.sum()) for m in mine] == users
        public_seed = [poisson_sample(keys, 0.5, summary["config"]["seed"], r) for r in range(1, 5)]
        assert any((a != b).any() for a, b in zip(mine, public_seed))
        run_keys.append(key.key)
    assert run_keys[0] != run_keys[1]


def test_an_interrupted_central_dp_run_resumes_from_its_checkpoint(small_synthetic, tmp_path):
    """Stopped after 2 of 4 rounds and resumed, a run continues the rounds, the users' sampling and the
    privacy ledger exactly where an uninterrupted run is; other settings cannot resume it."""
    from common.privacy.sampling import SAMPLING_KEY_ENV

    # a constant server step: a run cut short by num-rounds=2 would otherwise decay its step over 2 rounds, not 4
    settings = ("privacy=central", "noise-multiplier=1.3", "sample-rate=0.5", "checkpoint-every=1",
                "server-lr-final=1.0")
    test_key = {SAMPLING_KEY_ENV: "resume-test"}  # the same (not secret) sampling key for both runs
    whole = _private_run(small_synthetic, tmp_path / "whole", "num-rounds=4", *settings, env_extra=test_key)
    assert whole["statement"].startswith("NO valid guarantee") and whole["sampling"]["secret"] is False
    _private_run(small_synthetic, tmp_path / "part", "num-rounds=2", *settings, env_extra=test_key)
    half = tmp_path / "part" / "checkpoint.npz"
    from server.checkpoint import load_checkpoint

    assert load_checkpoint(half).round == 2
    before = (tmp_path / "part" / "diagnostics" / "rounds.csv").read_text().splitlines()
    # the key comes from the checkpoint (the environment variable is not needed to go on)
    resumed = _private_run(small_synthetic, tmp_path / "part", "num-rounds=4", "resume=true", *settings)
    assert resumed["sampling"]["secret"] is False  # a run begun with a test key stays marked as such

    def sampled(run):
        with open(tmp_path / run / "diagnostics" / "rounds.csv") as f:
            return [(int(r["round"]), int(r["users"])) for r in csv.DictReader(f)]

    def ledger(privacy):
        with open(privacy["ledger"]) as f:
            return [(int(r["round"]), float(r["epsilon"])) for r in csv.DictReader(f)]

    assert sampled("part") == sampled("whole")  # same rounds, same users sampled
    assert [r[0] for r in ledger(resumed)] == [1, 2, 3, 4]
    np.testing.assert_allclose([r[1] for r in ledger(resumed)], [r[1] for r in ledger(whole)], rtol=1e-9)
    assert resumed["epsilon"] == pytest.approx(whole["epsilon"]) and resumed["rounds"] == 4
    state = load_checkpoint(tmp_path / "part" / "checkpoint.npz")
    assert state.round == 4 and state.optimizer.step == 4 and len(state.rows) == 4
    with open(tmp_path / "part" / "diagnostics" / "rounds.csv") as f:
        assert [int(r["round"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]
    # rounds 1-2 were not trained again: their log rows (timings, noisy losses) come from the checkpoint
    after = (tmp_path / "part" / "diagnostics" / "rounds.csv").read_text().splitlines()
    assert [line.split(",")[:9] for line in after[1:3]] == [line.split(",")[:9] for line in before[1:3]]
    bad = _fedctx("simulate", "--data", str(small_synthetic), "--no-baselines", *SMALL, "--out", str(tmp_path / "part"),
                  *[x for v in (*settings, "num-rounds=6", "resume=true", "clip-norm=0.5") for x in ("--set", v)])
    assert bad.returncode != 0 and "clip-norm=0.02 there, 0.5 here" in bad.stdout + bad.stderr
    again = _fedctx("simulate", "--data", str(small_synthetic), "--no-baselines", *SMALL, "--out", str(tmp_path / "part"))
    assert again.returncode != 0 and "resume=true" in again.stdout + again.stderr


def test_a_resumed_simulation_equals_an_uninterrupted_one(small_synthetic, tmp_path):
    """Simulated devices keep theta_u under the run directory: stopped after round 2 and resumed, the training
    losses of rounds 3-4 equal those of an uninterrupted run (without the saved state they would not: every
    theta_u would be warmed up again)."""
    from common.privacy.sampling import SAMPLING_KEY_ENV

    settings = ["--set", "checkpoint-every=1", "--set", "sample-rate=0.7", "--set", "eval-every=100",
                "--set", "server-lr-final=1.0"]  # a constant step: the part run's schedule would end at round 2
    key = {SAMPLING_KEY_ENV: "resume-equal"}

    def run(out, rounds, *extra):
        res = _fedctx("simulate", "--data", str(small_synthetic), "--no-baselines", *SMALL, *settings,
                      "--set", f"num-rounds={rounds}", *extra, "--out", str(out), env_extra=key)
        assert res.returncode == 0, res.stderr[-3000:]
        with open(out / "rounds.csv") as f:
            return [float(r["train-loss"]) for r in csv.DictReader(f)]

    whole = run(tmp_path / "whole", 4)
    run(tmp_path / "part", 2)
    assert sorted(p.name for p in (tmp_path / "part" / "devices").iterdir()) == ["node-0", "node-1"]
    resumed = run(tmp_path / "part", 4, "--set", "resume=true")
    np.testing.assert_allclose(resumed, whole, rtol=1e-5)


def test_one_user_per_node_equals_sharded_through_flower(small_synthetic, tmp_path, monkeypatch):
    """Same seed and sampling key: every user on its own SuperNode gives the same global model as 3 shards."""
    from common.privacy.sampling import SAMPLING_KEY_ENV
    from simulations.simulate import run_flower_simulation

    monkeypatch.setenv(SAMPLING_KEY_ENV, "sharding-test")  # both runs sample with one (test-only) key
    parsed = []  # Flower's check of an app given by name parses its source with `ast` while the ServerApp runs

    def find_attribute(path, name):
        parsed.append(path)
        return True

    monkeypatch.setattr("flwr.common.object_ref._find_attribute_in_module", find_attribute)
    cfg = Config(data=str(small_synthetic), dim=4, text_dim=8, text_epochs=2, local_steps=2, num_rounds=2,
                 sample_rate=0.6, eval_every=100, server_lr=0.02)  # the tolerance below is sized for this step
    models = {}
    for nodes in (3, 24):
        run_dir = tmp_path / f"n{nodes}"
        run_flower_simulation(cfg.replace(run_dir=str(run_dir)), nodes)
        assert parsed == [], f"Flower parsed {parsed} (the CPython 3.11 AST race, docs/architecture.md)"
        with np.load(run_dir / "global_model.npz") as f:
            models[nodes] = {k: f[k] for k in f.files}
        rows = json.loads((run_dir / "federated.json").read_text())["rounds"]
        models[f"users{nodes}"] = [r["users"] for r in rows]
    assert models["users3"] == models["users24"] and 0 < models["users3"][0] < 24
    # float32 sums in a different order (3 shards vs 24 nodes) differ in the last bits; server Adam divides
    # by sqrt(v), which magnifies that on near-zero coordinates, hence a tolerance of 1e-4 absolute
    for k in models[3]:
        np.testing.assert_allclose(models[3][k], models[24][k], rtol=1e-3, atol=1e-4)


def test_cli_errors_name_the_problem(tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["simulate", "--set", "num-round=3"])
    assert res.exit_code == 2 and "unknown setting 'num-round'" in res.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "dataset.toml").write_text('[dataset]\ninteractions = "i.csv"\nitems = "items.csv"\n')
    (bad / "i.csv").write_text("user_id,item_id\nu1,a\n,b\n")
    (bad / "items.csv").write_text("item_id,text\na,x\nb,y\n")
    res = runner.invoke(cli, ["data", "validate", str(bad)])
    assert res.exit_code == 2
    assert "i.csv" in res.output and "row 2" in res.output and "user_id" in res.output
    res = runner.invoke(cli, ["simulate", "--data", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "not a dataset directory" in res.output


def test_every_error_is_one_message_with_rc_2_and_no_half_written_run_directory(small_synthetic, tmp_path):
    # raised inside the ServerApp (a thread of Flower's engine): one line, not the engine's traceback
    out = tmp_path / "run"
    res = _fedctx("simulate", "--data", str(small_synthetic), "--no-baselines", *SMALL, "--out", str(out),
                  "--set", "privacy=central", "--set", "adaptive-clip=true", "--set", "clip-count-stddev=0.1")
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(errors) == 1, res.stderr[-3000:]
    assert errors[0].startswith("error: ") and "clip-count-stddev" in errors[0] and "Traceback" not in res.stdout
    assert "Unable to register" not in res.stderr + res.stdout  # a quiet start: no TensorFlow C++ lines
    assert not out.exists()
    # an output path under a regular file
    (tmp_path / "file").write_text("x")
    res = _fedctx("simulate", "--data", str(small_synthetic), "--out", str(tmp_path / "file" / "run"), *SMALL)
    assert res.returncode == 2 and "is a file, not a directory" in res.stderr
    # sizes that cannot be allocated are refused before anything starts
    res = _fedctx("simulate", "--data", str(small_synthetic), "--set", "dim=1e12")
    assert res.returncode == 2 and "dim: must be <= 4,096" in res.stderr
    # a checkpoint cut in half, or to nothing
    run = tmp_path / "damaged"
    run.mkdir()
    import numpy as np

    np.savez(run / "checkpoint.npz", meta=np.array("{}"), **{"params/w": np.zeros(1000)})
    whole = (run / "checkpoint.npz").read_bytes()
    for cut in (len(whole) // 2, 0):
        (run / "checkpoint.npz").write_bytes(whole[:cut])
        res = _fedctx("simulate", "--data", str(small_synthetic), "--out", str(run), "--set", "resume=true", *SMALL)
        assert res.returncode == 2 and "truncated or damaged" in res.stderr, res.stderr[-2000:]
        assert [line for line in res.stderr.splitlines() if line.strip()][-1].startswith("error: ")
    # secure aggregation over one node would reveal its update
    res = _fedctx("simulate", "--data", str(small_synthetic), "--nodes", "1", "--set", "secure-aggregation=true",
                  "--out", str(tmp_path / "one"), *SMALL)
    assert res.returncode == 2 and "needs at least 2 nodes" in res.stderr
    # over two nodes each node's vector is hidden by one 32-bit-seeded mask (flwrlabs/flower#7522)
    res = _fedctx("simulate", "--data", str(small_synthetic), "--nodes", "2", "--set", "secure-aggregation=true",
                  "--out", str(tmp_path / "two"), *SMALL)
    assert res.returncode == 2 and "secagg-accept-two-nodes=true" in res.stderr and "2^32" in res.stderr


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_simulation_between_rounds_with_its_checkpoint_intact(small_synthetic, tmp_path, sig):
    import signal
    import time

    from server.checkpoint import load_checkpoint

    out = tmp_path / "run"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen([sys.executable, "-m", "simulations.cli", "simulate", "--data", str(small_synthetic),
                             "--no-baselines", *SMALL, "--set", "num-rounds=500", "--set", "checkpoint-every=1",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[2])
    seen = ""
    for line in proc.stdout:  # wait until two rounds are done
        seen += line
        if line.lstrip().startswith("round   2/"):
            break
    proc.send_signal(getattr(signal, sig))
    t0 = time.monotonic()
    out_text, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    assert time.monotonic() - t0 < 120
    last = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(last) == 1 and f"interrupted by {sig}" in last[0] and "resume=true" in last[0]
    done = int(re.search(r"the checkpoint of round (\d+) is intact", last[0]).group(1))
    assert done >= 2 and load_checkpoint(out / "checkpoint.npz").round == done
    assert "Traceback" not in err


def test_generate_and_validate(tmp_path):
    runner = CliRunner()
    out = tmp_path / "gen"
    res = runner.invoke(cli, ["data", "generate", "--out", str(out), "--users", "30", "--items", "100"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(cli, ["data", "validate", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[: res.output.rindex("}") + 1])
    assert report["n_users"] == 30 and report["n_items"] == 100
    # refusing to overwrite leaves the first dataset as it was
    res = runner.invoke(cli, ["data", "generate", "--out", str(out), "--users", "40"])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = runner.invoke(cli, ["data", "validate", str(out)])
    assert json.loads(res.output[: res.output.rindex("}") + 1])["n_users"] == 30


def test_bench_prints_the_ratio_and_the_cost_of_dp(tmp_path):
    res = _fedctx("bench", "--users", "30", "--items", "100", "--rounds", "2", "--privacy", "none", "--privacy",
                  "central", "--privacy", "central+secagg", "--nodes", "3", *SMALL,
                  env_extra={"FEDCTX_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    for key in ("users", "centralized_epoch_s", "federated_round_s", "ratio", "user_updates_per_s",
                "federated_round_s_central", "dp_cost_central"):
        assert key in result
    assert result["users"] == 30
    assert result["ratio"] == pytest.approx(result["federated_round_s"] / result["centralized_epoch_s"], rel=0.05)
    assert result["dp_cost_central"] == pytest.approx(
        result["federated_round_s_central"] / result["federated_round_s"], rel=0.05)
    assert result["nodes"] == 3 and result["secagg_cost_central"] == pytest.approx(
        result["federated_round_s_central+secagg"] / result["federated_round_s_central"], rel=0.05)


def test_simulate_with_precomputed_vectors_of_any_width(small_synthetic, tmp_path):
    """content-encoder=precomputed: the model's content tower takes the file's width, the run records which
    encoder made h(c), and a file that misses items stops the command with the file and the fix."""
    from common.data.loader import load_dataset

    ids = np.asarray(load_dataset(small_synthetic).item_ids)
    vectors = tmp_path / "vectors.npz"
    np.savez(vectors, item_ids=ids[::-1], vectors=np.random.default_rng(0).normal(size=(len(ids), 5)))
    out = tmp_path / "run"
    res = _fedctx("simulate", "--data", str(small_synthetic), "--no-baselines", *SMALL, "--set", "num-rounds=1",
                  "--set", "content-encoder=precomputed", "--set", f"content-path={vectors}", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert np.load(out / "item_vectors.npy").shape == (len(ids), 5)
    assert np.load(out / "global_model.npz")["tower.kernel"].shape == (5, 4)  # [width of h(c), dim]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["content"]["encoder"] == "precomputed" and summary["content"]["width"] == 5
    assert len(summary["content"]["sha256"]) == 64

    np.savez(vectors, item_ids=ids[1:], vectors=np.zeros((len(ids) - 1, 5)))
    res = CliRunner().invoke(cli, ["simulate", "--data", str(small_synthetic), "--set", "content-encoder=precomputed",
                                   "--set", f"content-path={vectors}", "--out", str(tmp_path / "run2")])
    assert res.exit_code == 2
    assert f"content-path: {vectors}: every catalogue item needs a vector" in res.output and "Fix:" in res.output


def test_federated_ials_through_flower_equals_the_pooled_computation(small_synthetic, tmp_path):
    """loss=ials, every user in every round: 10 rounds on 3 SuperNodes give the global model that 10 steps of the
    centralized trainer give on the pooled data (same start, same Adam): the nodes' closed-form theta_u, factored
    item updates and sums lose nothing on the way."""
    from common.evaluation.central import IALS_STEPS_PER_EPOCH, train_central
    from common.data.loader import load_dataset
    from common.federation.users import UserStore
    from common.model.formula import ModelShape, init_shared
    from server.content import item_content
    from simulations.simulate import run_flower_simulation

    cfg = Config(data=str(small_synthetic), dim=4, text_dim=8, text_epochs=2, loss="ials", l2=0.01,
                 context_l2=0.1, num_rounds=IALS_STEPS_PER_EPOCH, eval_every=100, server_lr=0.01,
                 server_lr_final=1.0, central_lr=0.01, central_epochs=1, item_decay=0.5)
    run_dir = tmp_path / "fed"
    run_flower_simulation(cfg.replace(run_dir=str(run_dir)), 3)
    with np.load(run_dir / "global_model.npz") as f:
        federated = {k.replace(".", "/"): f[k] for k in f.files}
    ds = load_dataset(small_synthetic)
    item_h = item_content(cfg, ds.item_texts, ds.item_ids).h
    store = UserStore.from_prepared(ds, np.arange(ds.n_users))
    pooled, _, _, _ = train_central(store, item_h, cfg)
    assert set(federated) == set(pooled)
    start = init_shared(ModelShape(ds.n_items, item_h.shape[1], cfg.dim, ds.context_dim, True), cfg.seed)
    for k in pooled:
        np.testing.assert_allclose(federated[k], pooled[k], rtol=1e-3, atol=1e-4, err_msg=k)
        assert np.abs(pooled[k] - start[k]).max() > 1e-3, k  # every parameter was trained
