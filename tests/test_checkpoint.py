"""The server checkpoint: a faithful round trip, atomic replacement, and resume only for the same run."""

from __future__ import annotations

import numpy as np
import pytest

from common.aggregation import ServerOptimizer
from common.config import Config, ConfigError
from common.privacy import PrivacyLedger, RoundRecord, SamplingKey
from server.checkpoint import ServerState, check_resumable, load_checkpoint, save_checkpoint


def _state(cfg: Config, round_: int = 3) -> ServerState:
    rng = np.random.default_rng(0)
    params = {"tower/kernel": rng.normal(size=(4, 3)).astype(np.float32), "items/bias": np.zeros(5, np.float32)}
    opt = ServerOptimizer("adam", 0.05, total_steps=10, final_fraction=0.1,  # the next step size depends on all
                          decay={"items/bias": 0.3})
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
        np.testing.assert_array_equal(back.optimizer.m[k], state.optimizer.m[k])
        np.testing.assert_array_equal(back.optimizer.v[k], state.optimizer.v[k])
        np.testing.assert_array_equal(back.best[2][k], state.best[2][k])
    assert back.optimizer.step == 3 and back.best[:2] == (0.25, 2)
    # the restored optimiser takes the same next step as the original
    delta = {k: np.full(v.shape, 0.3) for k, v in state.params.items()}
    a, b = state.optimizer.apply(state.params, delta), back.optimizer.apply(back.params, delta)
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
