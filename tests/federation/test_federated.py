"""Nodes: per-user updates, sharded == one user per node, sampling, and what leaves a node."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict

from client.app import evaluate_reply, train_reply
from client.node import node_for
from common.data.schema import build_schema
from common.config import Config
from common.data.loader import load_dataset
from common.federation.users import UserStore
from common.federation.updates import distinct_candidates, user_updates
from common.privacy.sampling import poisson_sample, user_rng
from common.model.scoring import DENSE_NAMES, ials_solve
from common.model.formula import ModelShape, init_shared
from common.model.ials import ials_user_gradients
from common.federation.params import from_record, to_record
from server.content import ContentEncoder


@pytest.fixture(scope="module")
def setup(small_synthetic):
    cfg = Config(data=str(small_synthetic), dim=4, text_dim=8, text_epochs=2, negatives=3, local_steps=2)
    ds = load_dataset(small_synthetic)
    item_h = ContentEncoder(cfg.text_dim, cfg.text_epochs, seed=0).item_vectors(ds.item_texts)
    shape = ModelShape(ds.n_items, cfg.text_dim, cfg.dim, ds.context_dim, True)
    params = init_shared(shape, seed=0)
    _SCHEMA["schema"] = build_schema(ds.item_ids, ds.context_encoder, {"encoder": "test"}, item_h)
    _SCHEMA["item_h"] = item_h
    return cfg, ds, item_h, shape, params


_SCHEMA: dict = {}  # the public schema of the module's dataset (set by the setup fixture)


def _boot() -> RecordDict:
    """What the server sends a node that lacks it: h(c) and the public schema."""
    return RecordDict({"content": to_record({"item-vectors": _SCHEMA["item_h"]}),
                       "schema": ConfigRecord({"json": _SCHEMA["schema"].to_json()})})


def _node(ctx, training=False):
    return node_for(ctx, _boot(), training)


def _content(params, item_h, round_, q=1.0, first=True):
    d = RecordDict({"arrays": to_record(params),
                    "config": ConfigRecord({"server-round": round_, "sample-rate": q, "sampling-seed": 7,
                                            "schema-hash": _SCHEMA["schema"].hash})})
    if first:
        d["content"] = to_record({"item-vectors": item_h})
        d["schema"] = ConfigRecord({"json": _SCHEMA["schema"].to_json()})
    return d


def _context(cfg, partition, partitions):
    return Context(run_id=1, node_id=partition + 1, state=RecordDict(), run_config=cfg.to_flwr(),
                   node_config={"partition-id": partition, "num-partitions": partitions})


def _aggregate(cfg, params, item_h, partitions, rounds=2, q=1.0):
    """Sum of updates and user count over all nodes, per round, with theta_u kept in each node's Context."""
    contexts = [_context(cfg, p, partitions) for p in range(partitions)]
    out = []
    for r in range(1, rounds + 1):
        total, users = None, 0
        for ctx in contexts:
            node = _node(ctx)
            reply = train_reply(node, _content(params, item_h, r, q, first=(r == 1)))
            node.save(ctx)
            upd = from_record(reply.array_records["update"])
            total = upd if total is None else {k: total[k] + upd[k] for k in total}
            users += int(reply.metric_records["metrics"]["num-users"])
        out.append((total, users))
    return out


def test_sharded_equals_one_user_per_node(setup):
    cfg, ds, item_h, _, params = setup
    sharded = _aggregate(cfg, params, item_h, partitions=3)
    per_user = _aggregate(cfg, params, item_h, partitions=ds.n_users)
    for (a, na), (b, nb) in zip(sharded, per_user):
        assert na == nb == ds.n_users
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6)
    # round 2 starts from the theta_u each node kept: it differs from round 1
    assert not np.allclose(sharded[0][0]["tower/kernel"], sharded[1][0]["tower/kernel"])


def test_poisson_sampling_is_per_user_and_has_rate_q():
    keys = np.array([f"u{i}" for i in range(4000)])
    mask = poisson_sample(keys, 0.25, seed=1, round_=3)
    assert abs(mask.mean() - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 4000)
    # a user's decision does not depend on who else is on the node
    np.testing.assert_array_equal(poisson_sample(keys[::7], 0.25, 1, 3), mask[::7])
    # and changes with the round, independently: P(sampled in both rounds) = q^2
    other = poisson_sample(keys, 0.25, 1, 4)
    assert (other != mask).any()
    assert abs((mask & other).mean() - 0.0625) < 4 * np.sqrt(0.0625 * 0.9375 / 4000)


def _documented_sample(user_keys, q: float, seed: int, round_: int) -> set[str]:
    """Poisson sampling by the documented rule (common.privacy.sampling.user_uniforms), written apart from it: user u
    takes part when the top 53 bits of the 8-byte little-endian BLAKE2b of "seed|round|sample|u", as a fraction
    of 2^53, are below q. Python integers, one user at a time."""
    out = set()
    for u in user_keys:
        digest = hashlib.blake2b(f"{seed}|{round_}|sample|{u}".encode(), digest_size=8).digest()
        if (int.from_bytes(digest, "little") >> 11) < q * 2 ** 53:
            out.add(str(u))
    return out


def test_sampling_matches_rate_in_training(setup):
    """At q = 0.5 two nodes train exactly the users the documented rule samples from (seed, round, user), and
    their count is a plausible Binomial(U, q) draw."""
    cfg, ds, item_h, _, params = setup
    ((_, users),) = _aggregate(cfg, params, item_h, partitions=2, rounds=1, q=0.5)
    keys = [str(k) for k in ds.user_ids]
    expected = _documented_sample(keys, 0.5, 7, 1)  # _content's sampling seed 7, round 1
    assert users == len(expected)
    conf = {"sample-rate": 0.5, "sampling-seed": 7, "server-round": 1}
    nodes = [_node(_context(cfg, p, 2)) for p in range(2)]
    assert set().union(*(node.store.user_keys[node.sampled(conf)].tolist() for node in nodes)) == expected
    n = len(keys)
    assert 0 < users < n and abs(users - 0.5 * n) <= 4 * np.sqrt(n * 0.25)


def test_total_is_sum_of_user_updates(setup):
    cfg, ds, item_h, shape, params = setup
    store = UserStore.from_prepared(ds, np.arange(ds.n_users))
    users = np.arange(ds.n_users)
    theta = np.zeros((ds.n_users, cfg.dim), np.float32)
    upd, new_theta = user_updates(params, theta, store, users, item_h, cfg, round_=1)
    shapes = shape.shapes()
    total = upd.total(shapes)
    by_user = [upd.user_update(u, shapes) for u in range(upd.n_users)]
    for k in shapes:
        np.testing.assert_allclose(total[k], sum(d[k] for d in by_user), rtol=1e-5, atol=1e-6)
    norms = np.array([np.sqrt(sum(np.square(v).sum() for v in b.values())) for b in by_user])
    np.testing.assert_allclose(upd.norms(), norms, rtol=1e-4)
    # an item row changes only for items the user's examples touched
    for u in range(3):
        touched = set(upd.rows[upd.row_user == u].tolist())
        changed = set(np.flatnonzero(np.abs(by_user[u]["items/embedding"]).sum(1) > 0).tolist())
        assert changed <= touched and set(store.history(u).tolist()) <= touched
    assert not np.allclose(new_theta, theta)
    # sampled softmax is blind to terms shared by all candidates: their updates are exactly zero
    assert cfg.model_loss == "softmax" and not upd.dense["global-bias"].any() and not upd.dense["context/shift"].any()


def test_client_sends_only_shared_updates_and_scalars(setup):
    """No theta_u, no item ids, no raw interactions leave a node."""
    cfg, ds, item_h, shape, params = setup
    ctx = _context(cfg, 0, 2)
    node = _node(ctx)
    reply = train_reply(node, _content(params, item_h, 1))
    node.save(ctx)
    theta = from_record(ctx.state.array_records["theta"])["theta"]
    assert set(reply.keys()) == {"update", "metrics"}
    assert not reply.config_records
    (update,) = reply.array_records.values()
    arrays = from_record(update)
    # exactly the shared parameters, with their global shapes (dense: whole item table)
    assert {k: v.shape for k, v in arrays.items()} == shape.shapes()
    assert all(v.dtype == np.float32 for v in arrays.values())
    # theta_u (private) appears nowhere in what is sent
    sent = np.concatenate([v.ravel() for v in arrays.values()])
    for row in theta:
        for value in row[np.abs(row) > 1e-3][:3]:
            assert not np.any(np.isclose(sent, value, rtol=0, atol=1e-7)), "a theta_u value was sent"
    # metrics are a fixed set of scalars (counts and a loss), no ids
    (metrics,) = reply.metric_records.values()
    assert set(metrics.keys()) == {"num-users", "num-examples", "train-loss-sum"}
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    # evaluation replies carry only per-node means and the user count
    ev = evaluate_reply(node, _content(params, item_h, 1, first=False))
    assert set(ev.keys()) == {"metrics"} and not ev.array_records
    assert all(isinstance(v, (int, float)) for v in ev.metric_records["metrics"].values())
    assert all(k == "num-users" or 0.0 <= v <= 1.0 for k, v in ev.metric_records["metrics"].items())
    assert isinstance(update, ArrayRecord) and isinstance(metrics, MetricRecord)


def test_theta_persists_in_node_state(setup):
    cfg, _, item_h, _, params = setup
    ctx = _context(cfg, 1, 2)
    node = _node(ctx)
    train_reply(node, _content(params, item_h, 1))
    node.save(ctx)
    again = _node(ctx)
    np.testing.assert_array_equal(again.theta, node.theta)
    assert again.ready.all() and again.item_h is not None
    assert set(from_record(ctx.state.array_records["theta"])) == {"theta", "ready", "taken", "warmed", "round"}
    assert DENSE_NAMES[0] not in ctx.state.array_records


def test_device_node_keeps_theta_on_disk(setup, small_synthetic, tmp_path):
    """A device node reads its own data directory and keeps theta_u in state-dir across restarts."""
    cfg, ds, item_h, _, params = setup
    node_config = {"data-dir": str(small_synthetic), "state-dir": str(tmp_path / "state")}
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config=cfg.to_flwr(), node_config=node_config)
    node = _node(ctx)
    assert node.store.n_users == ds.n_users
    train_reply(node, _content(params, item_h, 1))
    node.save(ctx)
    assert (tmp_path / "state" / "node-state.npz").is_file()
    # a restarted node (fresh Flower context) finds its users' theta_u and the item vectors on disk
    fresh = Context(run_id=2, node_id=1, state=RecordDict(), run_config=cfg.to_flwr(), node_config=node_config)
    again = node_for(fresh)  # no content in the message: h(c) and the schema come from state-dir
    np.testing.assert_array_equal(again.theta, node.theta)
    np.testing.assert_array_equal(again.item_h, item_h)
    assert again.ready.all()


def test_device_reports_each_users_local_epsilon_from_the_rounds_it_took_part_in(setup, small_synthetic, tmp_path):
    """privacy=local on a device: state-dir/local_privacy.json gives every user's example-level epsilon for the
    rounds it took part in (counted across restarts), equal to an independent dp-accounting computation."""
    import json

    import dp_accounting

    cfg, ds, item_h, _, params = setup
    c = cfg.replace(privacy="local", local_noise_multiplier=1.3, local_steps=2)
    node_config = {"data-dir": str(small_synthetic), "state-dir": str(tmp_path / "state")}

    def round_on_a_fresh_process(round_, q):
        ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config=c.to_flwr(), node_config=node_config)
        node = _node(ctx)
        train_reply(node, _content(params, item_h, round_, q=q))
        node.save(ctx)
        return node

    for r in (1, 2, 3):
        node = round_on_a_fresh_process(r, 0.5)
    keys = node.store.user_keys
    taken = sum(np.isin(keys, list(_documented_sample(keys, 0.5, 7, r))) for r in (1, 2, 3)).astype(int)
    assert taken.min() < taken.max()  # users differ in how often they took part
    report = json.loads((tmp_path / "state" / "local_privacy.json").read_text())
    assert [u["user"] for u in report["users"]] == list(keys) and [u["rounds"] for u in report["users"]] == list(taken)

    def independent(k):  # 2 DP-SGD steps a round, and one DP warm start of theta_u for a user that trained
        event = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.3), 2 * k + 1)
        return dp_accounting.rdp.RdpAccountant().compose(event).get_epsilon(c.local_delta) if k else 0.0

    for u in report["users"]:
        assert u["epsilon"] == pytest.approx(independent(u["rounds"]), rel=1e-9)
    assert report["epsilon"]["max"] == pytest.approx(independent(int(taken.max())), rel=1e-9)


def test_a_node_refuses_a_round_of_another_schema_and_one_it_has_no_content_for(setup):
    """Without h(c) and the schema, or holding another schema than the round's, a node raises SchemaMismatch
    (an error reply the server logs; it then sends the content again) instead of training on other vectors."""
    from common.data.schema import SchemaMismatch

    cfg, _, item_h, _, params = setup
    with pytest.raises(SchemaMismatch, match="no item vectors"):
        node_for(_context(cfg, 0, 2), _content(params, item_h, 1, first=False), training=True)
    ctx = _context(cfg, 0, 2)
    node = _node(ctx)
    node.save(ctx)
    other = _content(params, item_h, 2, first=False)
    other["config"]["schema-hash"] = "f" * 64
    with pytest.raises(SchemaMismatch, match="the server sends its schema"):
        node_for(ctx, other, training=True)
    assert node_for(ctx, _content(params, item_h, 2, first=False), training=True).schema.hash == _SCHEMA["schema"].hash


def test_device_privacy_report_counts_per_run(setup, small_synthetic, tmp_path):
    """The device's local_privacy.json counts the rounds of the current run only (the run token the server
    sends); the previous run's report is kept beside it, not added to."""
    import json

    cfg, ds, item_h, _, params = setup
    c = cfg.replace(privacy="local", local_noise_multiplier=1.3, local_steps=1)
    node_config = {"data-dir": str(small_synthetic), "state-dir": str(tmp_path / "state")}
    for token, round_ in (("run-a", 1), ("run-a", 2), ("run-a", 3), ("run-b", 1)):
        ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config=c.to_flwr(), node_config=node_config)
        content = _content(params, item_h, round_)
        content["config"]["run-token"] = token
        node = node_for(ctx, content, training=True)
        train_reply(node, content)
        node.save(ctx)
        if token == "run-a" and round_ == 3:
            first = json.loads((tmp_path / "state" / "local_privacy.json").read_text())
    now = json.loads((tmp_path / "state" / "local_privacy.json").read_text())
    assert first["run"] == "run-a" and {u["rounds"] for u in first["users"]} == {3}  # q = 1: every round
    assert now["run"] == "run-b" and {u["rounds"] for u in now["users"]} == {1}
    assert now["privacy"] == "local"
    assert json.loads((tmp_path / "state" / "local_privacy-run-a.json").read_text()) == first


def test_central_dp_clips_every_users_update(setup):
    """With privacy=central, a one-user node's whole reply has L2 norm <= clip-norm."""
    cfg, ds, item_h, _, params = setup
    norms = {}
    for privacy, clip in (("none", 1.0), ("central", 0.005), ("central", 1e6)):
        c = cfg.replace(privacy=privacy, clip_norm=clip, adaptive_clip=privacy == "central")
        ctx = _context(c, 0, ds.n_users)  # partition 0 of n_users: exactly one user
        reply = train_reply(_node(ctx), _content(params, item_h, 1))
        arrays = from_record(reply.array_records["update"])
        norms[(privacy, clip)] = np.sqrt(sum(np.square(v.astype(np.float64)).sum() for v in arrays.values()))
        if privacy == "central":  # the adaptive-clipping statistic: 1[norm <= C] - 1/2 for the one user
            shifted = reply.metric_records["metrics"]["clip-shifted-count"]
            assert shifted == (0.5 if clip > 1 else -0.5)
            # without adaptive clipping the (unnoised) count is not sent at all
            plain = train_reply(_node(_context(c.replace(adaptive_clip=False), 0, ds.n_users)),
                                _content(params, item_h, 1))
            assert "clip-shifted-count" not in plain.metric_records["metrics"]
    assert norms[("none", 1.0)] > 0.005  # the clip below is active
    assert norms[("central", 0.005)] <= 0.005 * (1 + 1e-5)
    np.testing.assert_allclose(norms[("central", 1e6)], norms[("none", 1.0)], rtol=1e-5)


def test_training_members_holds_out_the_audit_share_per_user():
    from common.privacy.sampling import training_members

    keys = np.array([f"user-{i}" for i in range(5000)])
    members = training_members(keys, 0.2, seed=4)
    # binomial(5000, 0.8): sd = 28 users; 5 sd tolerance
    assert abs(members.sum() - 4000) < 5 * np.sqrt(5000 * 0.2 * 0.8)
    # a user's membership does not depend on which other users sit on the node
    np.testing.assert_array_equal(training_members(keys[::-1], 0.2, seed=4), members[::-1])
    assert training_members(keys, 0.0, seed=4).all()


def test_held_out_users_never_train_and_are_not_evaluated(setup):
    cfg, ds, item_h, _, params = setup
    c = cfg.replace(audit_fraction=0.4)
    ctx = _context(c, 0, 1)
    node = _node(ctx)
    members = node.members
    assert 0 < members.sum() < len(members)
    reply = train_reply(node, _content(params, item_h, 1))
    assert int(reply.metric_records["metrics"]["num-users"]) == members.sum()  # q = 1: every member, nobody else
    full = train_reply(_node(_context(cfg, 0, 1)), _content(params, item_h, 1))
    assert int(full.metric_records["metrics"]["num-users"]) == len(members)
    ev = evaluate_reply(node, _content(params, item_h, 2, first=False)).metric_records["metrics"]
    assert int(ev["num-users"]) == members.sum()


def test_local_dp_update_hides_which_items_a_user_touched(setup, monkeypatch):
    """privacy=local: a one-user node's reply moves EVERY item row (noise on the untouched ones, of the
    size DP-SGD gives them), not only the rows of the user's candidates."""
    import common.federation.updates as updates
    from common.privacy.noise import SecureGaussian

    monkeypatch.setattr(updates, "SecureGaussian", lambda: SecureGaussian(seed=21))  # to redraw them
    cfg, ds, item_h, _, params = setup
    c = cfg.replace(privacy="local", local_noise_multiplier=2.0, local_clip_norm=0.5, local_lr=0.1)
    node = _node(_context(c, 0, ds.n_users))  # exactly one user
    reply = train_reply(node, _content(params, item_h, 1))
    emb = from_record(reply.array_records["update"])["items/embedding"]
    moved = np.abs(emb).sum(axis=1) > 0
    assert moved.all()
    hist = node.store.history(0)
    n = len(hist)
    rng = SecureGaussian(seed=21)  # the node's own (secret) randomness: the negatives are its first draws
    touched = np.zeros(len(emb), bool)
    touched[np.unique(distinct_candidates(rng, hist, ds.n_items, c.negatives))] = True
    assert 0 < touched.sum() < len(emb) // 2
    std = np.sqrt(c.local_steps) * c.local_lr * 2.0 * 0.5 / c.local_denominator  # steps of lr z C / B N(0, 1)
    assert 0.85 * std < emb[~touched].std() < 1.15 * std
    plain = from_record(train_reply(_node(_context(cfg, 0, ds.n_users)), _content(params, item_h, 1))
                        .array_records["update"])["items/embedding"]
    assert (np.abs(plain).sum(axis=1) > 0).sum() <= n * (1 + cfg.negatives)


def test_pending_local_dp_row_noise_has_the_variance_of_each_users_steps():
    """Untouched rows carry every DP-SGD step's noise, touched rows the last step's; summed over
    (weighted) users, each row's noise variance is sum_u w_u^2 s_u(row)^2."""
    from common.federation.updates import UserUpdates
    from common.privacy.noise import SecureGaussian

    n_items, dim = 2000, 60
    rows = [np.arange(0, 500), np.arange(250, 750)]  # user 0 and user 1 touched these rows
    upd = UserUpdates(dense={k: np.zeros((2, 1), np.float32) for k in DENSE_NAMES},
                      row_user=np.concatenate([np.full(500, 0), np.full(500, 1)]), rows=np.concatenate(rows),
                      rows_emb=np.zeros((1000, dim), np.float32), rows_bias=np.zeros(1000, np.float32),
                      loss=np.zeros(2, np.float32), n_examples=np.array([3, 5]),
                      untouched_std=np.array([0.3, 0.5]), touched_std=np.array([0.1, 0.2]), noise=SecureGaussian(3))
    shapes = {"items/embedding": (n_items, dim), "items/bias": (n_items,)}
    w = np.array([1.0, 0.5])
    emb = upd.total(shapes, w)["items/embedding"]
    expected = {(0, 250): 0.1 ** 2 + (0.5 * 0.5) ** 2, (250, 500): 0.1 ** 2 + (0.5 * 0.2) ** 2,
                (500, 750): 0.3 ** 2 + (0.5 * 0.2) ** 2, (750, n_items): 0.3 ** 2 + (0.5 * 0.5) ** 2}
    for (a, b), var in expected.items():  # >= 15,000 coordinates each: std within 2.5 %
        assert abs(emb[a:b].std() / np.sqrt(var) - 1) < 0.025, (a, b)
    one = upd.user_update(1, shapes)["items/embedding"]
    assert abs(one[250:750].std() / 0.2 - 1) < 0.03 and abs(one[750:].std() / 0.5 - 1) < 0.03
    with pytest.raises(ValueError, match="pending noise"):
        upd.norms()


def test_local_dp_last_step_noise_reaches_the_touched_rows(setup):
    """One DP-SGD step (local-steps=1): all of a touched row's noise is the pending last-step noise, so two
    draws of the same user's update differ on its touched rows by N(0, 2 (lr z C / B)^2) per coordinate."""
    from common.privacy.noise import SecureGaussian

    cfg, ds, item_h, shape, params = setup
    c = cfg.replace(privacy="local", local_steps=1, local_noise_multiplier=2.0, local_clip_norm=0.5, local_lr=0.1)
    store = UserStore.from_prepared(ds, np.arange(ds.n_users))
    u = int(np.argmax(np.diff(store.offsets)))  # the user with the most rows
    theta = np.zeros((1, c.dim), np.float32)
    draws = [user_updates(params, theta, store, np.array([u]), item_h, c, round_=1, noise=SecureGaussian(seed),
                          negatives=SecureGaussian(7))[0] for seed in (1, 2)]  # same negatives, other noise
    touched = draws[0].rows
    diff = (draws[0].user_update(0, shape.shapes())["items/embedding"]
            - draws[1].user_update(0, shape.shapes())["items/embedding"])[touched]
    s = c.local_lr * 2.0 * 0.5 / c.local_denominator
    assert diff.size >= 100 and abs(diff.std() / (np.sqrt(2) * s) - 1) < 0.2  # without the pending draw: 0


def test_evaluating_a_subset_of_users_equals_their_rows_of_the_full_evaluation(setup, small_synthetic):
    from common.evaluation.evaluate import evaluate_users

    cfg, ds, item_h, _, params = setup
    store = UserStore.from_prepared(ds, np.arange(ds.n_users))
    theta = np.random.default_rng(0).normal(0, 0.3, (store.n_users, cfg.dim)).astype(np.float32)
    full = evaluate_users(params, theta, store, item_h, cfg, "test")
    some = np.array([3, 0, 17, 9])
    part = evaluate_users(params, theta, store, item_h, cfg, "test", some)
    for key in full:
        np.testing.assert_array_equal(part[key], full[key][some])


# -- what a reply may depend on (privacy claims) -------------------------------------------------------

def _one_user_node(cfg, store, item_h):
    from client.node import Node

    return Node(cfg=cfg, store=store, theta=np.zeros((store.n_users, cfg.dim), np.float32),
                ready=np.zeros(store.n_users, bool), taken=np.zeros(store.n_users, np.int64), item_h=item_h,
                schema=_SCHEMA["schema"])


def _other_history(store, n_items, seed):
    """The same user with other private values: twice the engagements, other items, contexts and times."""
    import dataclasses

    rng = np.random.default_rng(seed)
    n = 2 * (store.offsets[1] - store.offsets[0])
    return dataclasses.replace(
        store, offsets=np.array([0, n]), items=rng.integers(0, n_items, n), age_days=rng.uniform(0, 90, n).astype(
            np.float32), ctx=rng.permutation(np.resize(store.ctx, (n, store.ctx.shape[1]))),
        val_item=rng.integers(0, n_items, 1), test_item=rng.integers(0, n_items, 1))


@pytest.mark.parametrize("privacy", ["none", "central", "local"])
def test_replies_of_users_with_other_private_values_have_the_same_form(setup, privacy):
    """A reply's names, shapes, dtypes and metric keys never depend on a user's private values; under local DP
    not even the metric values do (no example count, no loss, no timing: each would leak beyond the guarantee)."""
    cfg, ds, item_h, _, params = setup
    c = cfg.replace(privacy=privacy)
    store = UserStore.from_prepared(ds, np.array([0]))
    replies = [train_reply(_one_user_node(c, s, item_h), _content(params, item_h, 1))
               for s in (store, _other_history(store, ds.n_items, 1))]
    forms = [({k: (v.shape, v.dtype) for k, v in from_record(r.array_records["update"]).items()},
              sorted(r.metric_records["metrics"].keys()), sorted(r.keys())) for r in replies]
    assert forms[0] == forms[1]
    metrics = [dict(r.metric_records["metrics"]) for r in replies]
    if privacy == "local":
        assert metrics[0] == metrics[1] == {"num-users": 1}
    else:
        assert metrics[0]["num-examples"] != metrics[1]["num-examples"]  # the two users do differ


@pytest.mark.parametrize("privacy", ["none", "central", "local"])
def test_a_reply_is_a_function_of_the_shared_parameters_the_node_data_and_its_randomness(setup, monkeypatch,
                                                                                        privacy):
    """Two fresh nodes with the same data, the same message and the same (test-seeded) noise reply with exactly
    the same bytes: nothing else (a clock, a counter, another run's state) reaches what is sent."""
    import client.node
    import common.federation.updates as updates
    from common.privacy.noise import SecureGaussian

    cfg, ds, item_h, _, params = setup
    c = cfg.replace(privacy=privacy, sample_rate=0.5)
    replies = []
    for _ in range(2):
        monkeypatch.setattr(updates, "SecureGaussian", lambda: SecureGaussian(seed=11))
        monkeypatch.setattr(client.node, "SecureGaussian", lambda: SecureGaussian(seed=12))
        replies.append(train_reply(_node(_context(c, 0, 2)), _content(params, item_h, 3, q=0.5)))
    a, b = (from_record(r.array_records["update"]) for r in replies)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert dict(replies[0].metric_records["metrics"]) == dict(replies[1].metric_records["metrics"])
    assert int(replies[0].metric_records["metrics"]["num-users"]) > 0


def test_local_dp_noise_does_not_reveal_a_users_number_of_examples(setup):
    """privacy=local: the noise on the item rows has std sqrt(steps) lr z C / B for every user, B public; under
    the old normalisation by the user's own n it was sqrt(steps) lr z C / n, which one reply revealed."""
    cfg, ds, item_h, _, params = setup
    c = cfg.replace(privacy="local", local_noise_multiplier=2.0, local_clip_norm=0.5, local_lr=0.1)
    store = UserStore.from_prepared(ds, np.arange(ds.n_users))
    sizes = np.diff(store.offsets)
    few, many = int(np.argmin(sizes)), int(np.argmax(sizes))
    assert sizes[many] >= 2 * sizes[few]
    expected = np.sqrt(c.local_steps) * c.local_lr * 2.0 * 0.5 / c.local_denominator
    # the pending noise of each user's rows, exactly
    theta = np.zeros((2, c.dim), np.float32)
    upd, _ = user_updates(params, theta, store, np.array([few, many]), item_h, c, round_=1)
    np.testing.assert_allclose(upd.untouched_std, [expected, expected], rtol=1e-12)
    np.testing.assert_allclose(upd.touched_std, [expected / np.sqrt(c.local_steps)] * 2, rtol=1e-12)
    # and in a real reply: with z large the signal is negligible, and both users' rows move by the same std
    big = c.replace(local_noise_multiplier=400.0)
    stds = []
    for u in (few, many):
        node = _node(_context(big, u, ds.n_users))  # partition u of n_users: exactly user u
        update = from_record(train_reply(node, _content(params, item_h, 1)).array_records["update"])
        stds.append(np.concatenate([update["items/embedding"].ravel(), update["items/bias"]]).std())
    for s in stds:  # 600 coordinates: the std's standard error is about 3 %, so +-20 % fails 1e-11 of the time
        assert 0.8 < s / (expected * 200.0) < 1.2  # (the old bug: 41 % or more apart)


def test_exact_local_dp_warms_theta_up_by_a_gaussian_release(setup, monkeypatch):
    """privacy=local (exact by default): a node warms theta_u up with `dp_init_theta` (clipped, noised), not with
    the non-private time-decayed mean; local-dp-theta=false keeps the non-private warm start."""
    import client.node
    from common.federation.updates import dp_init_theta, init_theta, item_representations
    from common.privacy.noise import SecureGaussian

    cfg, ds, item_h, _, params = setup
    c = cfg.replace(privacy="local", local_noise_multiplier=1.5, local_clip_norm=0.4)
    monkeypatch.setattr(client.node, "SecureGaussian", lambda: SecureGaussian(seed=3))
    thetas = {}
    for exact in (True, False):
        node = _node(_context(c.replace(local_dp_theta=exact), 0, 2))
        evaluate_reply(node, _content(params, item_h, 1))  # evaluation warms every member up
        thetas[exact] = node.theta.copy()
    users = np.arange(node.store.n_users)
    phi = item_representations(params, item_h)
    np.testing.assert_allclose(thetas[False], init_theta(node.store, users, phi, c.half_life_days), rtol=1e-6)
    np.testing.assert_allclose(thetas[True], dp_init_theta(node.store, users, phi, 0.4, 1.5 * 0.4, SecureGaussian(seed=3)),
                               rtol=1e-6)
    assert not np.allclose(thetas[True], thetas[False], atol=1e-3)


def test_local_dp_negatives_are_secret_and_not_shifted_by_other_examples(setup):
    """privacy=local: the negatives come from the node's secret randomness, not from the public seed (a seeded
    stream would give every later example other negatives when one example is added or removed, known to the
    server). Without local DP they stay seeded (reproducible simulations)."""
    from common.privacy.noise import SecureGaussian

    cfg, ds, item_h, _, params = setup
    store = UserStore.from_prepared(ds, np.array([0]))
    theta = np.zeros((1, cfg.dim), np.float32)
    local = cfg.replace(privacy="local")
    rows = [user_updates(params, theta, store, np.array([0]), item_h, local, 1, noise=SecureGaussian(s))[0].rows
            for s in (1, 2)]
    assert set(rows[0]) != set(rows[1])  # other randomness, other negatives, same user and round
    plain = [user_updates(params, theta, store, np.array([0]), item_h, cfg, 1)[0].rows for _ in range(2)]
    np.testing.assert_array_equal(plain[0], plain[1])
    # the secure source draws uniform integers in [low, high)
    draws = SecureGaussian().integers(3, 13, (20000,))
    assert draws.min() == 3 and draws.max() == 12 and abs(np.bincount(draws - 3).std() / 2000 - 0) < 0.1


@pytest.mark.parametrize("hybrid", [True, False])
def test_ials_updates_are_one_gradient_step_and_their_dense_part_adds_up(setup, hybrid):
    """loss=ials: each user's update is -local_lr times its gradient at its closed-form theta_u; the factored
    dense item part gives the same total and norms as the materialised tables, and touches every row. Without
    the item-id table (item-embedding=false) the update is the content tower's, biases and context weights."""
    cfg, ds, item_h, shape, params = setup
    c = cfg.replace(loss="ials", local_steps=1, l2=0.01, local_lr=0.1, item_embedding=hybrid)
    if not hybrid:
        shape = ModelShape(ds.n_items, cfg.text_dim, cfg.dim, ds.context_dim, False)
        params = init_shared(shape, seed=0)
    rng = np.random.default_rng(4)  # context weights away from their zero start: every part of the update is used
    params = {**params, "context/interaction": rng.normal(0.0, 0.3, params["context/interaction"].shape),
              "context/shift": rng.normal(0.0, 0.3, params["context/shift"].shape)}
    store = UserStore.from_prepared(ds, np.arange(ds.n_users))
    users = np.arange(ds.n_users)
    upd, theta = user_updates(params, np.zeros((ds.n_users, c.dim), np.float32), store, users, item_h, c, 1)
    np.testing.assert_allclose(theta, ials_solve(params, item_h, store.offsets, store.items, store.ctx,
                                                 c.unobserved_weight, c.l2), rtol=1e-6)
    grads = ials_user_gradients(params, item_h, theta, store.offsets, store.items, store.ctx, c.unobserved_weight,
                                c.l2, c.context_l2)
    shapes = shape.shapes()
    by_user = [upd.user_update(u, shapes) for u in range(upd.n_users)]
    assert sorted(by_user[0]) == sorted(shapes)
    for u in (0, 5):
        for k in DENSE_NAMES:
            np.testing.assert_allclose(by_user[u][k], -c.local_lr * grads["dense"][k][u], rtol=1e-4, atol=1e-7)
        if not hybrid:
            assert grads["coef"] is None and upd.item_coef is None
            continue
        emb = np.outer(grads["coef"][u], grads["dir"][u]) + grads["basis"] @ grads["spread"][u]
        assert np.abs(grads["basis"] @ grads["spread"][u]).max() > 1e-3  # the context spread's part is there
        mine = grads["row_user"] == u
        emb[grads["rows"][mine]] += grads["rows_emb"][mine]
        np.testing.assert_allclose(by_user[u]["items/embedding"], -c.local_lr * emb, rtol=1e-4, atol=1e-7)
        assert (np.abs(by_user[u]["items/embedding"]).sum(1) > 0).all()  # every row moves, not just the touched
    total = upd.total(shapes)
    for k in shapes:
        np.testing.assert_allclose(total[k], sum(d[k] for d in by_user), rtol=1e-4, atol=1e-6)
    norms = np.array([np.sqrt(sum(np.square(v.astype(np.float64)).sum() for v in b.values())) for b in by_user])
    np.testing.assert_allclose(upd.norms(), norms, rtol=1e-4)  # what central DP's per-user clip is computed from
