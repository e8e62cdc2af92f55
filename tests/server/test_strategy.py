"""The server round in milliseconds, with hand-made Flower messages: failed, late and malformed replies are
dropped and recorded, the round goes on with min-nodes, content reaches the nodes that lack it, DP rounds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from collections import OrderedDict

from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import Error

from common.federation.aggregation import ServerOptimizer
from common.data.context import ContextEncoder
from common.federation.params import from_record, to_record
from common.privacy.ledger import PrivacyLedger
from common.privacy.sampling import SamplingKey
from common.federation.protocol import (CLIP_NORM, CLIP_SHIFTED_COUNT, CONFIG, CONTENT, ITEM_VECTORS, METRICS, NUM_USERS, SCHEMA,
                             SCHEMA_HASH, UPDATE)
from common.data.schema import build_schema
from server.central_dp import CentralDP
from server.replies import reply_problem
from server.strategy import UserFedAvg

SHAPES = {"tower/kernel": (3, 2), "global-bias": (1,)}


class FakeGrid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


def _params(value=0.0):
    return {k: np.full(s, value, np.float32) for k, s in SHAPES.items()}


def _strategy(min_nodes=1, dp=None):
    item_h = np.eye(4, 3, dtype=np.float32)
    schema = build_schema(["a", "b", "c", "d"], ContextEncoder([], []), {"encoder": "test"}, item_h)
    return UserFedAvg(content=to_record({ITEM_VECTORS: item_h}), schema=schema,
                      optimizer=ServerOptimizer("sgd", 1.0), sample_rate=1.0,
                      sampling_key=SamplingKey(b"k" * 32, secret=False), eval_every=1, num_rounds=5,
                      min_nodes=min_nodes, dp=dp, select_key=None)


def _reply(msg, update=None, users=1, **metrics):
    content = RecordDict({METRICS: MetricRecord({NUM_USERS: users, **metrics})})
    if update is not None:
        content[UPDATE] = to_record(update)
    return Message(content=content, reply_to=msg)


def _train(strategy, nodes, round_=1, value=0.0):
    msgs = list(strategy.configure_train(round_, to_record(_params(value)), ConfigRecord({}), FakeGrid(nodes)))
    return {m.metadata.dst_node_id: m for m in msgs}


def test_failed_late_and_malformed_replies_are_dropped_and_the_round_goes_on():
    s = _strategy()
    msgs = _train(s, [11, 12, 13, 14, 15])
    assert all(CONTENT in m.content and SCHEMA in m.content for m in msgs.values())  # first contact: all need it
    assert len({m.content.config_records[CONFIG][SCHEMA_HASH] for m in msgs.values()}) == 1
    good = {k: np.full(sh, 2.0, np.float32) for k, sh in SHAPES.items()}
    nan = {k: np.full(sh, np.nan, np.float32) for k, sh in SHAPES.items()}
    replies = [_reply(msgs[11], good, users=2),
               Message(error=Error(code=0, reason="Node Unavailable"), reply_to=msgs[12]),
               _reply(msgs[13], nan, users=1),
               _reply(msgs[14], {"tower/kernel": good["tower/kernel"]}, users=1)]  # node 15: no reply
    arrays, _ = s.aggregate_train(1, replies)
    new = from_record(arrays)
    for k in SHAPES:  # sgd, lr 1: params + mean update of the good node's 2 users (2.0 * 2 / 2... summed = 2)
        np.testing.assert_allclose(new[k], np.full(SHAPES[k], 1.0))
    row = s._row
    assert (row["nodes-asked"], row["nodes-replied"], row["nodes-failed"]) == (5, 1, 4)
    reasons = {f["node"]: f["reason"] for f in s.failures}
    assert set(reasons) == {12, 13, 14, 15}
    assert "Node Unavailable" in reasons[12] and "not finite" in reasons[13]
    assert "names" in reasons[14] and "no reply" in reasons[15]
    # next round: the content goes again to every node that failed, not to the one that replied well
    msgs = _train(s, [11, 12, 13, 14, 15], round_=2)
    assert CONTENT not in msgs[11].content
    assert all(CONTENT in msgs[n].content for n in (12, 13, 14, 15))
    # a node that held the content and then fails (say, it restarted without its state) gets it again
    s.aggregate_train(2, [Message(error=Error(code=0, reason="restarted"), reply_to=msgs[11]),
                          _reply(msgs[12], good, users=2)])
    msgs = _train(s, [11, 12], round_=3)
    assert CONTENT in msgs[11].content and CONTENT not in msgs[12].content


def test_an_error_the_superlink_makes_for_a_dead_node_is_counted_against_that_node():
    """A SuperLink answers for a node that stopped heartbeating with an error reply from itself (node 1); the
    drop is recorded for the node the message went to, not for node 1."""
    from flwr.common.constant import SUPERLINK_NODE_ID

    s = _strategy()
    msgs = _train(s, [7, 9])
    for i, m in enumerate(msgs.values()):  # what the grid does when it pushes them
        m.metadata.__dict__["_message_id"] = f"id-{i}"
    dead = msgs[9]
    error = Message(error=Error(code=0, reason="Node Unavailable"), reply_to=dead)
    error.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    assert error.metadata.src_node_id == SUPERLINK_NODE_ID and error.metadata.reply_to_message_id == "id-1"
    s.aggregate_train(1, [_reply(msgs[7], _params(0.1), users=1), error])
    assert [(f["node"], f["reason"]) for f in s.failures] == [(9, "Node Unavailable")]


@pytest.mark.parametrize("bad, expected", [
    ({"tower/kernel": np.zeros((2, 3), np.float32), "global-bias": np.zeros(1, np.float32)}, "shape"),
    ({"tower/kernel": np.zeros((3, 2), np.int32), "global-bias": np.zeros(1, np.float32)}, "dtype"),
    ({"tower/kernel": np.full((3, 2), np.inf, np.float32), "global-bias": np.zeros(1, np.float32)}, "not finite"),
])
def test_reply_problem_names_what_is_wrong(bad, expected):
    record = ArrayRecord(OrderedDict((k, Array(v)) for k, v in bad.items()))  # as a node sent it, dtype kept
    content = RecordDict({UPDATE: record, METRICS: MetricRecord({NUM_USERS: 1})})
    assert expected in reply_problem(content, _params(), None, False)


def test_reply_problem_checks_metrics_and_the_clip_bound():
    upd = {k: np.zeros(sh, np.float32) for k, sh in SHAPES.items()}
    upd["global-bias"][0] = 0.3  # norm 0.3
    ok = RecordDict({UPDATE: to_record(upd), METRICS: MetricRecord({NUM_USERS: 2})})
    assert reply_problem(ok, _params(), 0.2, False) is None  # 0.3 <= 2 users x C = 0.4
    assert "exceeds" in reply_problem(ok, _params(), 0.1, False)  # 0.3 > 2 x 0.1
    assert "num-users" in reply_problem(RecordDict({METRICS: MetricRecord({NUM_USERS: -1})}), _params(), None,
                                        False)
    assert "metrics" in reply_problem(RecordDict({}), _params(), None, False)
    shifted = RecordDict({UPDATE: to_record(upd), METRICS: MetricRecord({NUM_USERS: 2,
                                                                         CLIP_SHIFTED_COUNT: 1.5})})
    assert "clip-shifted-count" in reply_problem(shifted, _params(), 0.2, True)


def test_a_round_with_fewer_than_min_nodes_replies_is_skipped_and_not_accounted():
    ledger = PrivacyLedger(delta=1e-5, accountant="rdp")
    dp = CentralDP(clip_norm=1.0, noise_multiplier=1.0, denominator=10.0, ledger=ledger)
    s = _strategy(min_nodes=2, dp=dp)
    msgs = _train(s, [11, 12])
    arrays, _ = s.aggregate_train(1, [_reply(msgs[11], _params(0.1), users=1)])
    assert arrays is None and s._row["skipped"] == 1 and s._row["nodes-replied"] == 1
    assert ledger.records == []  # nothing released, nothing accounted


def test_a_dp_round_with_no_sampled_user_is_noised_and_accounted():
    ledger = PrivacyLedger(delta=1e-5, accountant="rdp")
    dp = CentralDP(clip_norm=1.0, noise_multiplier=1.0, denominator=10.0, ledger=ledger)
    s = _strategy(dp=dp)
    msgs = _train(s, [11, 12])
    arrays, _ = s.aggregate_train(1, [_reply(msgs[11], users=0), _reply(msgs[12], users=0)])
    new = from_record(arrays)
    assert len(ledger.records) == 1 and s._row["users"] == 0
    # noise N(0, (zC)^2) / denominator moved the model although nobody trained
    assert all(np.abs(v).sum() > 0 for v in new.values())


def test_evaluation_drops_bad_replies_and_averages_the_rest():
    s = _strategy()
    _train(s, [11, 12, 13])
    s.aggregate_train(1, [])  # nobody replied: skipped (min-nodes 1)
    msgs = {m.metadata.dst_node_id - 10: m for m in s.configure_evaluate(1, to_record(_params()), ConfigRecord({}),
                                                                          FakeGrid([11, 12, 13]))}
    replies = [Message(content=RecordDict({METRICS: MetricRecord({NUM_USERS: 1, "val-hr@10": 0.2})}),
                       reply_to=msgs[1]),
               Message(content=RecordDict({METRICS: MetricRecord({NUM_USERS: 3, "val-hr@10": 0.6})}),
                       reply_to=msgs[2]),
               Message(content=RecordDict({METRICS: MetricRecord({NUM_USERS: 1, "val-hr@10": 7.0})}),
                       reply_to=msgs[3])]
    metrics = s.aggregate_evaluate(1, replies)
    assert metrics["val-hr@10"] == pytest.approx((0.2 * 1 + 0.6 * 3) / 4)
    assert any(f["node"] == 13 and f["phase"] == "evaluate" for f in s.failures)
    assert s.log.rows[-1]["val-hr@10"] == pytest.approx(0.5)


def test_fail_fast_stops_a_simulation_whose_nodes_all_fail_in_the_first_round():
    from common.errors import RunFailed

    for fail_fast in (False, True):
        s = _strategy()
        s.fail_fast = fail_fast
        msgs = _train(s, [11, 12])
        replies = [Message(error=Error(code=0, reason="DataError: column 'device' is missing"), reply_to=m)
                   for m in msgs.values()]
        if not fail_fast:  # a deployment: the round is skipped and the run goes on
            assert s.aggregate_train(1, replies) == (None, None) and s._row["skipped"] == 1
            continue
        with pytest.raises(RunFailed, match="every node failed.*column 'device' is missing"):
            s.aggregate_train(1, replies)
    s = _strategy()  # a later round with all nodes failing is skipped even with fail_fast
    s.fail_fast = True
    s.round_offset = 3
    msgs = _train(s, [11])
    assert s.aggregate_train(2, [Message(error=Error(code=0, reason="boom"), reply_to=msgs[11])]) == (None, None)


def test_adaptive_clipping_noises_with_this_round_s_clip_and_sends_the_next_one_to_the_nodes():
    from server.central_dp import AdaptiveClip

    ledger = PrivacyLedger(delta=1e-5, accountant="rdp")
    dp = CentralDP(clip_norm=1.0, noise_multiplier=0.1, denominator=10.0, ledger=ledger,
                   adaptive=AdaptiveClip(quantile=0.5, lr=0.2, count_stddev=0.1))
    s = _strategy(dp=dp)
    msgs = _train(s, [11, 12])
    assert msgs[11].content.config_records[CONFIG][CLIP_NORM] == 1.0
    # every user's update far below C: all 4 unclipped, shifted count 4 - 4/2 = 2, noised with sd 0.1 (the
    # count is 20 sd from 0, so C shrinks on every draw); the noisy unclipped share is 1/2 + (2 + noise)/10
    s.aggregate_train(1, [_reply(msgs[11], _params(0.01), users=2, **{CLIP_SHIFTED_COUNT: 1.0}),
                          _reply(msgs[12], _params(0.01), users=2, **{CLIP_SHIFTED_COUNT: 1.0})])
    assert ledger.records[0].clip_norm == 1.0 and s._row["clip-norm"] == 1.0  # this round: the old C
    below = s._row["unclipped-share"]
    assert abs(below - 0.7) < 0.1  # 10 sd of the count noise / 10
    assert dp.clip_norm == pytest.approx(math.exp(-0.2 * (below - 0.5))) and dp.clip_norm < 1.0
    msgs = _train(s, [11, 12], round_=2)
    assert msgs[11].content.config_records[CONFIG][CLIP_NORM] == pytest.approx(dp.clip_norm)  # next: the new C


def test_evaluation_is_skipped_between_eval_every_rounds_and_the_best_round_is_kept():
    s = _strategy()
    s.eval_every, s.select_key = 2, "val-hr@10"
    for round_, value, hr in ((1, 0.0, None), (2, 1.0, 0.4), (3, 2.0, None), (4, 3.0, 0.3)):
        _train(s, [11], round_=round_, value=value)
        s.aggregate_train(round_, [])
        msgs = list(s.configure_evaluate(round_, to_record(_params(value)), ConfigRecord({}), FakeGrid([11])))
        if hr is None:  # not an evaluation round: no message, the round's row has no metrics
            assert msgs == [] and s.aggregate_evaluate(round_, []) is None
            assert "val-hr@10" not in s.log.rows[-1]
            continue
        reply = Message(content=RecordDict({METRICS: MetricRecord({NUM_USERS: 1, "val-hr@10": hr})}),
                        reply_to=msgs[0])
        s.aggregate_evaluate(round_, [reply])
    assert [r["round"] for r in s.log.rows] == [1, 2, 3, 4]
    score, best_round, params = s.best
    assert (score, best_round) == (0.4, 2) and all(np.all(v == 1.0) for v in params.values())


def test_a_round_starts_once_min_connected_nodes_are_connected():
    """min-connected=3: while 2 nodes are connected the round waits (the server polls the grid once a second); it
    starts, asking all 3, when the third connects. A failed node that must come back is waited for."""

    class Joining(FakeGrid):
        polls = 0

        def get_node_ids(self):
            self.polls += 1
            return [11, 12] + ([13] if self.polls > 2 else [])

    s = _strategy(min_nodes=1)
    s.min_connected = 3
    grid = Joining([])
    msgs = list(s.configure_train(1, to_record(_params()), ConfigRecord({}), grid))
    assert grid.polls == 3 and sorted(m.metadata.dst_node_id for m in msgs) == [11, 12, 13]
