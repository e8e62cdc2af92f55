"""common/federation/protocol.py is the one home of the message names: no in-record key it defines is written as a string
literal in server/, client/ or common/ (found by parsing the code, so a comment or a longer text that mentions a
key does not count), and the metric names both sides build agree."""

from __future__ import annotations

import ast
from pathlib import Path

from common.federation import protocol

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("server", "client", "common")


def literal_keys(source: str) -> list[tuple[int, str]]:
    """(line, key) of every string literal in `source` that equals one of protocol.RECORD_KEYS."""
    keys = set(protocol.RECORD_KEYS)
    return sorted((node.lineno, node.value) for node in ast.walk(ast.parse(source))
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in keys)


def test_no_record_key_is_written_as_a_literal_outside_the_protocol_module():
    own = ROOT / "common" / "federation" / "protocol.py"
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            hits = literal_keys(path.read_text()) if path != own else []
            if hits:
                found[str(path.relative_to(ROOT))] = hits
    assert found == {}, f"in-record keys written as literals (use common.federation.protocol's constants): {found}"
    assert literal_keys(own.read_text()), "the scan must see the protocol module's own literals"


def test_the_scan_finds_a_literal_key_in_code_and_not_in_comments_or_longer_text():
    source = ('n = metrics["num-users"]  # "clip-norm" in a comment\n'
              'text = "num-users must be an integer"\n'
              'phase = f"secagg-phase {x}"\n'
              'conf.get("clip-norm", 1.0)\n')
    assert literal_keys(source) == [(1, "num-users"), (4, "clip-norm")]


def test_record_keys_are_distinct_and_cover_the_config_and_metric_keys():
    assert len(set(protocol.RECORD_KEYS)) == len(protocol.RECORD_KEYS)
    for key in (protocol.SERVER_ROUND, protocol.SAMPLE_RATE, protocol.SAMPLING_SEED, protocol.CLIP_NORM,
                protocol.SECAGG_MAX_USERS, protocol.SECAGG_PHASE, protocol.NUM_USERS, protocol.CLIP_SHIFTED_COUNT):
        assert key in protocol.RECORD_KEYS


def test_evaluation_keys_are_the_reply_keys_in_a_fixed_order():
    assert protocol.evaluation_keys(10) == ["val-hr@10", "val-ndcg@10", "val-hr@10-sampled", "val-ndcg@10-sampled",
                                            "test-hr@10", "test-ndcg@10", "test-hr@10-sampled",
                                            "test-ndcg@10-sampled"]
    with_squares = protocol.evaluation_keys(5, squares=True)
    assert with_squares[8:] == [k + "-sq" for k in protocol.evaluation_keys(5)]
    assert protocol.eval_metric("test", "ndcg-sampled", 20) == "test-ndcg@20-sampled"
