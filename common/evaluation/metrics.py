"""Ranking metrics: HR@K and NDCG@K, full ranking and the sampled (1 + n negatives) protocol."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from common.federation.protocol import SQUARES, STANDARD_ERROR, evaluation_keys

__all__ = ["rank_of_target", "hit_and_ndcg", "sample_eval_negatives", "evaluation_keys", "standard_errors"]


def standard_errors(metrics: Mapping[str, float], users: int) -> dict[str, float]:
    """Aggregated evaluation metrics with every `<key>-sq` (the mean over `users` sampled users of the squared
    per-user value) replaced by `<key>-se`, the standard error of the mean `<key>`: sqrt(s^2 / n) with the
    sample variance s^2 = n / (n - 1) (mean of squares - mean^2) (NaN below 2 users)."""
    out = {k: v for k, v in metrics.items() if not k.endswith(SQUARES)}
    for key, sq in metrics.items():
        base = key[:-len(SQUARES)]
        if key.endswith(SQUARES) and base in metrics:
            mean, n = float(metrics[base]), int(users)
            var = max(float(sq) - mean * mean, 0.0) * n / (n - 1) if n > 1 else float("nan")
            out[base + STANDARD_ERROR] = math.sqrt(var / n) if n > 1 else float("nan")
    return out


def rank_of_target(scores: np.ndarray, target: np.ndarray, exclude: Sequence[np.ndarray]) -> np.ndarray:
    """0-based rank [U] of each user's target item among all items not excluded.

    scores [U, n_items]; target [U] item index; exclude[u] item indices removed from the ranking
    (the user's history; the target itself is never removed). Ties count against the target
    (rank = number of candidates scoring >= the target, other than the target), so a constant
    scorer cannot look good.
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    scores[np.isnan(scores)] = -np.inf  # a broken (NaN) score never ranks well
    candidate = np.ones(scores.shape, bool)
    rows = np.repeat(np.arange(len(exclude)), [len(e) for e in exclude])
    cols = np.concatenate(exclude).astype(np.int64) if len(exclude) else np.zeros(0, np.int64)
    candidate[rows, cols] = False
    idx = np.arange(len(target))
    candidate[idx, target] = False
    t = scores[idx, target]
    return ((scores >= t[:, None]) & candidate).sum(axis=1)


def hit_and_ndcg(rank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user HR@k (1 if rank < k) and NDCG@k (1 / log2(rank + 2) if rank < k) for one relevant item."""
    rank = np.asarray(rank)
    hit = (rank < k).astype(np.float64)
    ndcg = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    return hit, ndcg


def sample_eval_negatives(n_items: int, seen: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """n distinct item indices [n] uniformly from items not in `seen` (the user's engaged items)."""
    excluded = np.zeros(n_items, bool)
    excluded[np.asarray(seen, np.int64)] = True
    allowed = np.flatnonzero(~excluded)  # sorted, as np.setdiff1d(np.arange(n_items), seen) (but no sort)
    if len(allowed) <= n:
        return allowed
    return rng.choice(allowed, size=n, replace=False)
