"""Evaluation of users: full-catalogue ranking (HR@k, NDCG@k), the sampled protocol, sub-sampled evaluation users."""

from __future__ import annotations

import weakref
from typing import Callable, Mapping

import numpy as np

from common.config import Config, ConfigError
from common.federation.updates import _NEGATIVES
from common.federation.users import UserStore
from common.evaluation.metrics import hit_and_ndcg, sample_eval_negatives
from common.model.scoring import DENSE_NAMES, segment_sum
from common.model.formula import item_side, query_side
from common.privacy.sampling import user_rng, user_uniforms

__all__ = ["evaluate_users", "evaluate_scores", "eval_negatives", "catalogue_scorer", "context_averaged_scorer",
           "eval_sample"]


def evaluate_users(params: Mapping[str, np.ndarray], theta: np.ndarray, store: UserStore, item_h: np.ndarray,
                   cfg: Config, split: str, users: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-user metrics [len(users)] (default: every user of the store) on the held-out engagement of
    `split` ("val" or "test"). theta [store.n_users, dim]."""
    dense = {k: np.asarray(params[k], np.float32) for k in DENSE_NAMES}
    emb, bias = params.get("items/embedding"), params.get("items/bias")
    ctx = store.val_ctx if split == "val" else store.test_ctx
    return evaluate_scores(catalogue_scorer(dense, theta, ctx, item_h, emb, bias), store, item_h.shape[0], cfg,
                           split, users=users)


def catalogue_scorer(dense: Mapping[str, np.ndarray], theta: np.ndarray, ctx: np.ndarray, item_h: np.ndarray,
                     item_emb: np.ndarray | None, item_bias: np.ndarray | None) -> Callable[[np.ndarray], np.ndarray]:
    """score(users [n]) -> [n, n_items]: `common.model.formula.score_items` of those users' theta [U, dim] and ctx
    [U, context_dim], with the item side phi(c), b(c) computed once instead of once per block. The same eager
    TensorFlow ops on the same inputs, so the same float32 scores bit for bit."""
    import tensorflow as tf

    g, phi, b = _catalogue_item_side(dense, item_h, item_emb, item_bias)

    def score(users: np.ndarray) -> np.ndarray:
        q, shift = query_side(g, tf.convert_to_tensor(theta[users])[None], tf.convert_to_tensor(ctx[users])[None])
        return (tf.einsum("gld,grd->glr", q, phi) + b[:, None, :] + shift[..., None])[0].numpy()

    return score


def _catalogue_item_side(dense: Mapping[str, np.ndarray], item_h: np.ndarray, item_emb: np.ndarray | None,
                         item_bias: np.ndarray | None):
    """(dense as tensors with a group axis of 1, phi(c) [1, n_items, dim], b(c) [1, n_items]) of the catalogue."""
    import tensorflow as tf

    g = {k: tf.convert_to_tensor(v)[None] for k, v in dense.items()}
    phi, b = item_side(g, tf.convert_to_tensor(item_h)[None],
                       None if item_emb is None else tf.convert_to_tensor(item_emb)[None],
                       None if item_bias is None else tf.convert_to_tensor(item_bias)[None])
    return g, phi, b


def context_averaged_scorer(dense: Mapping[str, np.ndarray], theta: np.ndarray, store: UserStore,
                            item_h: np.ndarray, item_emb: np.ndarray | None, item_bias: np.ndarray | None,
                            average: str = "logits") -> Callable[[np.ndarray], np.ndarray]:
    """score(users [n]) -> [n, n_items]: a trained model's context-free twin, the same model and theta_u with the
    held-out context replaced by the user's own training contexts x_1..x_r (store.ctx) (a user without training
    rows: the zero context vector). The model's ranking at the test context minus this one's is the context gain
    the model itself captures.

    average "logits": the scores at the mean context (1/r) sum_j x_j, which are the mean of the scores at each
    x_j (the score is linear in x). "probabilities": log (1/r) sum_j softmax(s(u, x_j)) over the catalogue, the
    mixture, averaged in probability as the ceiling's `structure-context-free` averages the structure; a sharp
    (overconfident) softmax is a poor mixture, so this twin is the weaker of the two. theta [U, dim]; dense as
    `catalogue_scorer`.
    """
    width = np.asarray(dense["context/interaction"]).shape[0]
    if average == "logits":
        n = np.maximum(np.diff(store.offsets), 1)[:, None]
        mean_ctx = (segment_sum(store.ctx[:, :width], store.offsets) / n).astype(np.float32)
        return catalogue_scorer(dense, theta, mean_ctx, item_h, item_emb, item_bias)
    if average != "probabilities":
        raise ValueError(f"average: 'logits' or 'probabilities'. Found {average!r}.")
    _, phi, b = _catalogue_item_side(dense, item_h, item_emb, item_bias)
    phi, b = phi[0].numpy().astype(np.float64), b[0].numpy().astype(np.float64)
    w_int = np.asarray(dense["context/interaction"], np.float64)  # the shift theta_ctx . x cancels in a softmax

    def score(users: np.ndarray) -> np.ndarray:
        out = np.empty((len(users), phi.shape[0]))
        for j, u in enumerate(users):
            x = np.asarray(store.ctx[store.offsets[u]:store.offsets[u + 1], :width], np.float64)
            if not len(x):
                x = np.zeros((1, width))
            s = (theta[u][None, :] + x @ w_int) @ phi.T + b[None, :]     # [r, n_items]
            s -= s.max(axis=1, keepdims=True)
            s -= np.log(np.exp(s).sum(axis=1, keepdims=True))            # log softmax per context
            top = s.max(axis=0)
            out[j] = top + np.log(np.exp(s - top).mean(axis=0))          # log mean of the probabilities
        return out

    return score


def eval_sample(user_keys: np.ndarray, cfg: Config) -> np.ndarray:
    """Boolean mask [U]: the users an evaluation scores. All with eval-users=0; otherwise each user independently
    with probability eval-users / population, fixed by (seed, user) for the whole run (the same users every round,
    so rounds compare on the same sample), independent of which node holds the user."""
    if cfg.eval_users <= 0:
        return np.ones(len(user_keys), bool)
    if cfg.population <= 0:
        raise ConfigError("eval-users: needs population (the federation's number of users) to set each user's "
                          "probability eval-users / population; a simulation counts it, a deployment sets it.")
    return user_uniforms(cfg.seed, 0, user_keys, "eval-sample") < min(1.0, cfg.eval_users / cfg.population)


def evaluate_scores(score: Callable[[np.ndarray], np.ndarray], store: UserStore, n_items: int, cfg: Config,
                    split: str, chunk: int = 512, users: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-user HR/NDCG@k [len(users)] of any scorer, score(users [n]) -> [n, n_items], on `split`.

    Full ranking: the held-out item against every item not in the user's history (for "test",
    the validation item is history too). Sampled: against `eval_negatives` items the user never
    engaged with, drawn from a per-user stream fixed by the seed (the same for every system).

    Vectorised over blocks of `chunk` users: the rank is a count of scores >= the target's over the whole row,
    less the target itself and the excluded items scoring >= it (gathered from the store's CSR history in one
    pass per block); the sampled negatives are drawn once per (store, split) and kept (`eval_negatives`).
    Ties count against the target, as in `common.evaluation.metrics.rank_of_target`, whose results these equal exactly.
    """
    target = store.val_item if split == "val" else store.test_item
    which = np.arange(store.n_users) if users is None else np.asarray(users, np.int64)
    negs_all = eval_negatives(store, n_items, cfg, split, which)
    out = {m: np.zeros(len(which)) for m in ("hr", "ndcg", "hr-sampled", "ndcg-sampled")}
    for start in range(0, len(which), chunk):
        pos = slice(start, min(start + chunk, len(which)))
        users = which[pos]
        scores = np.asarray(score(users))
        if np.isnan(scores).any():  # a broken (NaN) score never ranks well
            scores = np.where(np.isnan(scores), -np.inf, scores)
        rows = np.arange(len(users))
        t = scores[rows, target[users]]
        rank = (scores >= t[:, None]).sum(axis=1) - 1 - _excluded_above(store, scores, t, users, target, split)
        out["hr"][pos], out["ndcg"][pos] = hit_and_ndcg(rank, cfg.top_k)
        negs = negs_all[pos]
        s_rank = ((np.take_along_axis(scores, np.maximum(negs, 0), axis=1) >= t[:, None]) & (negs >= 0)).sum(axis=1)
        out["hr-sampled"][pos], out["ndcg-sampled"][pos] = hit_and_ndcg(s_rank, cfg.top_k)
    return out


def _excluded_above(store: UserStore, scores: np.ndarray, t: np.ndarray, users: np.ndarray, target: np.ndarray,
                    split: str) -> np.ndarray:
    """[len(users)] distinct excluded items (history; for "test" the validation item too) other than the target
    whose score is >= the target's t; scores [len(users), n_items]."""
    lo, hi = store.offsets[users], store.offsets[users + 1]
    counts = hi - lo
    flat = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts - lo, counts)  # positions in store.items
    row, col = np.repeat(np.arange(len(users)), counts), store.items[flat]
    if split == "test":
        row, col = np.concatenate([row, np.arange(len(users))]), np.concatenate([col, store.val_item[users]])
    n_items = scores.shape[1]
    key = np.unique(row * np.int64(n_items) + col)  # each excluded item once per user
    row, col = key // n_items, key % n_items
    keep = (col != target[users][row]) & (scores[row, col] >= t[row])
    return np.bincount(row[keep], minlength=len(users))


def eval_negatives(store: UserStore, n_items: int, cfg: Config, split: str, users: np.ndarray) -> np.ndarray:
    """[len(users), eval_negatives] the sampled protocol's negatives of the given users (-1 pads a row when the
    user has fewer unseen items), each drawn by `common.evaluation.metrics.sample_eval_negatives` from the user's own stream
    (seed, split, user key). They depend on none of the model, so they are drawn once per store and split and kept
    while the store lives, for later rounds and other systems (int16 below 2^15 items: 198 bytes a user for both
    splits)."""
    per_store = _NEGATIVES.get(id(store))
    if per_store is None:
        per_store = _NEGATIVES[id(store)] = {}
        weakref.finalize(store, _NEGATIVES.pop, id(store), None)
    key = (n_items, cfg.seed, cfg.eval_negatives, split)
    hit = per_store.get(key)
    if hit is None:
        dtype = np.int16 if n_items < 2 ** 15 else np.int32
        hit = per_store[key] = (np.full((store.n_users, cfg.eval_negatives), -1, dtype), np.zeros(store.n_users, bool))
    negs, have = hit
    for u in users[~have[users]]:
        seen = np.concatenate([store.history(u), [store.val_item[u], store.test_item[u]]])
        rng = user_rng(cfg.seed, 0, store.user_keys[u], f"eval-{split}")
        drawn = sample_eval_negatives(n_items, seen, cfg.eval_negatives, rng)
        negs[u, : len(drawn)] = drawn
        have[u] = True
    return negs[users].astype(np.int64)
