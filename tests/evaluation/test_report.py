"""The results table and the seeds study's table: the expected-HR column and notes appear with the figures given."""

import math

from common.evaluation.report import results_table
from simulations.studies.seeds import seed_table


def _runs():
    """Two seeds' systems, with expected HR on the federated model and the structure, and expected gains."""
    def run(seed, fed, struct, gain_c, gain_s):
        return {"seed": seed, "systems": {
            "federated": {"hr@10": 0.06, "ndcg@10": 0.03, "expected-hr@10": fed, "expected_context_gain": gain_c},
            "centralized": {"hr@10": 0.07, "ndcg@10": 0.04, "expected_context_gain": gain_c},
            "structure": {"hr@10": 0.09, "ndcg@10": 0.05, "expected-hr@10": struct, "expected_context_gain": gain_s}}}
    return [run(0, 0.06, 0.08, {"mean": 0.006, "se": 0.0003}, {"mean": 0.010, "se": 0.0004}),
            run(1, 0.07, 0.10, {"mean": 0.004, "se": 0.0004}, {"mean": 0.012, "se": 0.0003})]


def test_results_table_shows_expected_hr_only_where_the_report_has_it():
    with_e = results_table({"federated": {"hr@10": 0.1, "expected-hr@10": 0.0682}, "als": {"hr@10": 0.05}}, 10)
    head, _, fed, als = with_e.splitlines()
    assert head.split()[-1] == "expected-hr@10"
    assert fed.split()[-1] == "0.0682" and als.split()[-1] == "-"
    assert "expected" not in results_table({"federated": {"hr@10": 0.1}}, 10)


def test_seed_table_reports_expected_ratio_and_pooled_paired_gain():
    text = seed_table(_runs(), 10)
    assert "| expected HR@10 |" in text.splitlines()[0]
    # federated / structure in expected HR: (0.06 / 0.08 + 0.07 / 0.10) / 2 = 0.725
    assert "federated (last round) / structure, expected HR@10: 0.725 (per seed 0.75, 0.70)" in text
    # a mean of per-seed paired means; its standard error sqrt(sum se^2) / seeds
    se = math.sqrt(0.0003 ** 2 + 0.0004 ** 2) / 2
    assert (f"centralized: context-aware - context-free expected HR@10, paired over users: +0.0050 "
            f"(standard error {se:.4f}; per seed +0.0060, +0.0040)") in text
    assert "structure: context-aware - context-free expected HR@10, paired over users: +0.0110" in text
    assert ("federated: context-aware - context-free (its twin at the user's mean training context) expected HR@10, "
            "paired over users: +0.0050") in text
    assert "mixed over" not in text  # no expected_context_gain_mixture in these runs
