"""The scoring formula, warm start and per-user local training."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from common.model.scoring import DENSE_NAMES, ials_solve, ials_theta, segment_sum, warm_start_theta
from common.model.formula import GroupParams, ModelShape, TrainBatch, group_logits, group_loss, init_shared, score_items
from common.model.training import StepRule, local_train
from common.model.ials import ials_loss, ials_user_gradients


def _dense(text_dim=2, dim=2, ctx=1):
    return {
        "tower/kernel": np.eye(text_dim, dim, dtype=np.float32),
        "tower/bias": np.zeros(dim, np.float32),
        "text-bias/kernel": np.zeros(text_dim, np.float32),
        "global-bias": np.zeros(1, np.float32),
        "context/shift": np.zeros(ctx, np.float32),
        "context/interaction": np.zeros((ctx, dim), np.float32),
    }


def test_score_by_hand():
    # h(c1) = [1, 0], h(c2) = [0, 1]; tower = identity, so phi = h (+ item embedding).
    dense = _dense()
    dense["tower/bias"] = np.array([0.5, 0.0], np.float32)      # phi(c1) = [1.5, 0], phi(c2) = [0.5, 1]
    dense["text-bias/kernel"] = np.array([0.0, 0.25], np.float32)  # b(c2) = 0.25
    dense["global-bias"] = np.array([-1.0], np.float32)
    dense["context/shift"] = np.array([2.0], np.float32)
    dense["context/interaction"] = np.array([[0.0, 3.0]], np.float32)  # W_int^T x = [0, 3x]
    item_h = np.array([[1, 0], [0, 1]], np.float32)
    theta = np.array([[1.0, 0.0]], np.float32)
    # x = 0: q = [1, 0]: s1 = 1.5 - 1 = 0.5; s2 = 0.5 + 0.25 - 1 = -0.25
    # x = 1: q = [1, 3]: s1 = 1.5 + 2 - 1 = 2.5; s2 = 0.5 + 3 + 0.25 + 2 - 1 = 4.75
    s = score_items(dense, np.repeat(theta, 2, 0), np.array([[0.0], [1.0]], np.float32), item_h, None, None)
    np.testing.assert_allclose(s, [[0.5, -0.25], [2.5, 4.75]], rtol=1e-6)
    # the context flips the ranking of the two items
    assert s[0].argmax() == 0 and s[1].argmax() == 1
    # the hybrid item embedding and bias add to phi(c) and b(c)
    emb = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)  # phi(c2) = [1.5, 1]
    bias = np.array([0.0, 1.0], np.float32)
    s = score_items(dense, theta, np.zeros((1, 1), np.float32), item_h, emb, bias)
    np.testing.assert_allclose(s, [[0.5, 1.5 + 0.25 + 1.0 - 1.0]], rtol=1e-6)


@pytest.mark.parametrize("hybrid", [False, True])
def test_candidate_logits_equal_the_catalogue_scores_at_those_candidates(hybrid):
    # group_logits applies the tower to the query (h . (W q + w_b) + q . b_W); score_items applies it to every
    # item (q . phi(c) + b(c)). Each user's own parameter copy and item rows must give the same numbers.
    rng = np.random.default_rng(3)
    G, L, C, R, text_dim, dim, ctx_dim = 3, 4, 5, 7, 6, 3, 2
    shape = ModelShape(R, text_dim, dim, ctx_dim, hybrid)
    copies = [{k: rng.normal(0, 1, v).astype(np.float32) for k, v in shape.shapes().items()} for _ in range(G)]
    rows_h = rng.normal(0, 1, (G, R, text_dim)).astype(np.float32)
    theta = rng.normal(0, 1, (G, L, dim)).astype(np.float32)
    ctx = rng.normal(0, 1, (G, L, ctx_dim)).astype(np.float32)
    cand = rng.integers(0, R, (G, L, C)).astype(np.int32)
    dense_names = [k for k in shape.shapes() if not k.startswith("items/")]
    stacked = {k: tf.constant(np.stack([c[k] for c in copies])) for k in dense_names}
    emb = tf.constant(np.stack([c["items/embedding"] for c in copies])) if hybrid else None
    bias = tf.constant(np.stack([c["items/bias"] for c in copies])) if hybrid else None
    got = group_logits(stacked, tf.constant(theta), tf.constant(ctx), tf.constant(rows_h), emb, bias,
                       tf.constant(cand)).numpy()
    for g, c in enumerate(copies):
        every = score_items({k: c[k] for k in dense_names}, theta[g], ctx[g], rows_h[g],
                            c["items/embedding"] if hybrid else None, c["items/bias"] if hybrid else None)
        np.testing.assert_allclose(got[g], np.take_along_axis(every, cand[g], axis=1), rtol=1e-4, atol=1e-4)


def test_warm_start_by_hand():
    phi = np.array([[1.0, 0.0], [0.0, 1.0]])
    # ages 0 and one half-life: weights 1 and 1/2 -> r = [2/3, 1/3]
    np.testing.assert_allclose(warm_start_theta(phi, np.array([0.0, 30.0]), 30.0), [2 / 3, 1 / 3], rtol=1e-6)
    assert warm_start_theta(np.zeros((0, 2)), np.zeros(0), 30.0).tolist() == [0.0, 0.0]


def _user_batch(rng, G, L, R, text_dim, dim, ctx_dim, C=3):
    sizes = rng.integers(1, L + 1, G)
    ex_mask = (np.arange(L)[None] < sizes[:, None]).astype(np.float32)
    rows = rng.integers(2, R + 1, G)
    row_mask = (np.arange(R)[None] < rows[:, None]).astype(np.float32)
    cand = np.stack([rng.integers(0, r, (L, C)) for r in rows]).astype(np.int32)
    return dict(
        theta=rng.normal(0, 0.1, (G, dim)).astype(np.float32),
        rows_emb=rng.normal(0, 0.1, (G, R, dim)).astype(np.float32),
        rows_bias=np.zeros((G, R), np.float32),
        rows_h=rng.normal(0, 1, (G, R, text_dim)).astype(np.float32),
        row_mask=row_mask, ctx=rng.normal(0, 1, (G, L, ctx_dim)).astype(np.float32),
        cand=cand, ex_mask=ex_mask,
    )


def _named(dense, b, s=slice(None)):
    """(GroupParams, TrainBatch) of `_user_batch`'s users s."""
    return (GroupParams({k: v[s] for k, v in dense.items()}, b["theta"][s], b["rows_emb"][s], b["rows_bias"][s]),
            TrainBatch(rows_h=b["rows_h"][s], ctx=b["ctx"][s], cand=b["cand"][s], ex_mask=b["ex_mask"][s],
                       row_mask=b["row_mask"][s]))


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_group_training_equals_one_user_at_a_time(optimizer):
    """Training G users together gives each user exactly what training it alone gives."""
    rng = np.random.default_rng(0)
    G, L, R, text_dim, dim, ctx_dim = 4, 5, 9, 6, 3, 2
    shared = init_shared(ModelShape(n_items=1, text_dim=text_dim, dim=dim, context_dim=ctx_dim,
                                    item_embedding=False), seed=1)
    dense = {k: np.broadcast_to(shared[k], (G,) + shared[k].shape) for k in DENSE_NAMES}
    b = _user_batch(rng, G, L, R, text_dim, dim, ctx_dim)
    rule = StepRule(steps=3, lr=0.05, theta_lr=0.2, l2=1e-3)
    together, _ = local_train(*_named(dense, b), rule, optimizer=optimizer)
    for g in range(G):
        alone, _ = local_train(*_named(dense, b, slice(g, g + 1)), rule, optimizer=optimizer)
        for k in DENSE_NAMES:
            np.testing.assert_allclose(together.dense[k][g], alone.dense[k][0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(together.theta[g], alone.theta[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(together.rows_emb[g], alone.rows_emb[0], rtol=1e-5, atol=1e-6)


def test_local_training_lowers_each_users_loss():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    G, L, R, text_dim, dim, ctx_dim = 3, 6, 10, 5, 4, 2
    shared = init_shared(ModelShape(1, text_dim, dim, ctx_dim, False), seed=2)
    dense = {k: np.broadcast_to(shared[k], (G,) + shared[k].shape).copy() for k in DENSE_NAMES}
    b = _user_batch(rng, G, L, R, text_dim, dim, ctx_dim)

    start, batch = _named(dense, b)
    batch_t = TrainBatch(**{k: tf.constant(getattr(batch, k))
                            for k in ("rows_h", "ctx", "cand", "ex_mask", "row_mask")})

    def loss(p):
        t = lambda a: tf.constant(a)  # noqa: E731
        return group_loss(GroupParams({k: t(v) for k, v in p.dense.items()}, t(p.theta), t(p.rows_emb),
                                      t(p.rows_bias)), batch_t, 1e-4).numpy()

    before = loss(start)
    out, reported = local_train(start, batch, StepRule(steps=5, lr=0.02, theta_lr=0.2, l2=1e-4))
    after = loss(out)
    np.testing.assert_allclose(reported, after, rtol=1e-5)  # the loss local_train reports is the final one
    assert (after < before).all(), (before, after)


def test_candidate_losses_by_hand():
    import tensorflow as tf

    from common.model.formula import candidate_loss

    logits = tf.constant([[2.0, 0.0], [0.0, 0.0]])
    # softmax: log(e^2 + e^0) - 2 = log(1 + e^-2)
    np.testing.assert_allclose(candidate_loss(logits, "softmax").numpy(),
                               [np.log1p(np.exp(-2.0)), np.log(2.0)], rtol=1e-6)
    # bce: -log sigmoid(s_0) - sum_c log(1 - sigmoid(s_c))
    np.testing.assert_allclose(candidate_loss(logits, "bce").numpy(),
                               [np.log1p(np.exp(-2.0)) + np.log(2.0), 2 * np.log(2.0)], rtol=1e-6)


def test_local_gradient_clipping_bounds_each_users_step():
    rng = np.random.default_rng(5)
    G, L, R, text_dim, dim, ctx_dim = 3, 4, 8, 5, 3, 2
    shared = init_shared(ModelShape(1, text_dim, dim, ctx_dim, False), seed=0)
    dense = {k: np.broadcast_to(shared[k], (G,) + shared[k].shape) for k in DENSE_NAMES}
    b = _user_batch(rng, G, L, R, text_dim, dim, ctx_dim)
    b["theta"] *= 50  # large logits, large gradients
    lr, clip = 0.5, 0.01
    out, _ = local_train(*_named(dense, b), StepRule(steps=1, lr=lr, theta_lr=lr, l2=0.0), clip=clip)
    d, th, e, bias = out.dense, out.theta, out.rows_emb, out.rows_bias
    sq = sum(np.square(d[k] - dense[k]).reshape(G, -1).sum(1) for k in DENSE_NAMES)
    sq += np.square(th - b["theta"]).sum(1) + (np.square(e - b["rows_emb"]).sum(-1)).sum(1)
    sq += np.square(bias - b["rows_bias"]).sum(1)
    assert (np.sqrt(sq) <= lr * clip * (1 + 1e-4)).all()
    assert (np.sqrt(sq) > 0.5 * lr * clip).all()  # the gradients were large: the clip was active


def test_context_l2_adds_its_penalty_and_keeps_noise_context_weights_near_zero():
    """context_l2 adds c * (|theta_ctx|^2 + |W_int|_F^2) to each user's loss, and with a context that carries no
    signal (random x, labels independent of it) training leaves W_int much smaller than without the penalty."""
    import tensorflow as tf

    rng = np.random.default_rng(4)
    G, L, R, text_dim, dim, ctx_dim = 3, 12, 10, 4, 3, 2
    b = _user_batch(rng, G, L, R, text_dim, dim, ctx_dim, C=5)
    dense = init_shared(ModelShape(1, text_dim, dim, ctx_dim, False), seed=2)
    dense["context/interaction"] = rng.normal(0, 0.3, (ctx_dim, dim)).astype(np.float32)
    dense["context/shift"] = rng.normal(0, 0.3, ctx_dim).astype(np.float32)
    dense_g = {k: tf.constant(np.broadcast_to(v, (G,) + v.shape)) for k, v in dense.items()}
    t = {k: tf.constant(v) for k, v in b.items()}
    params_g = GroupParams(dense_g, t["theta"], t["rows_emb"], t["rows_bias"])
    batch_g = TrainBatch(rows_h=t["rows_h"], ctx=t["ctx"], cand=t["cand"], ex_mask=t["ex_mask"], row_mask=t["row_mask"])
    plain = group_loss(params_g, batch_g, 1e-3, "softmax").numpy()
    with_penalty = group_loss(params_g, batch_g, 1e-3, "softmax", context_l2=0.7).numpy()
    penalty = np.sum(dense["context/interaction"] ** 2) + np.sum(dense["context/shift"] ** 2)
    np.testing.assert_allclose(with_penalty - plain, 0.7 * penalty, rtol=1e-5)

    start = {k: np.broadcast_to(v, (G,) + v.shape).copy() for k, v in dense.items()}
    start["context/interaction"][:] = 0.0

    def trained_norm(c):
        out, _ = local_train(*_named(start, b), StepRule(steps=60, lr=0.2, theta_lr=0.2, l2=1e-3, loss="softmax",
                                                         context_l2=c))
        return np.linalg.norm(out.dense["context/interaction"].reshape(G, -1), axis=1)

    free, held = trained_norm(0.0), trained_norm(1.0)
    assert np.all(free > 0.01)          # without the penalty the weights fit the noise
    assert np.all(held < 0.5 * free)    # with it they stay near zero



def _ials_fixture(seed: int = 3, hybrid: bool = True, c: int = 2):
    """4 users of dim = 4: 4, 0, 3 and 1 engagements; c context features (c > dim: wider than the vectors)."""
    rng = np.random.default_rng(seed)
    n_items, text_dim, dim = 9, 3, 4
    shape = ModelShape(n_items, text_dim, dim, c, hybrid)
    params = {k: rng.normal(0.0, 0.4, s) for k, s in shape.shapes().items()}
    item_h = rng.normal(size=(n_items, text_dim))
    offsets = np.array([0, 4, 4, 7, 8])              # user 1 has no history, user 3 one engagement
    items = np.array([0, 5, 5, 1, 2, 3, 8, 6])       # user 0 engaged item 5 twice
    ctx = rng.normal(size=(len(items), c))
    return params, item_h, offsets, items, ctx


def _ials_loss_by_hand(params, item_h, theta, offsets, items, ctx, alpha0, l2, context_l2, catalogue_at_each=None):
    """Each user's loss [U], every score formed explicitly (one user, one example at a time).

    The catalogue is pulled to 0 at every context the user engaged in, written as the catalogue at the mean
    context plus the spread of the context part around it. catalogue_at_each: a list that receives each user's
    term formed directly, alpha0 * mean_l sum_i a_l(i)^2, to check the split's value."""
    phi = tf.matmul(item_h, params["tower/kernel"]) + params["tower/bias"]
    bias = tf.linalg.matvec(item_h, params["text-bias/kernel"])
    if "items/embedding" in params:
        phi, bias = phi + params["items/embedding"], bias + params["items/bias"]
    W, t, b0 = params["context/interaction"], params["context/shift"], params["global-bias"][0]
    out = []
    for u in range(len(offsets) - 1):
        lo, hi = offsets[u], offsets[u + 1]
        x_mean = ctx[lo:hi].mean(0) if hi > lo else tf.zeros(ctx.shape[1], tf.float64)
        loss = 0.0
        for l in range(lo, hi):
            s = tf.tensordot(theta[u] + tf.linalg.matvec(W, ctx[l], transpose_a=True), phi[items[l]], 1) \
                + bias[items[l]] + tf.tensordot(t, ctx[l], 1) + b0
            loss += (s - 1.0) ** 2
        a = tf.linalg.matvec(phi, theta[u] + tf.linalg.matvec(W, x_mean, transpose_a=True)) + bias \
            + tf.tensordot(t, x_mean, 1) + b0
        loss += alpha0 * tf.reduce_sum(a ** 2) + l2 * tf.reduce_sum(theta[u] ** 2)
        direct = 0.0
        for l in range(lo, hi):  # the catalogue at context x_l, and the part of it that moves with x_l - x_mean
            a_l = tf.linalg.matvec(phi, theta[u] + tf.linalg.matvec(W, ctx[l], transpose_a=True)) + bias \
                + tf.tensordot(t, ctx[l], 1) + b0
            direct += alpha0 * tf.reduce_sum(a_l ** 2) / (hi - lo)
            moved = tf.linalg.matvec(phi, tf.linalg.matvec(W, ctx[l] - x_mean, transpose_a=True)) \
                + tf.tensordot(t, ctx[l] - x_mean, 1)
            loss += alpha0 * tf.reduce_sum(moved ** 2) / (hi - lo)
        if catalogue_at_each is not None:
            catalogue_at_each.append(direct if hi > lo else alpha0 * tf.reduce_sum(a ** 2))
        if "items/embedding" in params:
            for r in np.unique(items[lo:hi]):
                loss += l2 * (tf.reduce_sum(params["items/embedding"][r] ** 2) + params["items/bias"][r] ** 2)
        out.append(loss + context_l2 * (tf.reduce_sum(t ** 2) + tf.reduce_sum(W ** 2)))
    return out


@pytest.mark.parametrize("hybrid, c", [(True, 2), (False, 2), (True, 11), (False, 11)])
def test_ials_user_gradients_equal_autodiff_of_each_users_loss(hybrid, c):
    params, item_h, offsets, items, ctx = _ials_fixture(hybrid=hybrid, c=c)
    U = len(offsets) - 1
    theta = np.random.default_rng(5).normal(size=(U, 4))
    alpha0, l2, context_l2 = 0.3, 0.05, 0.2
    got = ials_user_gradients(params, item_h, theta, offsets, items, ctx, alpha0, l2, context_l2)
    direct = []
    no_pull = _ials_loss_by_hand(params, item_h, theta, offsets, items, ctx, 0.0, l2, context_l2)
    whole = _ials_loss_by_hand(params, item_h, theta, offsets, items, ctx, alpha0, l2, context_l2, direct)
    for u in range(U):  # the loss is the catalogue pulled to 0 at each of the user's contexts
        assert float(whole[u]) == pytest.approx(float(no_pull[u]) + float(direct[u]), rel=1e-9)
    for u in range(U):
        var = {k: tf.Variable(v) for k, v in params.items()}
        with tf.GradientTape() as tape:
            loss = _ials_loss_by_hand(var, item_h, tf.constant(theta), offsets, items, ctx, alpha0, l2, context_l2)[u]
        grads = dict(zip(var, tape.gradient(loss, list(var.values()))))
        assert got["loss"][u] == pytest.approx(float(loss), rel=1e-9)
        for k in DENSE_NAMES:
            np.testing.assert_allclose(got["dense"][k][u], grads[k].numpy(), rtol=1e-9, atol=1e-12, err_msg=k)
        if not hybrid:
            assert got["coef"] is None and got["rows_emb"] is None
            continue
        # the item table: sparse touched rows plus the rank-one dense part and the context spread's dense part
        emb = np.outer(got["coef"][u], got["dir"][u]) + got["basis"] @ got["spread"][u]
        bias = got["coef"][u].copy()
        mine = got["row_user"] == u
        emb[got["rows"][mine]] += got["rows_emb"][mine]
        bias[got["rows"][mine]] += got["rows_bias"][mine]
        np.testing.assert_allclose(emb, tf.convert_to_tensor(grads["items/embedding"]).numpy(), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(bias, tf.convert_to_tensor(grads["items/bias"]).numpy(), rtol=1e-9, atol=1e-12)


def test_ials_solve_gives_each_user_the_minimum_of_its_loss():
    params, item_h, offsets, items, ctx = _ials_fixture()
    alpha0, l2 = 0.5, 0.2
    theta = ials_solve(params, item_h, offsets, items, ctx, alpha0, l2).astype(np.float64)
    th = tf.Variable(theta)
    with tf.GradientTape() as tape:
        total = tf.add_n(_ials_loss_by_hand(params, item_h, th, offsets, items, ctx, alpha0, l2, 0.0))
    np.testing.assert_allclose(tape.gradient(total, th).numpy(), 0.0, atol=1e-4)


def test_ials_theta_is_the_least_squares_solution_of_each_user():
    rng = np.random.default_rng(3)
    phi, target, z = rng.normal(size=(12, 4)), rng.normal(size=7), rng.normal(size=(3, 12))
    offsets, items = np.array([0, 3, 3, 7]), np.array([0, 5, 5, 1, 2, 3, 11])
    alpha0, lam = 0.5, 0.2
    theta = ials_theta(phi, offsets, items, target, z @ phi, alpha0, lam)
    for u in range(3):
        hist = slice(offsets[u], offsets[u + 1])
        # the objective as one stacked least-squares problem: engaged rows, all-items rows, ridge rows
        a = np.vstack([phi[items[hist]], np.sqrt(alpha0) * phi, np.sqrt(lam) * np.eye(4)])
        y = np.concatenate([target[hist], -np.sqrt(alpha0) * z[u], np.zeros(4)])
        np.testing.assert_allclose(theta[u], np.linalg.lstsq(a, y, rcond=None)[0], rtol=1e-5, atol=1e-6)


def test_ials_loss_equals_the_sum_over_every_user_and_item():
    rng = np.random.default_rng(3)
    phi, bias, theta = rng.normal(size=(12, 4)), rng.normal(size=12), rng.normal(size=(3, 4))
    users, items = np.array([0, 0, 0, 2, 2]), np.array([0, 5, 5, 1, 11])
    alpha0 = 0.3
    s = theta @ phi.T + bias                          # [U, n_items] formed explicitly
    expected = sum((s[u, i] - 1.0) ** 2 for u, i in zip(users, items)) + alpha0 * np.sum(s ** 2)
    got = ials_loss(tf.constant(theta), tf.constant(phi), tf.constant(bias), tf.constant(users), tf.constant(items),
                    alpha0)
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_sampled_softmax_correction_estimates_the_full_partition_sum():
    """With the shift log((n - 1) / K), K uniform negatives' exp-sum is an unbiased estimate of the other
    n - 1 items' exp-sum, so exp(-loss) averages to about the full softmax's probability of the engaged item."""
    import tensorflow as tf

    from common.model.formula import candidate_loss
    from common.model.scoring import negative_shift

    # by hand: logits [2, 0], shift log(9 / 1) -> -log(e^2 / (e^2 + 9))
    shift = negative_shift(10, 1)
    np.testing.assert_allclose(shift, np.log(9.0))
    np.testing.assert_allclose(candidate_loss(tf.constant([[2.0, 0.0]]), "softmax", shift).numpy(),
                               [np.log(np.exp(2.0) + 9.0) - 2.0], rtol=1e-6)
    assert negative_shift(17, 16) == 0.0  # K = n - 1: every other item is a negative, nothing to correct
    rng = np.random.default_rng(0)
    n, k = 200, 8
    scores = rng.normal(0.0, 1.0, n)
    others = np.exp(scores[1:])
    negs = rng.integers(1, n, size=(20000, k))
    estimate = np.exp(scores[negs] + negative_shift(n, k)).sum(axis=1).mean()
    assert abs(estimate / others.sum() - 1.0) < 0.02
    uncorrected = np.exp(scores[negs]).sum(axis=1).mean()
    assert uncorrected / others.sum() < 0.1  # without the shift the negatives stand for K items, not n - 1


def test_named_batches_trace_once_per_static_setting():
    """local_train and dp_local_train hand their batches to a tf.function as nests of tensors: calls with other
    sizes and other rates reuse the trace (one for the first shapes, one relaxed when they first change), so
    a node's rounds do not retrace per group."""
    from common.model.training import _dp_local_train_tf, _local_train_tf, dp_local_train

    rng = np.random.default_rng(11)
    text_dim, dim, ctx_dim, C = 4, 3, 2, 3
    shared = init_shared(ModelShape(1, text_dim, dim, ctx_dim, False), seed=0)
    plain, dp = _local_train_tf.experimental_get_tracing_count(), _dp_local_train_tf.experimental_get_tracing_count()
    for i, (G, L, R) in enumerate([(2, 3, 5), (3, 4, 6), (4, 2, 7), (1, 5, 4)]):
        dense = {k: np.broadcast_to(shared[k], (G,) + shared[k].shape) for k in DENSE_NAMES}
        b = _user_batch(rng, G, L, R, text_dim, dim, ctx_dim, C=C)
        b["cand"] = np.stack([np.stack([rng.choice(R, C, replace=False) for _ in range(L)]) for _ in range(G)]
                             ).astype(np.int32)  # distinct candidates, as local DP needs
        rule = StepRule(steps=7, lr=0.01 * (i + 1), theta_lr=0.1, l2=1e-3 * i, loss="softmax", neg_shift=0.5 * i)
        local_train(*_named(dense, b), rule, clip=1.0 + i, optimizer="adam")
        noise = {k: rng.standard_normal((7, G) + shared[k].shape).astype(np.float32) for k in DENSE_NAMES}
        noise["items/embedding"] = rng.standard_normal((6, G, R, dim)).astype(np.float32)
        noise["items/bias"] = rng.standard_normal((6, G, R)).astype(np.float32)
        dp_local_train(*_named(dense, b), rule, noise, clip=0.5 + i, noise_std=i, denominator=4.0 + i)
    assert _local_train_tf.experimental_get_tracing_count() - plain == 2
    assert _dp_local_train_tf.experimental_get_tracing_count() - dp == 2


def test_segment_sum_sums_each_users_rows_and_gives_empty_users_zero():
    rng = np.random.default_rng(4)
    v = rng.normal(size=(6, 2, 3))
    offsets = np.array([0, 0, 2, 2, 5, 6, 6])          # users 0, 2 and 5 have no rows
    got = segment_sum(v, offsets)
    assert got.shape == (6, 2, 3)
    for u in range(6):
        np.testing.assert_allclose(got[u], sum((v[l] for l in range(offsets[u], offsets[u + 1])), np.zeros((2, 3))),
                                   rtol=1e-15, atol=0)
    assert segment_sum(np.zeros((0, 4)), np.array([0, 0, 0])).shape == (2, 4)
