"""The server checkpoint: a faithful round trip, atomic replacement, and resume only for the same run."""

from __future__ import annotations

import numpy as np
import pytest

from common.federation.aggregation import ServerOptimizer
from common.config import Config, ConfigError
from common.privacy.ledger import PrivacyLedger, RoundRecord
from common.privacy.sampling import SamplingKey
from server.checkpoint import ServerState, check_resumable, load_checkpoint, save_checkpoint


def _state(cfg: Config, round_: int = 3) -> ServerState:
    rng = np.random.default_rng(0)
    params = {"tower/kernel": rng.normal(size=(4, 3)).astype(np.float32), "items/bias": np.zeros(5, np.float32),
              "items/embedding": np.zeros((5, 2), np.float32)}
    opt = ServerOptimizer("adam", 0.05, total_steps=10, final_fraction=0.1, warmup_steps=5,  # the next step size depends on all
                          decay={"items/bias": 0.3}, sgd_lr={"items/embedding": 2.0})
    for _ in range(round_):
        params = opt.apply(params, {k: rng.normal(size=v.shape) for k, v in params.items()})
    ledger = PrivacyLedger(delta=1e-5)
    for r in range(1, round_ + 1):
        ledger.append(r, 0.1, 1.2, 0.02)
    rows = [{"round": r, "users": np.int64(40 + r), "train-loss": np.float32(2.0 / r)} for r in range(1, round_ + 1)]
    return ServerState(round=round_, params=params, optimizer=opt, config=cfg.to_flwr(), rows=rows,
                       ledger=ledger.to_rows(), clip_norm=0.017, noise_multiplier=1.2,
                       best=(0.25, 2, {k: v + 1 for k, v in params.items()}), sampling_key=SamplingKey.fresh(), starts=2)


def test_checkpoint_round_trip_is_exact_and_atomic(tmp_path):
    cfg = Config(privacy="central", num_rounds=10)
    state = _state(cfg)
    path = tmp_path / "run" / "checkpoint.npz"
    save_checkpoint(path, _state(cfg, 1))
    save_checkpoint(path, state)  # replaces the older one
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.npz"]  # no temporary file left
    back = load_checkpoint(path)
    assert back.round == 3 and back.clip_norm == 0.017 and back.noise_multiplier == 1.2
    assert back.config == cfg.to_flwr() and back.ledger == state.ledger
    assert back.rows == [{"round": r, "users": 40 + r, "train-loss": float(np.float32(2.0 / r))} for r in (1, 2, 3)]
    for k, v in state.params.items():
        np.testing.assert_array_equal(back.params[k], v)
        if k not in state.optimizer.sgd_lr:
            np.testing.assert_array_equal(back.optimizer.m[k], state.optimizer.m[k])
            np.testing.assert_array_equal(back.optimizer.v[k], state.optimizer.v[k])
        np.testing.assert_array_equal(back.best[2][k], state.best[2][k])
    assert back.optimizer.step == 3 and back.best[:2] == (0.25, 2)
    # the restored optimiser takes the same next step as the original
    delta = {k: np.full(v.shape, 0.3) for k, v in state.params.items()}
    assert back.optimizer.sgd_lr == {"items/embedding": 2.0}
    a, b = state.optimizer.apply(state.params, delta, 7), back.optimizer.apply(back.params, delta, 7)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    # the ledger goes on from the restored rounds: epsilon after round 4 equals a fresh 4-round ledger
    restored = PrivacyLedger(delta=1e-5, records=[RoundRecord(**r) for r in back.ledger])
    fresh = PrivacyLedger(delta=1e-5)
    for r in range(1, 5):
        fresh.append(r, 0.1, 1.2, 0.02)
    assert restored.append(4, 0.1, 1.2, 0.02).epsilon == pytest.approx(fresh.epsilon(), rel=1e-12)


def test_resume_only_the_same_run(tmp_path):
    cfg = Config(privacy="central", num_rounds=10, run_dir=str(tmp_path))
    path = tmp_path / "checkpoint.npz"
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(path)
    state = _state(cfg)
    check_resumable(state, cfg.replace(resume=True, num_rounds=20, checkpoint_every=1), path)  # more rounds: fine
    with pytest.raises(ConfigError, match=r"sample-rate=1.0 there, 0.5 here"):
        check_resumable(state, cfg.replace(resume=True, sample_rate=0.5), path)
    with pytest.raises(ConfigError, match="nothing to do"):
        check_resumable(state, cfg.replace(resume=True, num_rounds=3), path)
    # target-epsilon calibrated z for the planned rounds: more rounds would exceed the budget
    calibrated = _state(cfg.replace(target_epsilon=4.0))
    check_resumable(calibrated, cfg.replace(target_epsilon=4.0, resume=True), path)
    with pytest.raises(ConfigError, match="would exceed"):
        check_resumable(calibrated, cfg.replace(target_epsilon=4.0, resume=True, num_rounds=11), path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="not a readable checkpoint"):
        load_checkpoint(path)
    with pytest.raises(ConfigError, match="needs run-dir"):
        Config(resume=True)


class _Interrupted(Exception):
    pass


def _interrupt_and_resume(data, tmp_path, **settings):
    """4 rounds, checkpoint every 2, the server stopped while round 3's model is out for evaluation (round 3 was
    trained and, under central DP, noised and sent), then resumed. Returns (cfg, the train messages each node
    received, in order, over both starts; federated result of the resumed start)."""
    from client.app import app
    from common.federation.protocol import CONFIG
    from server.app import run_federated
    from simulations.rigs.inprocess import InProcessGrid, node_contexts

    cfg = Config(data=str(data), dim=4, text_dim=8, text_epochs=2, negatives=3, local_steps=2, num_rounds=4,
                 checkpoint_every=2, sample_rate=0.5, population=24, run_dir=str(tmp_path / "run"), **settings)
    received: dict[int, list[dict]] = {}

    def lost(msg) -> bool:
        conf = dict(msg.content.config_records[CONFIG]) if CONFIG in msg.content.config_records else {}
        if msg.metadata.message_type == "train":
            received.setdefault(msg.metadata.dst_node_id, []).append(conf)
        elif conf.get("server-round") == 3 and not interrupted:
            interrupted.append(True)
            raise _Interrupted("round 3's evaluation was never answered")
        return False

    interrupted: list[bool] = []
    with pytest.raises(_Interrupted, match="round 3's evaluation was never answered"):
        run_federated(InProcessGrid(app, node_contexts(cfg, 3), lost=lost), cfg, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz").round == 2
    resumed = cfg.replace(resume=True)
    out = run_federated(InProcessGrid(app, node_contexts(resumed, 3), lost=lost), resumed, tmp_path / "run")
    return cfg, received, out


def _sampled_counts(cfg, received, node_index, user_keys):
    """How many of the delivered training messages sampled each user (the releases the device made)."""
    from common.privacy.sampling import poisson_sample, training_members

    members = training_members(user_keys, cfg.audit_fraction, cfg.seed)
    return sum((poisson_sample(user_keys, float(c["sample-rate"]), int(c["sampling-seed"]), int(c["server-round"]))
                & members).astype(int) for c in received[node_index])


def test_an_interrupted_local_dp_run_counts_every_release_on_the_devices_and_the_server(small_synthetic, tmp_path):
    """Rounds 3 is run twice (before the interruption and after the resume): each device's local_privacy.json
    counts every round its users trained in (they never go back to the snapshot's counts), and the server's bound
    counts the 5 training rounds run, not num-rounds."""
    import json

    cfg, received, out = _interrupt_and_resume(small_synthetic, tmp_path, privacy="local", local_noise_multiplier=1.0)
    assert [[int(c["server-round"]) for c in msgs] for msgs in received.values()] == [[1, 2, 3, 3, 4]] * 3
    assert out["privacy"]["rounds"] == 5
    for k, node_id in enumerate(sorted(received)):
        report = json.loads((tmp_path / "run" / "devices" / f"node-{k}" / "local_privacy.json").read_text())
        keys = np.array([u["user"] for u in report["users"]])
        assert {u["user"]: u["rounds"] for u in report["users"]} == dict(
            zip(keys, _sampled_counts(cfg, received, node_id, keys).tolist()))
        for snap in (tmp_path / "run" / "devices" / f"node-{k}").glob("checkpoint-*.npz"):
            assert snap.stat().st_mode & 0o777 == 0o600


def test_an_interrupted_central_dp_run_accounts_the_releases_made_before_the_resume(small_synthetic, tmp_path):
    """Round 3's noised model reached the nodes before the interruption: the ledger keeps it, and the replayed
    round 3 draws a fresh sample (its own seed), so the ledger's 5 rows are 5 independent Poisson-sampled
    releases: the releases actually made."""
    cfg, received, out = _interrupt_and_resume(small_synthetic, tmp_path, privacy="central", noise_multiplier=1.0)
    seeds = [int(c["sampling-seed"]) for c in next(iter(received.values()))]
    assert seeds[2] != seeds[3] and len(set(seeds)) == 5  # the replayed round 3 is sampled afresh
    assert out["privacy"]["rounds"] == 5
    import json

    doc = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert doc["ledger"] == "privacy_ledger.csv" and str(tmp_path) not in json.dumps(doc)  # no server path
    assert doc["files"]["server_secret"] == ["checkpoint.npz", "round-journal.json"]
    assert "every run" in doc["files"]["diagnostics"] and "not produced" not in doc["files"]["diagnostics"]
    assert any("delta = 0.00417 is large" in w for w in doc["warnings"])  # the default 0.1/N for N = 24
    assert (tmp_path / "run" / "round-journal.json").stat().st_mode & 0o777 == 0o600
    import dp_accounting  # 5 rounds of the Poisson-subsampled Gaussian, composed by dp-accounting directly

    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(1.0)), 5)
    assert out["privacy"]["epsilon"] == pytest.approx(accountant.get_epsilon(out["privacy"]["delta"]), rel=1e-6)
