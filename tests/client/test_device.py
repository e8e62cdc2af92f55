"""Device-side recommend / explain / refresh and the TFLite scorer, against the model's own scorer
(`common.model.formula.score_items`) and hand-derived references."""

from __future__ import annotations

import json

import numpy as np
import pytest

from client.device import format_recommendations, recommend, refresh_candidates, refresh_theta
from client.tflite import OUTPUTS, TFLiteScorer, export_scorer
from common.federation.updates import item_representations
from common.model.scoring import DENSE_NAMES, ials_solve, negative_shift, warm_start_theta
from common.model.formula import GroupParams, ModelShape, TrainBatch, item_side, score_items
from common.model.training import StepRule, local_train
from common.model.scoring import item_side_np

N_ITEMS, TEXT_DIM, DIM = 60, 12, 6


def random_params(context_dim: int, hybrid: bool, seed: int = 0, n_items: int = N_ITEMS) -> dict[str, np.ndarray]:
    """Every shared parameter random (none left at its zero init, so every part of the score is exercised)."""
    rng = np.random.default_rng(seed)
    shape = ModelShape(n_items=n_items, text_dim=TEXT_DIM, dim=DIM, context_dim=context_dim, item_embedding=hybrid)
    return {k: rng.normal(0.0, 0.5, s).astype(np.float32) for k, s in shape.shapes().items()}


def reference_scores(params, theta, ctx, item_h) -> np.ndarray:
    """score_items for one query: [n_items]."""
    dense = {k: params[k] for k in DENSE_NAMES}
    return score_items(dense, np.asarray(theta, np.float32)[None], np.asarray(ctx, np.float32)[None], item_h,
                       params.get("items/embedding"), params.get("items/bias"))[0]


@pytest.fixture()
def query():
    rng = np.random.default_rng(1)
    item_h = rng.normal(size=(N_ITEMS, TEXT_DIM)).astype(np.float32)
    theta = rng.normal(size=DIM).astype(np.float32)
    history = rng.choice(N_ITEMS, size=8, replace=False)
    return item_h, theta, history


@pytest.mark.parametrize("hybrid", [False, True])
@pytest.mark.parametrize("context_dim", [0, 3])
def test_parts_add_up_to_the_models_score(query, hybrid, context_dim):
    item_h, theta, history = query
    params = random_params(context_dim, hybrid)
    ctx = np.random.default_rng(2).normal(size=context_dim).astype(np.float32)
    ref = reference_scores(params, theta, ctx, item_h)
    recs = recommend(params, item_h, theta, ctx, history, k=10)
    assert len(recs) == 10
    for r in recs:
        parts = r.user + r.context_interaction + r.context_shift + r.item_bias
        assert parts == pytest.approx(r.score, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(r.score, ref[r.item], rtol=1e-5, atol=1e-5)
    # the shift is the same for every item; without context the interaction is 0 and the shift is b_0
    assert len({r.context_shift for r in recs}) == 1
    if context_dim == 0:
        assert all(r.context_interaction == 0.0 for r in recs)
        assert recs[0].context_shift == pytest.approx(float(params["global-bias"][0]))


@pytest.mark.parametrize("hybrid", [False, True])
def test_the_numpy_item_side_is_the_models(query, hybrid):
    """common.model.scoring.item_side_np (what a device scores with, no TensorFlow) against common.model.formula.item_side."""
    item_h, _, _ = query
    params = random_params(3, hybrid)
    phi, bias = item_side_np(params, item_h)
    g = {k: params[k][None] for k in DENSE_NAMES}
    ref_phi, ref_bias = item_side(g, item_h[None], params["items/embedding"][None] if hybrid else None,
                                  params["items/bias"][None] if hybrid else None)
    assert phi.dtype == np.float32 and bias.dtype == np.float32
    np.testing.assert_allclose(phi, ref_phi[0].numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(bias, ref_bias[0].numpy(), rtol=1e-6, atol=1e-6)


def test_top_k_excludes_history_and_follows_the_scores(query):
    item_h, theta, _ = query
    params = random_params(3, True)
    ctx = np.array([0.5, -1.0, 2.0], np.float32)
    ref = reference_scores(params, theta, ctx, item_h)
    history = np.argsort(-ref)[[0, 2, 4, 4, 30]]  # three of the five best items (one twice) and a middling one
    recs = recommend(params, item_h, theta, ctx, history, k=10)
    masked = ref.astype(np.float64).copy()
    masked[history] = -np.inf
    assert [r.item for r in recs] == np.argsort(-masked)[:10].tolist()
    assert not set(r.item for r in recs) & set(history.tolist())
    assert [r.rank for r in recs] == list(range(1, 11))
    kept = recommend(params, item_h, theta, ctx, history, k=10, exclude_history=False)
    assert [r.item for r in kept] == np.argsort(-ref)[:10].tolist()
    # fewer items left than k: every remaining item, once
    few = recommend(params, item_h, theta, ctx, np.arange(N_ITEMS - 3), k=10)
    assert sorted(r.item for r in few) == [N_ITEMS - 3, N_ITEMS - 2, N_ITEMS - 1]


def test_ties_go_to_the_lower_item_index():
    params = random_params(2, False)
    item_h = np.tile(np.random.default_rng(3).normal(size=TEXT_DIM).astype(np.float32), (N_ITEMS, 1))  # all equal
    recs = recommend(params, item_h, np.ones(DIM, np.float32), np.ones(2, np.float32), np.array([1, 3]), k=4)
    assert [r.item for r in recs] == [0, 2, 4, 5]
    assert [r.rank_without_context for r in recs] == [1, 2, 3, 4]


def test_similar_items_come_from_history_by_cosine(query):
    item_h, theta, history = query
    params = random_params(3, False)
    phi = item_representations(params, item_h).astype(np.float64)
    unit = phi / np.linalg.norm(phi, axis=1, keepdims=True)
    history = np.concatenate([history, history[:2]])  # a repeated engagement is one past item
    for exclude in (True, False):
        recs = recommend(params, item_h, theta, np.ones(3, np.float32), history, k=10, exclude_history=exclude)
        for r in recs:
            past = np.setdiff1d(history, [r.item])
            cos = unit[past] @ unit[r.item]
            want = past[np.argsort(-cos)[:3]]
            assert [s.item for s in r.similar_history] == want.tolist()
            np.testing.assert_allclose([s.similarity for s in r.similar_history], np.sort(cos)[::-1][:3], atol=1e-6)
    assert recommend(params, item_h, theta, np.ones(3, np.float32), np.array([], np.int64), k=3)[0].similar_history == ()


def test_rank_without_context_is_the_rank_when_x_is_zero(query):
    item_h, theta, history = query
    params = random_params(3, True)
    params["context/interaction"] *= 4.0  # a context that reorders the items
    ctx = np.array([1.0, -0.5, 0.8], np.float32)
    recs = recommend(params, item_h, theta, ctx, history, k=10)
    s0 = reference_scores(params, theta, np.zeros(3, np.float32), item_h).astype(np.float64)
    s0[history] = -np.inf
    order0 = np.argsort(-s0).tolist()
    assert [r.rank_without_context for r in recs] == [order0.index(r.item) + 1 for r in recs]
    assert any(r.rank_without_context != r.rank for r in recs)


def test_recommendation_is_json_and_a_table(query):
    item_h, theta, history = query
    recs = recommend(random_params(3, False), item_h, theta, np.zeros(3, np.float32), history, k=4)
    back = json.loads(json.dumps([r.to_dict() for r in recs]))
    assert back[0]["item"] == recs[0].item and back[0]["similar_history"][0]["item"] == recs[0].similar_history[0].item
    table = format_recommendations(recs, titles=[f"item {i}" for i in range(N_ITEMS)])
    lines = table.splitlines()
    assert len(lines) == 2 + len(recs) and lines[0].startswith("rank") and f"item {recs[0].item}" in lines[2]


@pytest.mark.parametrize("hybrid", [False, True])
@pytest.mark.parametrize("context_dim", [0, 4])
def test_tflite_scorer_equals_the_models_scores(tmp_path, hybrid, context_dim):
    rng = np.random.default_rng(5)
    item_h = rng.normal(size=(N_ITEMS, TEXT_DIM)).astype(np.float32)
    params = random_params(context_dim, hybrid, seed=6)
    scorer = TFLiteScorer(export_scorer(params, item_h, tmp_path / "scorer.tflite", k=7))
    for ctx in (np.zeros(context_dim, np.float32), rng.normal(size=context_dim).astype(np.float32)):
        theta = rng.normal(size=DIM).astype(np.float32)
        out = scorer(theta, ctx)
        ref = reference_scores(params, theta, ctx, item_h)
        np.testing.assert_allclose(out["scores"], ref, rtol=1e-5, atol=1e-5)
        assert out["top_indices"].tolist() == np.argsort(-ref)[:7].tolist()
        np.testing.assert_allclose(out["top_values"], ref[out["top_indices"]], rtol=1e-5, atol=1e-5)


def _converted_by_tensorflow(params, item_h, path, k):
    """The same scorer written by TensorFlow's own converter from a tf.function (how client/tflite.py made it
    before it wrote the flatbuffer itself): an independent reference for the file's answers."""
    import tensorflow as tf

    tables = item_side_np(params, item_h)
    phi, bias = (tf.constant(t, tf.float32) for t in tables)
    interaction = tf.constant(params["context/interaction"], tf.float32)
    shift, b0 = tf.constant(params["context/shift"], tf.float32), tf.constant(params["global-bias"][0], tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([phi.shape[1]], tf.float32, name="theta"),
                                  tf.TensorSpec([shift.shape[0]], tf.float32, name="ctx")])
    def score(theta, ctx):
        q = theta + tf.linalg.matvec(interaction, ctx, transpose_a=True)
        scores = tf.linalg.matvec(phi, q) + bias + (tf.tensordot(shift, ctx, axes=1) + b0)
        values, indices = tf.math.top_k(scores, k=k)
        return {"scores": scores, "top_values": values, "top_indices": tf.cast(indices, tf.int32)}

    module = tf.Module()
    module.score = score
    converter = tf.lite.TFLiteConverter.from_concrete_functions([score.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    path.write_bytes(converter.convert())
    return path


@pytest.mark.parametrize("hybrid", [False, True])
@pytest.mark.parametrize("context_dim", [0, 4])
def test_tflite_file_answers_as_tensorflows_converter_would(tmp_path, hybrid, context_dim):
    """The flatbuffer written without TensorFlow gives bit for bit the answers of the file TensorFlow's converter
    makes from the same function (same ops, same constant folding), with the same signature; k = 1 and
    k = n_items (the whole catalogue ranked) included."""
    rng = np.random.default_rng(11)
    item_h = rng.normal(size=(N_ITEMS, TEXT_DIM)).astype(np.float32)
    params = random_params(context_dim, hybrid, seed=12)
    for k in (1, 7, N_ITEMS):
        ours = TFLiteScorer(export_scorer(params, item_h, tmp_path / f"ours{k}.tflite", k=k))
        theirs = TFLiteScorer(_converted_by_tensorflow(params, item_h, tmp_path / f"tf{k}.tflite", k))
        assert ours.interpreter.get_signature_list() == theirs.interpreter.get_signature_list()
        for _ in range(4):  # several users and contexts
            theta = rng.normal(size=DIM).astype(np.float32)
            ctx = rng.normal(size=context_dim).astype(np.float32)
            a, b = ours(theta, ctx), theirs(theta, ctx)
            assert sorted(a) == sorted(b) == sorted(OUTPUTS)
            for name in OUTPUTS:
                assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
                np.testing.assert_array_equal(a[name], b[name])


def test_tflite_constants_are_aligned_in_the_file(tmp_path):
    """Every constant's data starts on a 16-byte boundary of the file (the interpreter maps it in place)."""
    import tflite

    blob = export_scorer(random_params(3, True), np.ones((N_ITEMS, TEXT_DIM), np.float32), tmp_path / "s.tflite",
                         k=3).read_bytes()
    model = tflite.Model.GetRootAsModel(blob, 0)
    sizes = [model.Buffers(i).DataLength() for i in range(model.BuffersLength())]
    assert sizes[0] == 0 and sum(s > 0 for s in sizes) >= 5  # the empty sentinel, then phi, b, W_int, ...
    for i in range(1, model.BuffersLength()):
        buf = model.Buffers(i)
        if buf.DataLength():
            start = buf._tab.Vector(buf._tab.Offset(4))
            assert start % 16 == 0, (i, start)


def test_tflite_rejects_k_beyond_the_catalogue(tmp_path):
    with pytest.raises(ValueError, match="k: must be in"):
        export_scorer(random_params(2, False), np.zeros((N_ITEMS, TEXT_DIM), np.float32), tmp_path / "s", k=N_ITEMS + 1)


@pytest.mark.parametrize("loss", ["bce", "softmax"])
def test_refresh_theta_one_step_is_the_weighted_gradient_step(loss):
    """One SGD step: theta' = theta - lr * g, with (w_i = 2^-(age_i - min age)/half_life, p = candidate probs)
    bce:     g = sum_i w_i sum_c (sigmoid(s_ic) - y_ic) phi(c) / sum_i w_i + 2 l2 theta
    softmax: g = sum_i w_i (sum_c softmax(s_i')_c phi(c) - phi(c_i)) / sum_i w_i + 2 l2 theta, where s_i' adds
             log((N - 1) / k) to the k negatives' scores (each negative stands for (N - 1) / k items)."""
    rng = np.random.default_rng(7)
    item_h = rng.normal(size=(N_ITEMS, TEXT_DIM)).astype(np.float32)
    params = random_params(3, True, seed=8)
    theta = rng.normal(size=DIM).astype(np.float32)
    items = rng.integers(0, N_ITEMS, 9)
    ctx = rng.normal(size=(9, 3)).astype(np.float32)
    age = rng.uniform(3.0, 90.0, 9)
    lr, l2, half_life, seed, k = 0.3, 0.01, 20.0, 11, 5
    new = refresh_theta(params, item_h, theta, items, ctx, age, steps=1, lr=lr, negatives=k, seed=seed, l2=l2,
                        half_life_days=half_life, loss=loss)
    cand = refresh_candidates(items, N_ITEMS, k, seed)
    dense = {n: params[n] for n in DENSE_NAMES}
    s_all = score_items(dense, np.repeat(theta[None], 9, 0), ctx, item_h, params["items/embedding"],
                        params["items/bias"]).astype(np.float64)
    s = np.take_along_axis(s_all, cand, axis=1)  # [9, 1 + k]
    phi = item_representations(params, item_h).astype(np.float64)[cand]  # [9, 1 + k, dim]
    w = 2.0 ** (-(age - age.min()) / half_life)
    if loss == "bce":
        y = np.zeros_like(s)
        y[:, 0] = 1.0
        per_ex = np.einsum("ic,icd->id", 1.0 / (1.0 + np.exp(-s)) - y, phi)
    else:
        s = s + np.r_[0.0, np.full(k, np.log((N_ITEMS - 1) / k))]
        p = np.exp(s - s.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        per_ex = np.einsum("ic,icd->id", p, phi) - phi[:, 0]
    g = w @ per_ex / w.sum() + 2.0 * l2 * theta
    np.testing.assert_allclose(new, theta - lr * g, rtol=1e-4, atol=1e-5)
    # nothing to learn from: theta unchanged
    empty = np.zeros(0, np.int64)
    np.testing.assert_array_equal(refresh_theta(params, item_h, theta, empty, np.zeros((0, 3)), empty, steps=3, lr=lr,
                                                negatives=k, seed=seed, l2=l2, half_life_days=half_life, loss=loss),
                                  theta)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_refresh_theta_is_local_train_with_the_shared_parameters_frozen(optimizer):
    """Same objective and steps as common.model.training.local_train with lr=0 for the shared parameters."""
    rng = np.random.default_rng(9)
    item_h = rng.normal(size=(N_ITEMS, TEXT_DIM)).astype(np.float32)
    params = random_params(3, True, seed=10)
    theta = rng.normal(size=DIM).astype(np.float32)
    items, ctx, age = rng.integers(0, N_ITEMS, 7), rng.normal(size=(7, 3)).astype(np.float32), np.arange(7.0)
    kw = dict(steps=2, lr=0.2, negatives=4, seed=1, l2=0.01, half_life_days=5.0, loss="softmax", optimizer=optimizer)
    new = refresh_theta(params, item_h, theta, items, ctx, age, **kw)
    cand = refresh_candidates(items, N_ITEMS, 4, 1)
    rows, local = np.unique(cand, return_inverse=True)
    dense = {n: params[n][None] for n in DENSE_NAMES}
    start = GroupParams(dense, theta[None], params["items/embedding"][rows][None], params["items/bias"][rows][None])
    batch = TrainBatch(rows_h=item_h[rows][None], ctx=ctx[None], cand=local.reshape(cand.shape)[None],
                       ex_mask=(2.0 ** (-age / 5.0))[None].astype(np.float32),
                       row_mask=np.ones((1, len(rows)), np.float32))
    out, _ = local_train(start, batch, StepRule(steps=2, lr=0.0, theta_lr=0.2, l2=0.01, loss="softmax",
                                                neg_shift=negative_shift(N_ITEMS, 4)), optimizer=optimizer)
    assert all(np.array_equal(out.dense[n][0], params[n]) for n in DENSE_NAMES)  # lr=0 froze them
    np.testing.assert_allclose(new, out.theta[0], rtol=1e-5, atol=2e-5)  # float32 rounding of Adam's bias terms
    assert not np.allclose(new, theta)


def test_feedback_moves_the_top_10_towards_the_new_topic():
    """Items in 5 topics (h(c) = 2 e_topic + noise, phi keeps the topics apart); the user's history is 20 items of
    topic A, 20 to 120 days old. After six fresh engagements with topic B and a refresh of theta_u (shared
    parameters fixed), B's share of the top 10 rises from 0; a refresh on the old history alone leaves it at 0."""
    rng = np.random.default_rng(13)
    n_items, topics, A, B = 200, 5, 0, 3
    topic = np.arange(n_items) % topics
    item_h = (2.0 * np.eye(topics, TEXT_DIM)[topic] + 0.3 * rng.normal(size=(n_items, TEXT_DIM))).astype(np.float32)
    params = random_params(2, False, n_items=n_items, seed=13)
    params["tower/kernel"] = np.eye(TEXT_DIM, DIM, dtype=np.float32)
    for name in ("tower/bias", "text-bias/kernel", "context/interaction"):
        params[name] *= 0.2
    old = rng.choice(np.flatnonzero(topic == A), 20, replace=False)
    old_age = rng.uniform(20.0, 120.0, 20)
    theta = warm_start_theta(item_representations(params, item_h)[old], old_age - old_age.min(), 30.0)
    new = rng.choice(np.flatnonzero(topic == B), 6, replace=False)
    items, ages = np.concatenate([old, new]), np.concatenate([old_age, rng.uniform(0.0, 2.0, 6)])
    ctxs = rng.normal(size=(26, 2)).astype(np.float32)
    ctx_now = rng.normal(size=2).astype(np.float32)

    def share_b(theta_u: np.ndarray) -> float:
        return float(np.mean([topic[r.item] == B for r in recommend(params, item_h, theta_u, ctx_now, items, k=10)]))

    settings = dict(steps=20, lr=0.1, negatives=10, seed=3, l2=1e-3, half_life_days=30.0, loss="softmax",
                    optimizer="adam")
    before = share_b(theta)
    after = share_b(refresh_theta(params, item_h, theta, items, ctxs, ages, **settings))
    control = share_b(refresh_theta(params, item_h, theta, old, ctxs[:20], old_age, **settings))
    assert before == 0.0
    assert after >= 0.3
    assert control == 0.0


def test_refresh_theta_under_ials_is_the_closed_form_a_node_computes():
    """loss=ials: the device's theta_u is the one a node solves in training (ials_solve), from the whole history."""
    rng = np.random.default_rng(12)
    item_h = rng.normal(size=(N_ITEMS, TEXT_DIM)).astype(np.float32)
    params = random_params(3, True, seed=13)
    items, ctx, age = rng.integers(0, N_ITEMS, 6), rng.normal(size=(6, 3)).astype(np.float32), np.arange(6.0)
    kw = dict(steps=1, lr=0.2, negatives=4, seed=1, l2=0.01, half_life_days=5.0, loss="ials", unobserved_weight=0.3)
    new = refresh_theta(params, item_h, np.zeros(DIM, np.float32), items, ctx, age, **kw)
    np.testing.assert_allclose(new, ials_solve(params, item_h, np.array([0, 6]), items, ctx, 0.3, 0.01)[0], rtol=1e-6)
    # every engagement counts (no time weights, no steps): the order of the history does not matter
    perm = rng.permutation(6)
    np.testing.assert_allclose(refresh_theta(params, item_h, new, items[perm], ctx[perm], age[perm], **kw), new,
                               rtol=1e-5)
