"""Local training of a group of users: SGD/Adam steps, example-level DP-SGD, the DP warm start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import tensorflow as tf

from common.model.formula import GroupParams, TrainBatch, candidate_loss, group_logits, group_loss, trainable_dense
from common.model.scoring import CONTEXT_NAMES

__all__ = ["StepRule", "local_train", "dp_local_train", "dp_warm_start_sum", "dp_warm_start_theta"]


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
