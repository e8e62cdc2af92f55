"""The context-aware scoring model: the one place the formula lives.

    logit(u, c, x) = (theta_u + W_int^T x) . phi(c) + theta_ctx . x + b(c) + b_0
    phi(c)         = W_f^T h(c) + b_f [+ E[c]]          (content tower [+ hybrid item-id embedding])
    b(c)           = w_b . h(c) [+ e[c]]                 (item bias from text [+ hybrid item-id bias])

h(c) in R^text_dim is the pooled word vector of the item text (server's content encoder),
theta_u in R^dim is the private user vector, x in R^context_dim the encoded context.
`theta_ctx . x` shifts every item equally; `x^T W_int phi(c)` interacts with the item side,
so the ranking changes with the context.

All functions here work on groups: a leading axis G of independent parameter copies. A node
trains G users at once, each with its own copy of the shared parameters, so every user's update
is computed separately (exact per-user clipping and sampling stay possible). Centralized
training is the special case G = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import tensorflow as tf

from common.scoring import (CONTEXT_NAMES, DENSE_NAMES, ITEM_NAMES, SHIFT_INVARIANT, _ials_parts, ials_solve,
                            ials_solve_history, ials_theta, negative_shift, segment_outer_sum, warm_start_theta)

__all__ = [
    "ModelShape",
    "GroupParams",
    "TrainBatch",
    "StepRule",
    "DENSE_NAMES",
    "CONTEXT_NAMES",
    "ITEM_NAMES",
    "SHIFT_INVARIANT",
    "trainable_dense",
    "init_shared",
    "item_side",
    "query_side",
    "group_logits",
    "score_items",
    "bce_with_negatives",
    "candidate_loss",
    "negative_shift",
    "group_loss",
    "local_train",
    "dp_local_train",
    "warm_start_theta",
    "dp_warm_start_sum",
    "dp_warm_start_theta",
    "ials_theta",
    "ials_loss",
    "ials_solve",
    "ials_solve_history",
    "ials_user_gradients",
]


def trainable_dense(loss: str) -> tuple[str, ...]:
    """Dense shared parameters that `loss` trains (all but SHIFT_INVARIANT under softmax)."""
    return tuple(k for k in DENSE_NAMES if not (loss == "softmax" and k in SHIFT_INVARIANT))


@dataclass(frozen=True)
class ModelShape:
    """Sizes that fix every parameter shape."""

    n_items: int
    text_dim: int
    dim: int
    context_dim: int
    item_embedding: bool

    def shapes(self) -> dict[str, tuple[int, ...]]:
        out = {
            "tower/kernel": (self.text_dim, self.dim),
            "tower/bias": (self.dim,),
            "text-bias/kernel": (self.text_dim,),
            "global-bias": (1,),
            "context/shift": (self.context_dim,),
            "context/interaction": (self.context_dim, self.dim),
        }
        if self.item_embedding:
            out["items/embedding"] = (self.n_items, self.dim)
            out["items/bias"] = (self.n_items,)
        return out


def init_shared(shape: ModelShape, seed: int) -> dict[str, np.ndarray]:
    """Initial shared parameters (small random tower and item embeddings, zeros elsewhere)."""
    rng = np.random.default_rng(seed)
    # phi(c) starts small (each coordinate ~ N(0, 0.05) for unit-variance h), so first logits are O(1)
    params = {
        "tower/kernel": rng.normal(0.0, np.sqrt(0.05 / shape.text_dim), (shape.text_dim, shape.dim)),
        "tower/bias": np.zeros(shape.dim),
        "text-bias/kernel": np.zeros(shape.text_dim),
        "global-bias": np.zeros(1),
        "context/shift": np.zeros(shape.context_dim),
        "context/interaction": np.zeros((shape.context_dim, shape.dim)),
    }
    if shape.item_embedding:
        params["items/embedding"] = rng.normal(0.0, 0.01, (shape.n_items, shape.dim))
        params["items/bias"] = np.zeros(shape.n_items)
    return {k: v.astype(np.float32) for k, v in params.items()}


def item_side(dense: Mapping[str, tf.Tensor], rows_h: tf.Tensor, rows_emb: tf.Tensor | None,
              rows_bias: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor]:
    """phi(c) [G, R, dim] and b(c) [G, R] of R items per group.

    dense: group copies, e.g. tower/kernel [G, text_dim, dim]; rows_h [G, R, text_dim];
    rows_emb [G, R, dim] and rows_bias [G, R] (hybrid) or None.
    """
    phi = tf.einsum("grh,ghd->grd", rows_h, dense["tower/kernel"]) + dense["tower/bias"][:, None, :]
    bias = tf.einsum("grh,gh->gr", rows_h, dense["text-bias/kernel"])
    if rows_emb is not None:
        phi = phi + rows_emb
        bias = bias + rows_bias
    return phi, bias


def query_side(dense: Mapping[str, tf.Tensor], theta: tf.Tensor, ctx: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Context-adjusted user query q = theta_u + W_int^T x [G, L, dim] and shift theta_ctx.x + b_0 [G, L].

    theta [G, L, dim] (the user vector of each example); ctx [G, L, context_dim].
    """
    q = theta + tf.einsum("glx,gxd->gld", ctx, dense["context/interaction"])
    shift = tf.einsum("glx,gx->gl", ctx, dense["context/shift"]) + dense["global-bias"][:, :1]
    return q, shift


def group_logits(dense: Mapping[str, tf.Tensor], theta: tf.Tensor, ctx: tf.Tensor, rows_h: tf.Tensor,
                 rows_emb: tf.Tensor | None, rows_bias: tf.Tensor | None, cand: tf.Tensor) -> tf.Tensor:
    """Logits [G, L, C] of C candidate items for each of L examples per group.

    cand [G, L, C] int32 indexes the group's R item rows.
    """
    phi, bias = item_side(dense, rows_h, rows_emb, rows_bias)
    q, shift = query_side(dense, theta, ctx)
    phi_c = tf.gather(phi, cand, batch_dims=1)    # [G, L, C, dim]
    bias_c = tf.gather(bias, cand, batch_dims=1)  # [G, L, C]
    return tf.einsum("gld,glcd->glc", q, phi_c) + bias_c + shift[..., None]


def score_items(dense: Mapping[str, np.ndarray], theta: np.ndarray, ctx: np.ndarray, item_h: np.ndarray,
                item_emb: np.ndarray | None, item_bias: np.ndarray | None) -> np.ndarray:
    """Scores [U, n_items] of every catalogue item for U (user, context) queries.

    One parameter copy (no group axis): dense["tower/kernel"] [text_dim, dim]; theta [U, dim];
    ctx [U, context_dim]; item_h [n_items, text_dim].
    """
    g = {k: tf.convert_to_tensor(v)[None] for k, v in dense.items()}
    phi, bias = item_side(g, tf.convert_to_tensor(item_h)[None],
                          None if item_emb is None else tf.convert_to_tensor(item_emb)[None],
                          None if item_bias is None else tf.convert_to_tensor(item_bias)[None])
    q, shift = query_side(g, tf.convert_to_tensor(theta)[None], tf.convert_to_tensor(ctx)[None])
    scores = tf.einsum("gld,grd->glr", q, phi) + bias[:, None, :] + shift[..., None]
    return scores[0].numpy()


def bce_with_negatives(logits: tf.Tensor) -> tf.Tensor:
    """Binary cross-entropy [...] summed over candidates; candidate 0 is the engaged item."""
    labels = tf.concat([tf.ones_like(logits[..., :1]), tf.zeros_like(logits[..., 1:])], axis=-1)
    return tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(labels, logits), axis=-1)


def candidate_loss(logits: tf.Tensor, kind: str, neg_shift: float | tf.Tensor = 0.0) -> tf.Tensor:
    """Per-example loss [...] of logits [..., 1 + negatives] (candidate 0 engaged).

    "bce": sigmoid cross-entropy, positives vs sampled negatives (calibrated P(engage)).
    "softmax": sampled softmax, -log(exp(s_0) / (exp(s_0) + sum_{c>0} exp(s_c + neg_shift))) (ranking only;
    bounded gradient for any K); neg_shift = `negative_shift(n_items, K)` estimates the full softmax.
    """
    if kind == "softmax":
        shifted = tf.concat([logits[..., :1], logits[..., 1:] + neg_shift], axis=-1)
        return tf.reduce_logsumexp(shifted, axis=-1) - logits[..., 0]
    return bce_with_negatives(logits)


def context_penalty(dense: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """||theta_ctx||^2 + ||W_int||_F^2 of each group copy [G]."""
    return tf.add_n([tf.reduce_sum(tf.reshape(tf.square(dense[k]), [tf.shape(dense[k])[0], -1]), 1)
                     for k in CONTEXT_NAMES])


@dataclass(frozen=True)
class GroupParams:
    """G users' own copies of the parameters local training moves (numpy arrays, or tensors inside TensorFlow).

    dense {name: [G, ...]} (DENSE_NAMES, e.g. tower/kernel [G, text_dim, dim]); theta [G, dim] the private user
    vectors; rows_emb [G, R, dim] and rows_bias [G, R] the item rows the users' examples touch (hybrid model),
    else None.
    """

    dense: Mapping[str, np.ndarray]
    theta: np.ndarray
    rows_emb: np.ndarray | None = None
    rows_bias: np.ndarray | None = None


@dataclass(frozen=True)
class TrainBatch:
    """G users' examples, each user's padded to L examples and R item rows.

    rows_h [G, R, text_dim] the text vectors of each user's item rows; ctx [G, L, context_dim]; cand
    [G, L, 1 + negatives] int, indexes into the user's R rows (column 0 the engaged item); ex_mask [G, L] the
    weight of each example (1 real, 0 padding); row_mask [G, R] 1 for real rows (`local_train` needs it;
    `dp_local_train` does not use it).
    """

    rows_h: np.ndarray
    ctx: np.ndarray
    cand: np.ndarray
    ex_mask: np.ndarray
    row_mask: np.ndarray | None = None


@dataclass(frozen=True)
class StepRule:
    """How local training steps: `steps` full-batch steps of size lr (shared parameters and item rows) and
    theta_lr (theta_u); l2 weighs |theta_u|^2 and the touched item rows' squares, context_l2 the
    `context_penalty`; loss "bce" or "softmax"; neg_shift the sampled softmax's correction (`negative_shift`)."""

    steps: int
    lr: float
    theta_lr: float
    l2: float
    loss: str = "bce"
    context_l2: float = 0.0
    neg_shift: float = 0.0


def group_loss(params: GroupParams, batch: TrainBatch, l2, loss="bce", context_l2=0.0, neg_shift=0.0):
    """Per-group loss [G]: mean candidate loss over the group's examples + l2 * (|theta|^2 + touched item rows)
    + context_l2 * context_penalty. params and batch hold tensors (row_mask needed for the hybrid model)."""
    theta, cand = params.theta, batch.cand
    theta_ex = tf.broadcast_to(theta[:, None, :], tf.concat([tf.shape(cand)[:2], tf.shape(theta)[1:]], 0))
    logits = group_logits(params.dense, theta_ex, batch.ctx, batch.rows_h, params.rows_emb, params.rows_bias, cand)
    per_example = candidate_loss(logits, loss, neg_shift) * batch.ex_mask
    n = tf.maximum(tf.reduce_sum(batch.ex_mask, axis=1), 1.0)
    loss = tf.reduce_sum(per_example, axis=1) / n
    reg = tf.reduce_sum(tf.square(theta), axis=1)
    if params.rows_emb is not None:
        reg += tf.reduce_sum((tf.reduce_sum(tf.square(params.rows_emb), -1) + tf.square(params.rows_bias))
                             * batch.row_mask, 1)
    return loss + l2 * reg + context_l2 * context_penalty(params.dense)


def _as_tensors(start: GroupParams, batch: TrainBatch, fields: tuple[str, ...]) -> tuple[dict, dict]:
    """start and the named fields of batch as nests of float32 tensors (cand int32) for a tf.function; the item
    rows of a model without them are zeros (the tf.function ignores them), so every call has the same structure."""
    G, R = np.shape(batch.rows_h)[:2]
    hybrid = start.rows_emb is not None
    emb = start.rows_emb if hybrid else np.zeros((G, R, start.theta.shape[1]), np.float32)
    bias = start.rows_bias if hybrid else np.zeros((G, R), np.float32)
    params = {"dense": {k: tf.constant(v, tf.float32) for k, v in start.dense.items()},
              "theta": tf.constant(start.theta, tf.float32), "rows_emb": tf.constant(emb, tf.float32),
              "rows_bias": tf.constant(bias, tf.float32)}
    data = {k: tf.constant(getattr(batch, k), tf.int32 if k == "cand" else tf.float32) for k in fields}
    return params, data


def _as_numpy(dense: Mapping[str, tf.Tensor], theta: tf.Tensor, emb: tf.Tensor, bias: tf.Tensor, loss: tf.Tensor,
              hybrid: bool) -> tuple[GroupParams, np.ndarray]:
    """A tf.function's trained copies and losses [G] as numpy (item rows None for a model without them)."""
    return (GroupParams({k: v.numpy() for k, v in dense.items()}, theta.numpy(), emb.numpy() if hybrid else None,
                        bias.numpy() if hybrid else None), loss.numpy())


@tf.function(reduce_retracing=True, autograph=False)
def _local_train_tf(start, batch, rates, steps, hybrid, adam, loss_kind):
    """Full-batch SGD or Adam on each group's own loss; groups never share a gradient.

    start, batch: `GroupParams` and `TrainBatch` fields as dicts of tensors; rates: lr, theta_lr, l2, clip,
    context_l2, neg_shift (scalar tensors). steps, hybrid, adam, loss_kind: Python values (one trace each).
    """
    data = TrainBatch(**batch)
    names = sorted(start["dense"])
    frozen = set(names) - set(trainable_dense(loss_kind))
    vars_ = [start["dense"][k] for k in names] + [start["theta"]]
    if hybrid:
        vars_ += [start["rows_emb"], start["rows_bias"]]

    def loss_of(vars_):  # [G]
        emb, bias = (vars_[-2], vars_[-1]) if hybrid else (None, None)
        copies = GroupParams(dict(zip(names, vars_[: len(names)])), vars_[len(names)], emb, bias)
        return group_loss(copies, data, rates["l2"], loss_kind, rates["context_l2"], rates["neg_shift"])

    m = [tf.zeros_like(v) for v in vars_]
    v2 = [tf.zeros_like(v) for v in vars_]
    b1, b2, eps = 0.9, 0.999, 1e-8
    for t in range(1, steps + 1):
        with tf.GradientTape() as tape:
            tape.watch(vars_)
            loss = tf.reduce_sum(loss_of(vars_))
        grads = tape.gradient(loss, vars_)
        grads = [tf.zeros_like(g) if i < len(names) and names[i] in frozen else g for i, g in enumerate(grads)]
        # each user's gradient (all its variables together) is clipped to L2 norm <= clip
        sq = tf.add_n([tf.reduce_sum(tf.reshape(tf.square(g), [tf.shape(g)[0], -1]), axis=1) for g in grads])
        scale = tf.minimum(1.0, rates["clip"] / tf.maximum(tf.sqrt(sq), 1e-12))
        grads = [g * tf.reshape(scale, tf.concat([[-1], tf.ones([tf.rank(g) - 1], tf.int32)], 0)) for g in grads]
        new_vars = []
        for i, (var, g) in enumerate(zip(vars_, grads)):
            step_size = rates["theta_lr"] if i == len(names) else rates["lr"]
            if not adam:
                new_vars.append(var - step_size * g)
                continue
            m[i] = b1 * m[i] + (1 - b1) * g
            v2[i] = b2 * v2[i] + (1 - b2) * tf.square(g)
            mhat = m[i] / (1 - b1 ** t)
            vhat = v2[i] / (1 - b2 ** t)
            new_vars.append(var - step_size * mhat / (tf.sqrt(vhat) + eps))
        vars_ = new_vars
    out_emb, out_bias = (vars_[-2], vars_[-1]) if hybrid else (start["rows_emb"], start["rows_bias"])
    return dict(zip(names, vars_[: len(names)])), vars_[len(names)], out_emb, out_bias, loss_of(vars_)


def local_train(start: GroupParams, batch: TrainBatch, rule: StepRule, *, clip: float = float("inf"),
                optimizer: str = "sgd") -> tuple[GroupParams, np.ndarray]:
    """Train G users' copies for rule.steps full-batch steps of SGD or Adam ("sgd" | "adam"); returns the final
    copies and the loss [G] of the final parameters.

    Every step, each user's gradient is clipped to L2 norm <= clip (all of the user's variables together).
    batch.row_mask is required (it weighs the item rows' L2 penalty).
    """
    if batch.row_mask is None:
        raise ValueError("batch.row_mask: local_train needs it (1 for each user's real item rows). Found None.")
    params, data = _as_tensors(start, batch, ("rows_h", "row_mask", "ctx", "cand", "ex_mask"))
    rates = {"lr": rule.lr, "theta_lr": rule.theta_lr, "l2": rule.l2, "clip": min(clip, 3.0e38),
             "context_l2": rule.context_l2, "neg_shift": rule.neg_shift}
    hybrid = start.rows_emb is not None
    out = _local_train_tf(params, data, {k: tf.constant(v, tf.float32) for k, v in rates.items()}, int(rule.steps),
                          hybrid, optimizer == "adam", rule.loss)
    return _as_numpy(*out, hybrid)


def _per_example(v: tf.Tensor, G: tf.Tensor, L: tf.Tensor, extra: tf.Tensor) -> tf.Tensor:
    """[G, ...] -> [G*L, ...] one copy per example (extra: the trailing shape)."""
    ex = tf.broadcast_to(v[:, None], tf.concat([[G, L], tf.shape(v)[1:]], 0))
    return tf.reshape(ex, tf.concat([[G * L], extra], 0))


def _example_view(batch: Mapping[str, tf.Tensor]) -> dict:
    """A batch's examples as their own groups: G, L, C, R (sizes), n [G] (examples per group, >= 1), flat_mask
    [G*L], rows_h [G*L, C, text_dim] (each example's candidates), ctx [G*L, 1, context_dim], local [G*L, 1, C]
    (the candidates' rows in the example's group), seg [G*L*C] (the user's row of each candidate slot, in G*R)."""
    rows_h, cand, ex_mask = batch["rows_h"], batch["cand"], batch["ex_mask"]
    G, L, C = tf.shape(cand)[0], tf.shape(cand)[1], tf.shape(cand)[2]
    R = tf.shape(rows_h)[1]
    return {
        "G": G, "L": L, "C": C, "R": R, "cand": cand,
        "n": tf.maximum(tf.reduce_sum(ex_mask, axis=1), 1.0),
        "flat_mask": tf.reshape(ex_mask, [-1]),
        "rows_h": tf.reshape(tf.gather(rows_h, cand, batch_dims=1), tf.concat([[G * L, C], tf.shape(rows_h)[2:]], 0)),
        "ctx": tf.reshape(batch["ctx"], [G * L, 1, -1]),
        "local": tf.broadcast_to(tf.range(C)[None, None, :], [G * L, 1, C]),
        "seg": tf.reshape(tf.range(G)[:, None, None] * R + cand, [-1]),
    }


def _example_gradients(dense, theta, rows_emb, rows_bias, ex, train_names, rates, hybrid, dp_theta, loss_kind):
    """One step's per-example gradients [G*L, ...] of (train_names..., theta, [rows_emb, rows_bias]), each
    example's clip factor [G*L] (0 for padding) and the step's mean example loss [G] (before the update)."""
    G, L, C, flat_mask = ex["G"], ex["L"], ex["C"], ex["flat_mask"]
    d_ex = {k: _per_example(dense[k], G, L, tf.shape(dense[k])[1:]) for k in sorted(dense)}
    th_ex = tf.reshape(_per_example(theta, G, L, tf.shape(theta)[1:]), [G * L, 1, -1])
    emb_ex = tf.reshape(tf.gather(rows_emb, ex["cand"], batch_dims=1), [G * L, C, -1])
    bias_ex = tf.reshape(tf.gather(rows_bias, ex["cand"], batch_dims=1), [G * L, C])
    watched = [d_ex[k] for k in train_names] + [th_ex] + ([emb_ex, bias_ex] if hybrid else [])
    with tf.GradientTape() as tape:
        tape.watch(watched)
        logits = group_logits(d_ex, th_ex, ex["ctx"], ex["rows_h"], emb_ex if hybrid else None,
                              bias_ex if hybrid else None, ex["local"])[:, 0, :]  # [G*L, C]
        per_ex = candidate_loss(logits, loss_kind, rates["neg_shift"])
        if hybrid:  # the candidate rows' L2 penalty belongs to the example (clipped with it)
            per_ex += rates["l2"] * (tf.reduce_sum(tf.square(emb_ex), [1, 2]) + tf.reduce_sum(tf.square(bias_ex), 1))
        total = tf.reduce_sum(per_ex * flat_mask)
    step_loss = tf.reduce_sum(tf.reshape(per_ex * flat_mask, [G, L]), axis=1) / ex["n"]  # [G] mean example loss
    grads = tape.gradient(total, watched)
    clipped = grads if dp_theta else [g for i, g in enumerate(grads) if i != len(train_names)]
    sq = tf.add_n([tf.reduce_sum(tf.reshape(tf.square(g), [G * L, -1]), 1) for g in clipped])
    factor = tf.minimum(1.0, rates["clip"] / tf.maximum(tf.sqrt(sq), 1e-12)) * flat_mask  # [G*L]
    return grads, factor, step_loss


@tf.function(reduce_retracing=True, autograph=False)
def _dp_local_train_tf(start, batch, noise, rates, steps, row_noise_steps, hybrid, dp_theta, loss_kind):
    """DP-SGD (Abadi et al. 2016) on each group's examples, full batch: every example's gradient of the
    shared parameters (and of theta_u if dp_theta) is clipped to L2 norm <= clip, the clipped gradients
    are summed, N(0, noise_std^2) is added to every coordinate (noise: standard normals per step),
    and the sum is divided by the PUBLIC constant `denominator` (dividing by the group's own number of
    examples would reveal it through the noise's scale).

    Per-example gradients come from the same formula (`group_logits`) with one parameter copy per
    example: example (g, l) becomes its own group whose item rows are its own candidates.
    start, batch: `GroupParams` and `TrainBatch` fields as dicts of tensors; rates: lr, theta_lr, l2, clip,
    noise_std, denominator, context_l2, neg_shift (scalar tensors); the rest Python values.
    """
    dense, theta, rows_emb, rows_bias = start["dense"], start["theta"], start["rows_emb"], start["rows_bias"]
    lr, theta_lr, noise_std = rates["lr"], rates["theta_lr"], rates["noise_std"]
    train_names = [k for k in sorted(dense) if k in trainable_dense(loss_kind)]
    ex = _example_view(batch)
    G, L, n = ex["G"], ex["L"], ex["n"]
    for t in range(steps):
        grads, factor, step_loss = _example_gradients(dense, theta, rows_emb, rows_bias, ex, train_names, rates,
                                                      hybrid, dp_theta, loss_kind)

        def summed(g, clip_it):  # per-example [G*L, ...] -> [G, ...] sum of (clipped) gradients
            w = factor if clip_it else ex["flat_mask"]
            g = g * tf.reshape(w, tf.concat([[-1], tf.ones([tf.rank(g) - 1], tf.int32)], 0))
            return tf.reduce_sum(tf.reshape(g, tf.concat([[G, L], tf.shape(g)[1:]], 0)), axis=1)

        def step(v, g_sum, z, size):  # z None: this step's noise is left to the caller
            g_sum = g_sum if z is None else g_sum + noise_std * z
            return v - size * g_sum / rates["denominator"]

        new_dense = dict(dense)
        for i, k in enumerate(train_names):
            new_dense[k] = step(dense[k], summed(grads[i], True), noise[k][t], lr)
            if k in CONTEXT_NAMES:  # weight decay: a function of the parameters alone, outside the clipped sum
                new_dense[k] -= lr * 2.0 * rates["context_l2"] * dense[k]
        g_theta = tf.reshape(summed(grads[len(train_names)], dp_theta), tf.shape(theta))
        if dp_theta:
            theta = step(theta, g_theta, noise["theta"][t], theta_lr)
        else:  # plain gradient of the mean loss (theta_u never leaves the device)
            theta = theta - theta_lr * (g_theta / n[:, None] + 2.0 * rates["l2"] * theta)
        if hybrid:
            g_emb, g_bias = grads[-2], grads[-1]
            w = tf.reshape(factor, [G * L, 1])
            e_sum = tf.math.unsorted_segment_sum(tf.reshape(g_emb * w[..., None], [G * L * ex["C"], -1]), ex["seg"],
                                                 G * ex["R"])
            b_sum = tf.math.unsorted_segment_sum(tf.reshape(g_bias * w, [-1]), ex["seg"], G * ex["R"])
            noisy = t < row_noise_steps  # a Python int: static (a relaxed traced shape could be None)
            rows_emb = step(rows_emb, tf.reshape(e_sum, tf.shape(rows_emb)),
                            noise["items/embedding"][t] if noisy else None, lr)
            rows_bias = step(rows_bias, tf.reshape(b_sum, tf.shape(rows_bias)), noise["items/bias"][t] if noisy else None,
                             lr)
        dense = new_dense
    return dense, theta, rows_emb, rows_bias, step_loss


def dp_local_train(start: GroupParams, batch: TrainBatch, rule: StepRule, noise: Mapping[str, np.ndarray], *,
                   clip: float, noise_std: float, denominator: float,
                   dp_theta: bool = False) -> tuple[GroupParams, np.ndarray]:
    """Local DP-SGD of G users' copies (see `_dp_local_train_tf`); batch.row_mask is not used.

    Every example's candidates must be distinct item rows (so a clipped example moves each row once).
    noise: standard normals per step, {name: [steps, G, ...]} for each trained dense parameter,
    "items/embedding" [S, G, R, dim] and "items/bias" [S, G, R] (hybrid), "theta" (dp_theta). The item
    rows get noise in the first S steps only: S = steps - 1 leaves the last step's row noise to the caller
    (exact: nothing computed here depends on it; `common.federated` draws it summed over users).
    clip: each example's gradient L2 bound; noise_std: the noise's std per coordinate; denominator: the public
    constant each step's noisy sum is divided by.
    Returns (the trained copies, loss [G]); loss is the mean example loss of the last step's forward pass
    (before its update; steps=0 is not allowed).
    """
    if rule.steps < 1:
        raise ValueError(f"steps: must be >= 1. Found {rule.steps}.")
    if not denominator > 0:
        raise ValueError(f"denominator: must be > 0. Found {denominator}.")
    hybrid = start.rows_emb is not None
    params, data = _as_tensors(start, batch, ("rows_h", "ctx", "cand", "ex_mask"))
    rates = {"lr": rule.lr, "theta_lr": rule.theta_lr, "l2": rule.l2, "clip": clip, "noise_std": noise_std,
             "denominator": denominator, "context_l2": rule.context_l2, "neg_shift": rule.neg_shift}
    out = _dp_local_train_tf(params, data, {k: tf.constant(v, tf.float32) for k, v in noise.items()},
                             {k: tf.constant(v, tf.float32) for k, v in rates.items()}, int(rule.steps),
                             int(np.shape(noise["items/embedding"])[0]) if hybrid else 0, hybrid, bool(dp_theta),
                             rule.loss)
    return _as_numpy(*out, hybrid)


def dp_warm_start_sum(phi_history: np.ndarray, clip: float) -> np.ndarray:
    """The vector the DP warm start releases (before noise), [dim + 1]: sum_i v_i with
    v_i = [phi_i min(1, a / |phi_i|), a] and a = clip / sqrt(2), so |v_i| <= clip: adding or removing one
    engagement moves it by at most `clip`. phi_history [n, dim]."""
    phi = np.asarray(phi_history, np.float64)
    a = clip / np.sqrt(2.0)
    norms = np.linalg.norm(phi, axis=1, keepdims=True)
    clipped = phi * np.minimum(1.0, a / np.maximum(norms, 1e-12))
    return np.append(clipped.sum(axis=0), a * len(phi))


def dp_warm_start_theta(phi_history: np.ndarray, clip: float, noise_std: float, noise: np.ndarray) -> np.ndarray:
    """Warm start of theta_u as one Gaussian mechanism (exact local DP): with S = dp_warm_start_sum + noise_std *
    noise (noise [dim + 1] standard normals), theta_u = S[:dim] / max(S[dim] / a, 1), the noisy mean of the
    clipped phi(c_i). Gaussian(noise_std / clip) under add/remove of one engagement. Every engagement weighs the
    same: the time decay of `warm_start_theta` is relative to the user's newest engagement, which one engagement
    changes. Returns [dim]."""
    dim = np.shape(noise)[0] - 1
    total = dp_warm_start_sum(np.reshape(phi_history, (-1, dim)), clip) + noise_std * np.asarray(noise, np.float64)
    return (total[:-1] / max(total[-1] / (clip / np.sqrt(2.0)), 1.0)).astype(np.float32)


def ials_loss(theta: tf.Tensor, phi: tf.Tensor, bias: tf.Tensor, pos_user: tf.Tensor, pos_item: tf.Tensor,
              alpha0: float) -> tf.Tensor:
    """The implicit-ALS data term summed over U users (scalar; without the L2 terms):

        sum_{(u, i) engaged} (s_ui - 1)^2 + alpha0 * sum_u sum_{all items i} s_ui^2,   s_ui = theta_u . phi_i + b_i

    theta [U, dim]; phi [n_items, dim]; bias [n_items]; pos_user, pos_item [M] the engaged pairs. The
    all-items term is alpha0 * (tr(phi^T phi theta^T theta) + 2 sum_u theta_u . phi^T b + U |b|^2): no
    [U, n_items] matrix is formed.
    """
    s_pos = tf.reduce_sum(tf.gather(theta, pos_user) * tf.gather(phi, pos_item), -1) + tf.gather(bias, pos_item)
    gram = tf.matmul(phi, phi, transpose_a=True)
    all_items = (tf.reduce_sum(gram * tf.matmul(theta, theta, transpose_a=True))
                 + 2.0 * tf.reduce_sum(tf.linalg.matvec(theta, tf.linalg.matvec(phi, bias, transpose_a=True)))
                 + tf.cast(tf.shape(theta)[0], theta.dtype) * tf.reduce_sum(tf.square(bias)))
    return tf.reduce_sum(tf.square(s_pos - 1.0)) + alpha0 * all_items


def ials_user_gradients(params: Mapping[str, np.ndarray], item_h: np.ndarray, theta: np.ndarray, offsets: np.ndarray,
                        items: np.ndarray, ctx: np.ndarray, alpha0: float, l2: float, context_l2: float = 0.0) -> dict:
    """Each user's gradient of its own implicit-ALS loss with respect to the shared parameters, theta_u fixed:

        L_u = sum_l (s_l - 1)^2 + alpha0 * sum_{all items i} a_ui^2 + l2 * (|theta_u|^2 + sum_{rows r touched}
              (|E_r|^2 + e_r^2)) + context_l2 * (|theta_ctx|^2 + |W_int|^2)

              + alpha0 * tr(Sigma_u sum_i v_i v_i^T),  v_i = W_int phi(i) + theta_ctx [context_dim]

    with s_l as in `ials_solve` and a_u = phi (theta_u + W_int^T x_u) + b + theta_ctx . x_u + b_0 [n_items] the
    catalogue scored at the user's mean context x_u. With Sigma_u [c, c] the covariance of the user's contexts, the
    two alpha0 terms are exactly alpha0 * mean_l sum_i (catalogue score at x_l)^2: the catalogue is pulled to 0 at
    every context the user engaged in. Without the Sigma_u term the context weights could raise the engagements'
    scores at their own contexts unopposed (measured: synthetic validation HR@10 0.01 instead of 0.05).

    The gradient of the item table is sparse on the touched rows plus two dense parts: the rank-one
    coef_u (x) dir_u, coef_u = 2 alpha0 a_u [n_items], dir_u = theta_u + W_int^T x_u [dim] (the item biases get
    coef_u itself), and basis @ spread_u, basis = [phi, 1] [n_items, dim + 1] (the same for every user) and
    spread_u [dim + 1, dim] (the Sigma_u term's pull on each phi(i)).

    Returns {"dense": {name: [U, ...]}, "row_user" [M], "rows" [M], "rows_emb" [M, dim] | None, "rows_bias" [M] |
    None, "coef" [U, n_items] | None, "dir" [U, dim] | None, "basis" [n_items, dim + 1] | None, "spread"
    [U, dim + 1, dim] | None, "loss" [U]} (the item parts only for the hybrid model). Float64 inside.
    """
    z = _ials_parts(params, item_h, offsets, items, ctx)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    phi, bias, h, x, ex_user = z["phi"], z["bias"], z["h"], z["x"], z["ex_user"]
    theta = np.asarray(theta, np.float64)
    U, hybrid = len(offsets) - 1, "items/embedding" in p
    q = theta[ex_user] + z["xw"]                                            # [n, dim]
    rho2 = 2.0 * (np.sum(q * phi[items], 1) + bias[items] + z["shift"] - 1.0)  # 2 (s_l - 1) [n]
    q_mean = theta + z["xw_mean"]                                            # [U, dim]
    a = q_mean @ phi.T + bias + z["shift_mean"][:, None]                     # [U, I]
    coef = 2.0 * alpha0 * a
    coef_sum = coef.sum(1)

    def per_user(v: np.ndarray) -> np.ndarray:
        out = np.zeros((U,) + v.shape[1:])
        np.add.at(out, ex_user, v)
        return out

    g_phi_rows = rho2[:, None] * q                                           # d L / d phi(i_l) [n, dim]
    kernel = segment_outer_sum(h[items], g_phi_rows, offsets) + np.einsum("ut,ud->utd", coef @ h, q_mean)
    interaction = (segment_outer_sum(x, rho2[:, None] * phi[items], offsets)
                   + np.einsum("uc,ud->ucd", z["x_mean"], coef @ phi))
    dense = {
        "tower/kernel": kernel,
        "tower/bias": per_user(g_phi_rows) + coef_sum[:, None] * q_mean,
        "text-bias/kernel": per_user(rho2[:, None] * h[items]) + coef @ h,
        "global-bias": (per_user(rho2) + coef_sum)[:, None],
        "context/shift": per_user(rho2[:, None] * x) + coef_sum[:, None] * z["x_mean"] + 2.0 * context_l2 * p["context/shift"],
        "context/interaction": interaction + 2.0 * context_l2 * p["context/interaction"],
    }
    sigma, m, spread, basis = _ials_context_spread(dense, z, p, offsets, alpha0)
    loss = (per_user(np.square(rho2 / 2.0)) + alpha0 * np.square(a).sum(1) + l2 * np.square(theta).sum(1)
            + alpha0 * np.einsum("uab,ab->u", sigma, m)
            + context_l2 * (np.square(p["context/shift"]).sum() + np.square(p["context/interaction"]).sum()))
    out = {"dense": dense, "row_user": np.zeros(0, np.int64), "rows": np.zeros(0, np.int64), "rows_emb": None,
           "rows_bias": None, "coef": None, "dir": None, "basis": None, "spread": None}
    if hybrid:
        row_user, rows, rows_emb, rows_bias, row_loss = _ials_row_gradients(ex_user, items, g_phi_rows, rho2, p, l2, U)
        loss += row_loss
        out.update(row_user=row_user, rows=rows, rows_emb=rows_emb, rows_bias=rows_bias, coef=coef, dir=q_mean,
                   basis=basis, spread=spread)
    out["loss"] = loss
    return out


def _ials_context_spread(dense: dict[str, np.ndarray], z: dict, p: Mapping[str, np.ndarray], offsets: np.ndarray,
                         alpha0: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The catalogue at each of the user's contexts, not only at their mean: the term
    alpha0 tr(Sigma_u sum_i v_i v_i^T) of `ials_user_gradients`, its gradients added to `dense` in place.
    z: `_ials_parts`; p: float64 parameters. Returns (sigma [U, c, c], sum_i v_i v_i^T [c, c], spread
    [U, dim + 1, dim], basis [n_items, dim + 1])."""
    phi, x, ex_user = z["phi"], z["x"], z["ex_user"]
    d = x - z["x_mean"][ex_user]
    sigma = segment_outer_sum(d, d, offsets) / np.maximum(np.diff(offsets), 1)[:, None, None]  # [U, c, c]
    W, tc = p["context/interaction"], p["context/shift"]
    wg_tp = W @ (phi.T @ phi) + np.outer(tc, phi.sum(0))                    # [c, dim]
    wp_nt = W @ phi.sum(0) + len(phi) * tc                                   # [c]
    m = wg_tp @ W.T + np.outer(wp_nt, tc)                                    # sum_i v_i v_i^T, v_i = W phi_i + tc
    dense["context/interaction"] += 2.0 * alpha0 * np.einsum("uab,bd->uad", sigma, wg_tp)
    dense["context/shift"] += 2.0 * alpha0 * sigma @ wp_nt
    # its gradient on every phi(i) is [phi(i), 1] @ spread_u: spread_u = [A_u; beta_u^T] [U, dim + 1, dim] with
    # A_u = 2 alpha0 W^T Sigma_u W and beta_u = 2 alpha0 W^T Sigma_u theta_ctx
    spread = 2.0 * alpha0 * np.concatenate([np.einsum("ad,uab,be->ude", W, sigma, W),
                                            np.einsum("ad,uab,b->ud", W, sigma, tc)[:, None, :]], axis=1)
    basis = np.hstack([phi, np.ones((len(phi), 1))])                         # [I, dim + 1]
    dense["tower/kernel"] += np.einsum("ta,uad->utd", z["h"].T @ basis, spread)
    dense["tower/bias"] += np.einsum("a,uad->ud", basis.sum(0), spread)
    return sigma, m, spread, basis


def _ials_row_gradients(ex_user: np.ndarray, items: np.ndarray, g_phi_rows: np.ndarray, rho2: np.ndarray,
                        p: Mapping[str, np.ndarray], l2: float, U: int) -> tuple[np.ndarray, ...]:
    """The sparse part of `ials_user_gradients`' item-table gradient (hybrid model), on the M (user, row) pairs
    the examples touch: (row_user [M], rows [M], rows_emb [M, dim], rows_bias [M], the rows' L2 loss [U])."""
    n_items = len(p["items/bias"])
    key = ex_user * n_items + items
    pairs, inverse = np.unique(key, return_inverse=True)
    row_user, rows = pairs // n_items, pairs % n_items
    rows_emb = np.zeros((len(pairs), g_phi_rows.shape[1]))
    np.add.at(rows_emb, inverse, g_phi_rows)
    rows_bias = np.bincount(inverse, weights=rho2, minlength=len(pairs))
    emb, ib = p["items/embedding"][rows], p["items/bias"][rows]
    row_loss = l2 * np.bincount(row_user, weights=np.square(emb).sum(1) + np.square(ib), minlength=U)
    return row_user, rows, rows_emb + 2.0 * l2 * emb, rows_bias + 2.0 * l2 * ib, row_loss
