"""The context-aware scoring model: the one place the formula lives (TensorFlow side; common.model.scoring holds its numpy twins)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import tensorflow as tf

from common.config import MODEL_LOSSES
from common.model.scoring import CONTEXT_NAMES, DENSE_NAMES, SHIFT_INVARIANT

__all__ = ["ModelShape", "GroupParams", "TrainBatch", "trainable_dense", "init_shared", "item_side", "query_side",
    "group_logits", "score_items", "bce_with_negatives", "candidate_loss", "group_loss"]


def trainable_dense(loss: str) -> tuple[str, ...]:
    """Dense shared parameters that `loss` trains (all but SHIFT_INVARIANT under softmax)."""
    if loss not in MODEL_LOSSES:  # "auto" is not a model's loss: pass Config.model_loss
        raise ValueError(f"loss: one model's loss is 'softmax', 'bce' or 'ials'. Found {loss!r}.")
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

    cand [G, L, C] int32 indexes the group's R item rows. The same score as `item_side` and `query_side`, summed
    in another order: q . (W^T h + b_W) + w_b . h = h . (W q + w_b) + q . b_W, so the tower is applied to the L
    queries (L x text_dim x dim) instead of to the R item rows (R x text_dim x dim, and R ~ L x C).
    """
    q, shift = query_side(dense, theta, ctx)
    text_query = tf.einsum("gld,ghd->glh", q, dense["tower/kernel"]) + dense["text-bias/kernel"][:, None, :]
    h_c = tf.gather(rows_h, cand, batch_dims=1)  # [G, L, C, text_dim]
    logits = tf.einsum("glh,glch->glc", text_query, h_c)
    base = tf.einsum("gld,gd->gl", q, dense["tower/bias"]) + shift
    if rows_emb is not None:
        logits += tf.einsum("gld,glcd->glc", q, tf.gather(rows_emb, cand, batch_dims=1))
        logits += tf.gather(rows_bias, cand, batch_dims=1)
    return logits + base[..., None]


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
    if kind != "bce":  # "auto" is not a model's loss: pass Config.model_loss
        raise ValueError(f"loss: candidate_loss takes 'softmax' or 'bce'. Found {kind!r}.")
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
