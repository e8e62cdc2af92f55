"""The privacy/accuracy trade-off sweep: settings, summary over seeds, and one real run."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from common.config import ConfigError
from simulations.sweep import SWEEP_DEFAULTS, SweepPlan, summarise, sweep_config
from tests.e2e.test_simulation import SMALL, _fedctx


def test_sweep_settings_precedence_defaults_file_then_set(tmp_path):
    cfg_file = tmp_path / "sweep.toml"
    cfg_file.write_text('num-rounds = 7\nsample-rate = 0.3\n[sweep]\nepsilons = [1, 2, "inf"]\nseeds = [5, 6]\nlocal-noise = [1.5]\n')
    base, plan = sweep_config(cfg_file, {"sample-rate": "0.2", "audit-users": "50"})
    assert base.num_rounds == 7 and base.sample_rate == 0.2
    assert base.synthetic_users == SWEEP_DEFAULTS["synthetic-users"]
    assert plan.epsilons == (1.0, 2.0, math.inf) and plan.seeds == (5, 6) and plan.audit_users == 50
    labels = [(label, c.privacy, c.target_epsilon) for label, c in plan.settings(base)]
    assert labels == [("central eps=1", "central", 1.0), ("central eps=2", "central", 2.0),
                      ("non-private", "none", 0.0), ("local z=1.5", "local", 0.0)]
    assert plan.settings(base)[-1][1].local_noise_multiplier == 1.5 and plan.settings(base)[-1][1].local_dp_theta
    # the default plan includes the default (exact) local-DP setting
    assert [label for label, _ in SweepPlan().settings(base)][-1] == "local z=1"


def test_sweep_rejects_bad_plans(tmp_path):
    with pytest.raises(ConfigError, match=r"epsilons: must be a list of numbers \(e\.g\. 0\.5,1,inf\)\. "
                                          r"Found '1,zero'"):
        sweep_config(None, {"epsilons": "1,zero"})
    with pytest.raises(ConfigError, match=r"epsilons: each must be > 0 \(inf = non-private\)\. Found \[0\.0, 1\.0\]"):
        SweepPlan(epsilons=(0.0, 1.0))
    with pytest.raises(ConfigError, match=r"audit-fraction: the sweep needs held-out users for the membership audit"):
        sweep_config(None, {"audit-fraction": "0"})
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep]\nepsilon = [1]\n")
    with pytest.raises(ConfigError, match=r"\[sweep\]: unknown keys \['epsilon'\]\. Known: epsilons, seeds"):
        sweep_config(bad, {})


def test_summary_is_mean_and_sample_sd_over_seeds():
    rows = []
    for seed, (hr, auc) in enumerate([(0.10, 0.60), (0.14, 0.62), (0.12, 0.58)]):
        rows.append({"setting": "non-private", "target_epsilon": math.inf, "epsilon": math.inf, "delta": 0.0,
                     "noise_multiplier": 0.0, "hr@10": hr, "ndcg@10": hr / 2, "hr@10-sampled": 0.5, "mia_auc": auc})
        rows.append({"setting": "central eps=8", "target_epsilon": 8.0, "epsilon": 7.9, "delta": 1e-5,
                     "noise_multiplier": 0.8, "hr@10": hr * 0.9, "ndcg@10": hr / 3, "hr@10-sampled": 0.4,
                     "mia_auc": 0.5})
    table = {e["setting"]: e for e in summarise(rows)}
    ref = table["non-private"]
    assert ref["hr@10"] == pytest.approx(0.12) and ref["hr@10-sd"] == pytest.approx(np.std([.1, .14, .12], ddof=1))
    assert ref["seeds"] == 3 and ref["mia_auc"] == pytest.approx(0.60)
    assert table["central eps=8"]["hr@10-ratio"] == pytest.approx(0.9)


@pytest.mark.slow
def test_sweep_command_writes_csv_plot_and_table(small_synthetic, tmp_path):
    out = tmp_path / "sweep"
    res = _fedctx("sweep", "--data", str(small_synthetic), *SMALL, "--set", "num-rounds=2", "--set",
                  "epsilons=4,inf", "--set", "seeds=0", "--set", "sample-rate=0.5", "--set", "audit-fraction=0.3",
                  "--set", "local-noise=2", "--set", "local-inexact=true", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip().splitlines()[-1] == f"run directory: {out}"
    with open(out / "tradeoff.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["setting"] for r in rows] == ["central eps=4", "non-private", "local z=2", "local z=2 inexact"]
    assert [r["unit"] for r in rows] == ["user", "user", "example (every client)", "example (NOT exact)"]
    assert 0 < float(rows[2]["epsilon"]) < math.inf and float(rows[2]["noise_multiplier"]) == 2.0
    # the exact variant also accounts the DP warm start of theta_u
    assert float(rows[2]["epsilon"]) > float(rows[3]["epsilon"]) > 0
    for r in rows:
        assert 0.0 <= float(r["hr@10"]) <= 1.0 and 0.0 <= float(r["mia_auc"]) <= 1.0
        assert int(r["audit_members"]) >= 1 and r["seed"] == "0"
    assert 0 < float(rows[0]["epsilon"]) <= 4.0 and float(rows[0]["delta"]) > 0
    assert math.isinf(float(rows[1]["epsilon"]))
    assert (out / "tradeoff.png").stat().st_size > 10_000
    assert "| central eps=4 |" in (out / "tradeoff.md").read_text()
    assert "| local z=2 |" in (out / "tradeoff.md").read_text()
