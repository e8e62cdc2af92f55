"""Secure aggregation (SecAgg+): the server holds only masked vectors, their sum equals the plain sum within the
quantisation bound, dropouts after key sharing are survived, too few nodes abort without unmasking, and a node
can insist on it. The nodes are the real ClientApp (with Flower's secaggplus_mod) in this process."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.quantization import dequantize, quantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from client.app import REQUIRE_SECURE_AGGREGATION, app, train_reply
from client.node import node_for
from common.federation.aggregation import ServerOptimizer
from common.config import Config
from common.model.formula import ModelShape, init_shared
from common.federation.params import from_record, to_record
from common.privacy.ledger import PrivacyLedger
from common.privacy.sampling import SamplingKey
from common.federation.protocol import CONFIG, ITEM_VECTORS, METRICS, UPDATE
from common.federation.secagg import (CLIPPING_RANGE, MODULUS, error_bound, pack, quantization_range, shares_and_threshold,
                           unpack)
from server.app import public_inputs
from server.central_dp import CentralDP
from server.secagg_driver import SecureAggregation
from server.strategy import UserFedAvg
from simulations.rigs.inprocess import InProcessGrid, node_contexts
from simulations.simulate import simulation_inputs

NODES = 5
MAX_USERS = 5  # 24 users in 5 shards: at most 5 a node


@pytest.fixture(scope="module")
def fed(small_synthetic):
    cfg = simulation_inputs(Config(data=str(small_synthetic), dim=4, text_dim=8, text_epochs=2, negatives=3,
                                   local_steps=2, secure_aggregation=True, secagg_max_users=MAX_USERS))
    schema, h = public_inputs(cfg)
    params = init_shared(ModelShape(schema.n_items, h.shape[1], cfg.dim, schema.context_dim, True), 0)
    return cfg, schema, h, params


def _strategy(fed, secure=True, dp=None, **kw):
    cfg, schema, h, _ = fed
    return UserFedAvg(content=to_record({ITEM_VECTORS: h}), schema=schema, optimizer=ServerOptimizer("sgd", 1.0),
                      sample_rate=1.0, sampling_key=SamplingKey(b"k" * 32, secret=False), eval_every=1,
                      num_rounds=3, select_key=None, dp=dp,
                      secure=SecureAggregation(max_users=MAX_USERS, clip_norm=cfg.clip_norm, **kw) if secure else None)


def _round(fed, strategy, lost=None):
    """One secure training round over fresh nodes; (new params, the grid, the stage-2 messages sent)."""
    cfg, _, _, params = fed
    grid = InProcessGrid(app, node_contexts(cfg, NODES), lost=lost)
    msgs = list(strategy.configure_train(1, to_record(params), ConfigRecord({}), grid))
    replies = grid.send_and_receive(msgs)
    arrays, _ = strategy.aggregate_train(1, replies)
    return (from_record(arrays) if arrays is not None else None), grid, msgs


def _plain_replies(fed, msgs, nodes=None):
    """What each node would have sent in clear for the same stage-2 message (fresh node state): {node: (update,
    users)}. Computed apart from the protocol, as the reference for its sum."""
    cfg = fed[0]
    contexts = node_contexts(cfg, NODES)
    out = {}
    for msg in msgs:
        nid = msg.metadata.dst_node_id
        if nodes is not None and nid not in nodes:
            continue
        content = RecordDict({k: v for k, v in msg.content.items() if k != RECORD_KEY_CONFIGS})
        node = node_for(contexts[nid], content, training=True)
        reply = train_reply(node, content)
        out[nid] = (from_record(reply.array_records[UPDATE]), int(reply.metric_records[METRICS]["num-users"]))
    return out


def _expected(params, plain):
    users = sum(n for _, n in plain.values())
    total = {k: sum(u[k].astype(np.float64) for u, _ in plain.values()) for k in params}
    return {k: params[k] + total[k] / users for k in params}, users


def test_the_secure_sum_equals_the_plain_sum_within_the_quantisation_bound(fed):
    s = _strategy(fed)
    new, grid, msgs = _round(fed, s)
    plain = _plain_replies(fed, msgs)
    expected, users = _expected(fed[3], plain)
    assert s._row["users"] == users == 24 and s._row["nodes-replied"] == NODES
    bound = error_bound(NODES, MAX_USERS, fed[0].clip_norm, quantization_range(NODES)) / users
    moved = max(float(np.abs(expected[k] - fed[3][k]).max()) for k in expected)
    assert moved > 1000 * bound  # the round changed the model far more than the bound
    for k in expected:
        np.testing.assert_allclose(new[k], expected[k], atol=bound + 1e-6, rtol=0)


def test_the_server_never_holds_a_node_s_update_in_clear(fed):
    s = _strategy(fed)
    _, grid, msgs = _round(fed, s)
    plain = _plain_replies(fed, msgs)
    levels = quantization_range(NODES)
    stage2 = [r for r in grid.replies if Key.MASKED_PARAMETERS in r.content.config_records[RECORD_KEY_CONFIGS]]
    assert len(stage2) == NODES
    for reply in grid.replies:  # every reply of every stage: no array record holds a value, no metric is sent
        assert all(len(rec) == 0 for rec in reply.content.array_records.values())
        assert UPDATE not in reply.content and METRICS not in reply.content
    cfg = fed[0]
    for reply in stage2:
        nid = reply.metadata.src_node_id
        update, users = plain[nid]
        clear = pack(update, users, 0.0, MAX_USERS, cfg.clip_norm)
        q = [np.round((np.clip(a, -1, 1) + 1) * levels / 2) for a in clear]  # the quantised vector it masks
        masked = [bytes_to_ndarray(b) for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
        near = np.mean(np.concatenate([(np.abs(m.ravel() - x.ravel()) <= 1) for m, x in zip(masked[1:], q)]))
        assert near < 0.01  # unmasked it would be 1.0; a uniform mask leaves ~3 / 2^32


def test_a_node_that_fails_after_sharing_keys_is_dropped_and_the_round_sums_the_rest(fed):
    victim = 103
    s = _strategy(fed)

    def lost(msg):  # node 103 replies in setup and key sharing, then is gone
        rec = msg.content.config_records.get(RECORD_KEY_CONFIGS, {})
        return msg.metadata.dst_node_id == victim and rec.get(Key.STAGE) in (Stage.COLLECT_MASKED_VECTORS,
                                                                               Stage.UNMASK)

    new, grid, msgs = _round(fed, s, lost=lost)
    assert new is not None and victim in {m.metadata.dst_node_id for m in msgs}
    plain = _plain_replies(fed, msgs, nodes={m.metadata.dst_node_id for m in msgs} - {victim})
    expected, users = _expected(fed[3], plain)
    assert s._row["users"] == users < 24
    assert (s._row["nodes-replied"], s._row["nodes-failed"], s._row["secagg-dropped"]) == (4, 1, 1)
    assert [(f["node"], f["phase"]) for f in s.failures] == [(victim, "train")]
    bound = error_bound(4, MAX_USERS, fed[0].clip_norm, quantization_range(NODES)) / users
    for k in expected:
        np.testing.assert_allclose(new[k], expected[k], atol=bound + 1e-6, rtol=0)


def test_a_node_lost_in_the_unmask_stage_still_counts(fed):
    s = _strategy(fed)
    lost = lambda msg: (msg.metadata.dst_node_id == 102  # noqa: E731
                        and msg.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE) == Stage.UNMASK)
    new, _, msgs = _round(fed, s, lost=lost)
    expected, users = _expected(fed[3], _plain_replies(fed, msgs))
    assert s._row["users"] == users == 24
    bound = error_bound(NODES, MAX_USERS, fed[0].clip_norm, quantization_range(NODES)) / users
    for k in expected:
        np.testing.assert_allclose(new[k], expected[k], atol=bound + 1e-6, rtol=0)


def test_too_few_live_nodes_skip_the_round_without_unmasking_or_accounting(fed):
    ledger = PrivacyLedger(delta=1e-3)
    dp = CentralDP(clip_norm=fed[0].clip_norm, noise_multiplier=1.0, denominator=24.0, ledger=ledger)
    s = _strategy(fed, dp=dp, shares=5, threshold=4)
    dead = {101, 102}  # 3 of 5 left: fewer than t = 4 live neighbours

    new, grid, msgs = _round(fed, s, lost=lambda m: m.metadata.dst_node_id in dead
                             and m.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE)
                             == Stage.COLLECT_MASKED_VECTORS)
    assert new is None and s._row["skipped"] == 1 and ledger.records == []
    unmask = [r for r in grid.replies if Key.SHARE_LIST in r.content.config_records.get(RECORD_KEY_CONFIGS, {})]
    assert unmask == []  # no share of any secret was asked for


def test_central_dp_noises_the_secure_sum_and_accounts_the_round(fed):
    ledger = PrivacyLedger(delta=1e-3)
    dp = CentralDP(clip_norm=fed[0].clip_norm, noise_multiplier=1.0, denominator=24.0, ledger=ledger)
    s = _strategy(fed, dp=dp)
    new, _, msgs = _round(fed, s)
    assert msgs[0].content.config_records[CONFIG]["clip-norm"] == fed[0].clip_norm
    assert len(ledger.records) == 1 and s._row["users"] == 24
    plain = _plain_replies(fed, msgs)
    params = fed[3]
    total = {k: sum(u[k].astype(np.float64) for u, _ in plain.values()) for k in params}
    noise = np.concatenate([((new[k] - params[k]) * 24.0 - total[k]).ravel() for k in params])
    # new = params + (sum + N(0, (zC)^2)) / (qN): the residual is the noise, std z C = clip-norm
    assert 0.8 * fed[0].clip_norm < noise.std() < 1.2 * fed[0].clip_norm


def test_a_node_that_requires_secure_aggregation_refuses_a_plain_round(fed):
    cfg, _, _, params = fed
    contexts = node_contexts(cfg, NODES)
    for ctx in contexts.values():
        ctx.node_config[REQUIRE_SECURE_AGGREGATION] = "true"
    s = _strategy(fed, secure=False)
    grid = InProcessGrid(app, contexts)
    replies = grid.send_and_receive(s.configure_train(1, to_record(params), ConfigRecord({}), grid))
    assert all(r.has_error() and "requires secure aggregation" in r.error.reason for r in replies)
    arrays, _ = s.aggregate_train(1, replies)
    assert arrays is None and s._row["skipped"] == 1
    # the same nodes take part in a secure round
    s = _strategy(fed)
    grid = InProcessGrid(app, contexts)
    msgs = list(s.configure_train(1, to_record(params), ConfigRecord({}), grid))
    arrays, _ = s.aggregate_train(1, grid.send_and_receive(msgs))
    assert arrays is not None and s._row["users"] == 24


def test_a_node_over_the_user_bound_sends_nothing(fed):
    cfg = fed[0]
    s = UserFedAvg(content=to_record({ITEM_VECTORS: fed[2]}), schema=fed[1], optimizer=ServerOptimizer("sgd", 1.0),
                   sample_rate=1.0, sampling_key=SamplingKey(b"k" * 32, secret=False), eval_every=1, num_rounds=3,
                   select_key=None, secure=SecureAggregation(max_users=4, clip_norm=cfg.clip_norm))
    new, grid, _ = _round(fed, s)
    over = [f for f in s.failures if f["phase"] == "train"]  # 24 users in shards of 5, 5, 5, 5, 4
    assert sorted(f["node"] for f in over) == [101, 102, 103, 104]
    assert all("more than secagg-max-users = 4" in f["reason"] for f in over)
    assert new is None and s._row["skipped"] == 1  # one node left: fewer live neighbours than t = 3


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 60), st.integers(1, 50), st.floats(1e-3, 10.0), st.integers(0, 2**31 - 1))
def test_quantisation_error_of_the_packed_sum_is_within_the_bound(n_nodes, max_users, clip, seed):
    """pack -> Flower's quantiser -> integer sum mod M -> dequantise -> unpack, against the exact sum."""
    rng = np.random.default_rng(seed)
    levels = quantization_range(n_nodes)
    updates, users = [], []
    for _ in range(n_nodes):
        n = int(rng.integers(0, max_users + 1))
        u = rng.normal(size=(3, 4))
        u *= min(1.0, n * clip / max(np.linalg.norm(u), 1e-12))  # the sum of n clipped updates: norm <= n C
        updates.append({"w": u, "b": np.zeros(2)})
        users.append(n)
    total = None
    for u, n in zip(updates, users):
        q = quantize(pack(u, n, 0.0, max_users, clip), CLIPPING_RANGE, levels)
        total = q if total is None else [(a + b) % MODULUS for a, b in zip(total, q)]
    summed = [v - (n_nodes - 1) * CLIPPING_RANGE for v in dequantize(total, CLIPPING_RANGE, levels)]
    got, got_users, _ = unpack(summed, ["w", "b"], max_users, clip)
    exact = sum(u["w"] for u in updates)
    assert got_users == sum(users)
    assert np.abs(got["w"] - exact).max() <= error_bound(n_nodes, max_users, clip, levels) * (1 + 1e-9)


def test_protocol_sizes():
    assert shares_and_threshold(5) == (5, 3)
    assert shares_and_threshold(100) == (15, 8)
    assert shares_and_threshold(2) == (2, 2)
    assert quantization_range(5) == 2**24 and quantization_range(1000) * 1000 < MODULUS
    with pytest.raises(ValueError, match=r"secure aggregation needs 2 <= threshold <= shares; got threshold 4, "
                                         r"shares 3 for 5 nodes"):
        shares_and_threshold(5, shares=3, threshold=4)
    with pytest.raises(ValueError, match=r"this node has 3 users this round, more than secagg-max-users = 2 .*"
                                         r"it sends nothing\. Raise secagg-max-users\."):
        pack({"w": np.zeros(2)}, 3, 0.0, 2, 1.0)


def test_each_user_s_update_is_clipped_to_the_public_bound_under_secure_aggregation(fed):
    """Without central DP too: the quantiser needs |value| <= U C, so a node clips every user to C first."""
    cfg, _, _, params = fed
    clip = 0.002  # below what these users' updates reach (at most local-lr x local-steps x local-grad-clip = 0.02)
    s = UserFedAvg(content=to_record({ITEM_VECTORS: fed[2]}), schema=fed[1], optimizer=ServerOptimizer("sgd", 1.0),
                   sample_rate=1.0, sampling_key=SamplingKey(b"k" * 32, secret=False), eval_every=1, num_rounds=3,
                   select_key=None, secure=SecureAggregation(max_users=MAX_USERS, clip_norm=clip))
    grid = InProcessGrid(app, node_contexts(cfg, NODES))
    msgs = list(s.configure_train(1, to_record(params), ConfigRecord({}), grid))
    clipped = _plain_replies(fed, msgs)
    unclipped = {}
    for msg in msgs:  # the same message without the secure-aggregation bound
        conf = dict(msg.content.config_records[CONFIG])
        conf.pop("secagg-max-users")
        content = RecordDict({k: v for k, v in msg.content.items() if k not in (RECORD_KEY_CONFIGS, CONFIG)})
        content[CONFIG] = ConfigRecord(conf)
        node = node_for(node_contexts(cfg, NODES)[msg.metadata.dst_node_id], content, training=True)
        unclipped[msg.metadata.dst_node_id] = from_record(train_reply(node, content).array_records[UPDATE])
    norm = lambda u: float(np.sqrt(sum(np.square(v.astype(np.float64)).sum() for v in u.values())))  # noqa: E731
    for nid, (update, users) in clipped.items():
        assert norm(update) <= users * clip * (1 + 1e-5)
        assert norm(unclipped[nid]) > users * clip  # the clip binds here


def test_evaluation_metrics_are_summed_securely_too(fed):
    from client.app import evaluate_reply
    from common.evaluation.metrics import evaluation_keys

    cfg, _, _, params = fed
    keys = evaluation_keys(cfg.top_k)
    s = _strategy(fed, metric_keys=tuple(keys))
    s._row = {"round": 1}  # as the round's training left it
    grid = InProcessGrid(app, node_contexts(cfg, NODES))
    msgs = list(s.configure_evaluate(1, to_record(params), ConfigRecord({}), grid))
    metrics = s.aggregate_evaluate(1, grid.send_and_receive(msgs))
    for reply in grid.replies:
        assert METRICS not in reply.content and all(len(r) == 0 for r in reply.content.array_records.values())
    contexts = node_contexts(cfg, NODES)  # the reference: each node's plain evaluation, weighted by its users
    sums, users = dict.fromkeys(keys, 0.0), 0
    for msg in msgs:
        content = RecordDict({k: v for k, v in msg.content.items() if k != RECORD_KEY_CONFIGS})
        m = evaluate_reply(node_for(contexts[msg.metadata.dst_node_id], content), content).metric_records[METRICS]
        users += m["num-users"]
        for k in keys:
            sums[k] += m[k] * m["num-users"]
    assert metrics["num-users"] == users == 24
    bound = NODES * 2.0 / quantization_range(NODES) * MAX_USERS / users
    assert any(sums[k] > 0 for k in keys)
    for k in keys:
        assert abs(metrics[k] - sums[k] / users) <= bound + 1e-9
    assert s.log.rows[-1][keys[0]] == pytest.approx(metrics[keys[0]])


def test_a_round_of_two_nodes_is_skipped_unless_accepted(fed):
    """Flower's 32-bit mask seed (flwrlabs/flower#7522): in a round of 2 nodes each node's vector is hidden by one
    32-bit-seeded pairwise mask. Such a round is skipped before any masked vector is asked for, unless the
    operator accepts it (secagg-accept-two-nodes)."""
    cfg, schema, h, params = fed
    cfg = cfg.replace(secagg_max_users=12)  # 24 users in 2 shards
    for accept in (False, True):
        ledger = PrivacyLedger(delta=1e-3)
        dp = CentralDP(clip_norm=cfg.clip_norm, noise_multiplier=1.0, denominator=24.0, ledger=ledger)
        s = UserFedAvg(content=to_record({ITEM_VECTORS: h}), schema=schema, optimizer=ServerOptimizer("sgd", 1.0),
                       sample_rate=1.0, sampling_key=SamplingKey(b"k" * 32, secret=False), eval_every=1,
                       num_rounds=3, select_key=None, dp=dp,
                       secure=SecureAggregation(max_users=12, clip_norm=cfg.clip_norm, accept_two_nodes=accept))
        sent: list[Message] = []  # every message the server sends, in every stage
        grid = InProcessGrid(app, node_contexts(cfg, 2), lost=lambda m: sent.append(m) or False)
        msgs = list(s.configure_train(1, to_record(params), ConfigRecord({}), grid))
        arrays, _ = s.aggregate_train(1, grid.send_and_receive(msgs))
        stages = {m.content.config_records.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE) for m in sent}
        if accept:
            assert arrays is not None and s._row["users"] == 24 and len(ledger.records) == 1
        else:
            assert arrays is None and s._row["skipped"] == 1 and ledger.records == []
            assert Stage.COLLECT_MASKED_VECTORS not in stages and Stage.UNMASK not in stages


def test_every_secure_run_states_the_mask_seed_limit_even_without_privacy(fed, tmp_path, capsys):
    """privacy=none + SecAgg: privacy.json is written and, like the console, states the 32-bit seed and its cost."""
    from server.app import run_federated

    cfg = fed[0].replace(num_rounds=1, checkpoint_every=0)
    run_federated(InProcessGrid(app, node_contexts(cfg, NODES)), cfg, tmp_path)
    doc = json.loads((tmp_path / "privacy.json").read_text())
    limit = doc["secure_aggregation"]["mask_strength"]
    assert "flwrlabs/flower#7522" in limit and "2^32" in limit and "hours" in limit
    assert doc["guarantee"].startswith("none")
    console = capsys.readouterr().out
    assert "WARNING: " + limit in console and "learns only" not in console


def _stage(m: Message) -> tuple:
    """(SecAgg+ stage, secagg-phase) of a message as the server sends it (secaggplus_mod consumes its record on
    delivery, so it is read before)."""
    conf = m.content.config_records
    return conf.get(RECORD_KEY_CONFIGS, {}).get(Key.STAGE), conf.get(CONFIG, {}).get("secagg-phase")


def test_no_secure_update_sum_is_unmasked_below_the_user_floor_with_one_user_devices(fed):
    """24 one-user devices, q = 0.08: some rounds sample a single user. The users are counted securely first; a
    round below secagg-min-users = 2 is skipped before any update is collected (no training message carries the
    collect stage), nothing is accounted; the others sum exactly the users counted."""
    from common.privacy.sampling import poisson_sample

    cfg, schema, h, params = fed
    cfg = cfg.replace(secagg_max_users=1)
    contexts = node_contexts(cfg, 24)
    key, q = SamplingKey(b"f" * 32, secret=False), 0.08
    from common.data.datasets import load_cached

    user_keys = np.asarray(load_cached(cfg.data).user_ids).astype(str)  # one per device
    ledger = PrivacyLedger(delta=1e-3)
    dp = CentralDP(clip_norm=cfg.clip_norm, noise_multiplier=1.0, denominator=24 * q, ledger=ledger)
    s = UserFedAvg(content=to_record({ITEM_VECTORS: h}), schema=schema, optimizer=ServerOptimizer("sgd", 1.0),
                   sample_rate=q, sampling_key=key, eval_every=100, num_rounds=20, select_key=None, dp=dp,
                   secure=SecureAggregation(max_users=1, clip_norm=cfg.clip_norm, min_users=2))
    seen = set()
    for r in range(1, 9):
        expected = int(poisson_sample(user_keys, q, key.round_seed(r), r).sum())  # computed apart from the nodes
        sent: list[tuple] = []
        grid = InProcessGrid(app, contexts, lost=lambda m: sent.append(_stage(m)) or False)
        accounted = len(ledger.records)
        arrays, _ = s.aggregate_train(r, grid.send_and_receive(s.configure_train(r, to_record(params),
                                                                                 ConfigRecord({}), grid)))
        assert (Stage.COLLECT_MASKED_VECTORS, "count") in sent  # the users were counted first
        collected = [x for x in sent if x == (Stage.COLLECT_MASKED_VECTORS, None)]  # an update asked for
        if expected < 2:
            assert arrays is None and s._row["skipped"] == 1 and len(ledger.records) == accounted
            assert collected == []  # no update was asked for, so none could be unmasked
        else:
            assert arrays is not None and s._row["users"] == expected and len(ledger.records) == accounted + 1
        seen.add(min(expected, 2))
    assert {1, 2} <= seen  # rounds of a single sampled user and rounds above the floor were both met


def test_a_node_counted_for_the_floor_that_sends_no_update_stops_the_unmasking(fed):
    """The floor holds for the unmasked sum only if every counted node is in it: a node that drops between the
    count and its masked update makes the round skip before the unmask stage."""
    s = _strategy(fed, min_users=2)
    victim, sent = 101, []

    def lost(m):
        sent.append(_stage(m))
        return m.metadata.dst_node_id == victim and sent[-1] == (Stage.COLLECT_MASKED_VECTORS, None)

    new, _, _ = _round(fed, s, lost=lost)
    assert new is None and s._row["skipped"] == 1
    # stages without a phase are the protocol's own messages; an unmask after the update's collect would unmask it
    update = sent.index((Stage.COLLECT_MASKED_VECTORS, None))
    assert (Stage.COLLECT_MASKED_VECTORS, "count") in sent[:update] and (Stage.UNMASK, None) in sent[:update]
    assert (Stage.UNMASK, None) not in sent[update:]  # the update sum was never unmasked


def test_central_noise_covers_the_rounding_of_the_secure_sum(fed):
    """SecAgg's stochastic rounding can move one user's contribution by up to 2 sqrt(d) steps beyond C: the
    central noise std is z (C + that), computed here from the round's shapes, U, C and T."""
    from common.privacy.noise import SecureGaussian

    class Recording(SecureGaussian):
        stds: list = []

        def normal(self, std, shape):
            Recording.stds.append(std)
            return np.zeros(shape)

    cfg, _, _, params = fed
    ledger = PrivacyLedger(delta=1e-3)
    dp = CentralDP(clip_norm=cfg.clip_norm, noise_multiplier=1.0, denominator=24.0, ledger=ledger, noise=Recording())
    s = _strategy(fed, dp=dp)
    _round(fed, s)
    d = sum(v.size for v in params.values())
    step = 2.0 / quantization_range(NODES) * MAX_USERS * cfg.clip_norm  # one quantisation step, update units
    assert Recording.stds and Recording.stds == pytest.approx([cfg.clip_norm + 2 * np.sqrt(d) * step]
                                                              * len(Recording.stds), rel=1e-12)
    assert 2 * np.sqrt(d) * step > 1e-9 * cfg.clip_norm  # the term is really there


def test_a_round_left_with_two_nodes_after_a_dropout_is_not_unmasked_unless_accepted(fed):
    """3 nodes share keys, one drops before sending its masked update: each of the other two has one live
    neighbour, whose pairwise mask (32-bit seed) is all that hides its vector once the dropped node's masks are
    rebuilt. Nothing is unmasked unless the operator accepts it."""
    cfg, schema, h, params = fed
    cfg = cfg.replace(secagg_max_users=8)  # 24 users in 3 shards
    for accept in (False, True):
        s = UserFedAvg(content=to_record({ITEM_VECTORS: h}), schema=schema, optimizer=ServerOptimizer("sgd", 1.0),
                       sample_rate=1.0, sampling_key=SamplingKey(b"k" * 32, secret=False), eval_every=1,
                       num_rounds=3, select_key=None,
                       secure=SecureAggregation(max_users=8, clip_norm=cfg.clip_norm, accept_two_nodes=accept))
        sent: list[tuple] = []

        def lost(m):
            sent.append(_stage(m))
            return m.metadata.dst_node_id == 101 and sent[-1] == (Stage.COLLECT_MASKED_VECTORS, None)

        grid = InProcessGrid(app, node_contexts(cfg, 3), lost=lost)
        arrays, _ = s.aggregate_train(1, grid.send_and_receive(s.configure_train(1, to_record(params),
                                                                                 ConfigRecord({}), grid)))
        if accept:
            assert arrays is not None and s._row["users"] == 16
        else:
            assert arrays is None and s._row["skipped"] == 1 and (Stage.UNMASK, None) not in sent


# -- what the parameters tolerate, and the compact keys ----------------------------------------------------------

def _connected(nodes: set[int], neighbours: dict[int, set[int]]) -> bool:
    if not nodes:
        return True
    seen, todo = set(), [next(iter(nodes))]
    while todo:
        v = todo.pop()
        if v not in seen:
            seen.add(v)
            todo.extend((neighbours[v] & nodes) - seen)
    return seen == nodes


def test_the_stated_tolerance_holds_on_the_server_s_ring_by_enumeration():
    """common.federation.secagg.tolerance's worst cases, checked on server.secagg.ring_neighbours by trying every set: any
    k - 2 removed nodes leave the rest connected (and some k - 1 do not), any t - 1 colluders hold fewer than t
    shares of every other node's secrets, any k - t dropouts leave every neighbourhood t live nodes; and its
    probability bound is at least the exact probability (all placements) of a privacy failure."""
    import itertools
    from math import comb

    from common.federation.secagg import tolerance
    from server.secagg import ring_neighbours

    n, k, t = 11, 5, 3
    nb = ring_neighbours(list(range(n)), k)
    assert all(len(v) == k for v in nb.values())
    tol = tolerance(n, k, t)
    assert (tol["collude"], tol["drop"], tol["connected"]) == (t - 1, k - t, k - 2)
    nodes = set(range(n))
    assert all(_connected(nodes - set(r), nb) for r in itertools.combinations(range(n), k - 2))
    assert not all(_connected(nodes - set(r), nb) for r in itertools.combinations(range(n), k - 1))
    for bad in itertools.combinations(range(n), t - 1):
        assert all(len((nb[i] - {i}) & set(bad)) < t for i in nodes - set(bad))
    for gone in itertools.combinations(range(n), k - t):
        assert all(len(nb[i] - set(gone)) >= t for i in nodes)
    assert not all(all(len(nb[i] - set(g)) >= t for i in nodes) for g in itertools.combinations(range(n), k - t + 1))
    # 3 corrupted of 11 placed every possible way: how often some honest node has >= t of them as neighbours
    c = 3
    fails = sum(any(len((nb[i] - {i}) & set(bad)) >= t for i in nodes - set(bad))
                for bad in itertools.combinations(range(n), c))
    exact = fails / comb(n, c)
    bound = tolerance(n, k, t, corrupt=c / n, dropout=0.0)["p_privacy"]
    assert 0 < exact <= bound


def test_a_node_shares_its_private_key_as_the_48_byte_scalar(fed):
    """The ClientApp's secaggplus_mod keeps (and so Shamir-shares) its own key as 48 bytes, not 306 of PEM:
    4 chunks of pycryptodome's pure-Python sharing instead of 20. The round still sums correctly (the tests
    above), and the server rebuilds a dropped node's key from the same format."""
    from cryptography.hazmat.primitives.asymmetric import ec
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE

    from common.federation.secagg import bytes_to_private_key, private_key_to_bytes

    key = ec.generate_private_key(ec.SECP384R1())
    raw = private_key_to_bytes(key)
    assert len(raw) == 48
    assert bytes_to_private_key(raw).private_numbers() == key.private_numbers()
    with pytest.raises(ValueError, match="48 bytes"):
        bytes_to_private_key(raw + b"\0")
    cfg = fed[0]
    contexts = node_contexts(cfg, NODES)
    nid = next(iter(contexts))
    setup = ConfigRecord({Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: NODES, Key.SHARE_NUMBER: NODES,
                          Key.THRESHOLD: 3, Key.CLIPPING_RANGE: 1.0, Key.TARGET_RANGE: 2**20, Key.MOD_RANGE: 2**32,
                          Key.MAX_WEIGHT: 1.0})
    msg = Message(content=RecordDict({RECORD_KEY_CONFIGS: setup}), message_type="train", dst_node_id=nid,
                  group_id="1")
    app(msg, contexts[nid])
    state = contexts[nid].state.config_records[RECORD_KEY_STATE]
    assert len(state["sk1"]) == 48 and len(state["sk2"]) == 48


def test_a_corrupt_share_skips_the_round_instead_of_stopping_the_server(fed):
    """Every node's unmask reply carries shares with their bytes flipped (a faulty or malicious node): the server
    cannot rebuild the seeds, so the round is skipped and nothing is unmasked; the server goes on."""
    cfg = fed[0]

    def corrupting(msg, context):
        reply = app(msg, context)
        conf = None if reply.has_error() else reply.content.config_records.get(RECORD_KEY_CONFIGS)
        if conf is not None and Key.SHARE_LIST in conf:  # keep each share's 4-byte index, flip its value
            conf[Key.SHARE_LIST] = [sh[:4] + bytes(b ^ 0x5A for b in sh[4:]) for sh in conf[Key.SHARE_LIST]]
        return reply

    s = _strategy(fed)
    grid = InProcessGrid(corrupting, node_contexts(cfg, NODES))
    msgs = list(s.configure_train(1, to_record(fed[3]), ConfigRecord({}), grid))
    arrays, _ = s.aggregate_train(1, grid.send_and_receive(msgs))
    assert arrays is None and s._row["skipped"] == 1
    assert "cannot be rebuilt" in s.secagg.abort
    again = _strategy(fed)  # the same server code, honest nodes: the round goes through
    new, _, _ = _round(fed, again)
    assert new is not None and "skipped" not in again._row


@pytest.mark.parametrize("shares", [0, 3])  # k = n = 5 (all neighbours), and a ring of k = 3 < n
def test_the_floor_benchmark_counts_the_calls_a_secure_round_makes(fed, monkeypatch, shares):
    """simulations.benchmarks.secagg_floor prices a round as calls x time per call; its call counts must be the
    ones Flower's secaggplus_mod and our server really make. Counted here on a real round with the user count
    (two sessions over 5 nodes, no dropout), and the server rebuilds each seed from exactly t shares."""
    import importlib

    import server.secagg as server_side
    from simulations.benchmarks.secagg_floor import SERVER_CALLS, node_calls

    mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")  # the module, not the mod
    counts: dict[str, int] = {}

    def counted(module, attr, name, pick=None):
        real = getattr(module, attr)

        def wrapper(*args, **kwargs):
            key = name if pick is None else pick(*args)
            counts[key] = counts.get(key, 0) + 1
            return real(*args, **kwargs)
        monkeypatch.setattr(module, attr, wrapper)

    counted(mod, "generate_key_pairs", "key pair")
    counted(mod, "create_shares", None, lambda secret, *_: f"Shamir split, {len(secret)}-byte "
            + ("seed" if len(secret) == 32 else "key"))
    counted(mod, "generate_shared_key", "ECDH + HKDF")
    counted(mod, "encrypt", "Fernet encrypt")
    counted(mod, "decrypt", "Fernet decrypt")
    counted(mod, "pseudo_rand_gen", "mask (pseudo_rand_gen)")
    counted(mod, "quantize", "quantise")
    k, t = shares_and_threshold(NODES, shares)
    counted(server_side, "combine_shares", None,
            lambda share_list: "Shamir combine, t shares of the seed" if len(share_list) == t else "other combine")
    counted(server_side, "pseudo_rand_gen", "server mask")
    s = _strategy(fed, min_users=2, shares=shares)
    new, _, _ = _round(fed, s)
    assert new is not None
    sessions = 2  # the user count, then the update
    expected = {name: sessions * NODES * n for name, n in node_calls(k).items()}
    expected["Shamir combine, t shares of the seed"] = sessions * NODES * SERVER_CALLS[
        "Shamir combine, t shares of the seed"]
    expected["server mask"] = sessions * NODES * SERVER_CALLS["mask (pseudo_rand_gen)"]
    assert counts == expected
