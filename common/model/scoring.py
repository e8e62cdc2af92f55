"""The model's formula in numpy, for what must run without TensorFlow (a device answering a tap): the item side
phi(c), b(c) of the whole catalogue, the warm start and the closed-form (iALS) theta_u. `common.model` holds the
TensorFlow training code and re-exports these; the item formula is the one in its docstring:

    phi(c) = W_f^T h(c) + b_f [+ E[c]]        b(c) = w_b . h(c) [+ e[c]]
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

__all__ = ["DENSE_NAMES", "CONTEXT_NAMES", "ITEM_NAMES", "SHIFT_INVARIANT", "SECONDS_PER_DAY", "item_side_np",
           "negative_shift", "warm_start_theta", "segment_sum", "segment_outer_sum", "ials_theta", "ials_solve",
           "ials_solve_history"]

SECONDS_PER_DAY = 86400.0

#: Shared parameters every user's copy carries (small; trained densely).
DENSE_NAMES = (
    "tower/kernel",         # W_f [text_dim, dim]
    "tower/bias",           # b_f [dim]
    "text-bias/kernel",     # w_b [text_dim]
    "global-bias",          # b_0 [1]
    "context/shift",        # theta_ctx [context_dim]
    "context/interaction",  # W_int [context_dim, dim]
)
#: Terms equal for every candidate of an example; a softmax over candidates cannot learn them, so
#: they are kept fixed under loss="softmax" (numerical-noise gradients would otherwise move them).
SHIFT_INVARIANT = ("global-bias", "context/shift")
#: Context weights pulled toward zero by `context-l2` (where the context carries no signal they stay near 0, so
#: the context-aware model ranks like the context-free one).
CONTEXT_NAMES = ("context/shift", "context/interaction")
#: Shared item-id tables of the hybrid model (updated densely: the whole table is sent).
ITEM_NAMES = ("items/embedding", "items/bias")  # E [n_items, dim], e [n_items]


def negative_shift(n_items: int, negatives: int) -> float:
    """log((n_items - 1) / negatives): the sampled softmax's correction for K uniform negatives.

    Each of K negatives drawn uniformly from the other n - 1 items stands for (n - 1) / K of them, so adding
    this to the negatives' logits makes the sampled partition sum estimate the full softmax's (Bengio and
    Senecal 2008; Jean et al. 2015, the log Q correction with Q uniform). Without it the K negatives weigh as if
    they were the whole catalogue, and the softmax learns far less from each engagement.
    """
    return float(np.log(max(n_items - 1, 1) / negatives)) if negatives > 0 else 0.0


def item_side_np(params: Mapping[str, np.ndarray], item_h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """phi(c) [n_items, dim] and b(c) [n_items] of every item, in float32 as `common.model.formula.item_side` computes
    them (params: one copy of the shared parameters, DENSE_NAMES [and ITEM_NAMES]; item_h [n_items, text_dim])."""
    h = np.asarray(item_h, np.float32)
    phi = h @ np.asarray(params["tower/kernel"], np.float32) + np.asarray(params["tower/bias"], np.float32)
    bias = h @ np.asarray(params["text-bias/kernel"], np.float32)
    if params.get("items/embedding") is not None:
        phi = phi + np.asarray(params["items/embedding"], np.float32)
        bias = bias + np.asarray(params["items/bias"], np.float32)
    return phi, bias


def warm_start_theta(phi_history: np.ndarray, age_days: np.ndarray, half_life_days: float) -> np.ndarray:
    """Time-decayed history profile r = sum_i w_i phi(c_i) / sum_i w_i, w_i = 2^(-age_i / half_life).

    phi_history [n, dim]; age_days [n] (>= 0, age of each engagement relative to the newest).
    Returns [dim]; zeros for an empty history.
    """
    if len(phi_history) == 0:
        return np.zeros(phi_history.shape[1], np.float32)
    w = np.exp2(-np.asarray(age_days, np.float64) / half_life_days)
    return (w @ phi_history / w.sum()).astype(np.float32)


def segment_sum(v: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """sum_{l in segment u} v_l [U, ...] for segments offsets [U + 1] (offsets[-1] = n) of the rows of v [n, ...];
    0 for an empty segment. Float64."""
    offsets = np.asarray(offsets, np.int64)
    out = np.zeros((len(offsets) - 1,) + v.shape[1:])
    full = np.flatnonzero(np.diff(offsets) > 0)
    if len(full):
        out[full] = np.add.reduceat(np.asarray(v, np.float64), offsets[full], axis=0)
    return out


def segment_outer_sum(a: np.ndarray, b: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """sum_{l in segment u} a_l b_l^T [U, p, q] for segments offsets [U + 1] of the rows of a [n, p], b [n, q]
    (one small matrix product per segment, on views: far faster here than one broadcast outer product)."""
    out = np.zeros((len(offsets) - 1, a.shape[1], b.shape[1]))
    for u in range(len(offsets) - 1):
        lo, hi = offsets[u], offsets[u + 1]
        if hi > lo:
            out[u] = a[lo:hi].T @ b[lo:hi]
    return out


def ials_theta(phi: np.ndarray, offsets: np.ndarray, items: np.ndarray, target: np.ndarray, pull: np.ndarray,
               alpha0: float, lam: float) -> np.ndarray:
    """Closed-form user vectors [U, dim] of the implicit-ALS objective (Hu et al. 2008, in the form of
    Rendle et al. 2021): theta_u minimises

        sum_{l in history} (phi_{i_l} . theta - target_l)^2 + alpha0 * sum_{all items i} (phi_i . theta + z_ui)^2
        + lam * |theta|^2,

    where everything but theta is folded into target [n] (one per engagement) and z_u, given as pull [U, dim] =
    phi^T z_u. phi [n_items, dim]; the history of user u is items[offsets[u]:offsets[u + 1]]. The all-items term
    needs only the Gramian phi^T phi: a device solves for its own theta_u from the shared item side alone.
    Float64 inside.
    """
    phi = np.asarray(phi, np.float64)
    dim = phi.shape[1]
    f = phi[items]
    gram = segment_outer_sum(f, f, offsets) + alpha0 * (phi.T @ phi) + lam * np.eye(dim)  # [U, dim, dim]
    rhs = segment_outer_sum(f, np.asarray(target, np.float64)[:, None], offsets)[..., 0] - alpha0 * pull
    return np.linalg.solve(gram, rhs[..., None])[..., 0].astype(np.float32)


def _ials_parts(params: Mapping[str, np.ndarray], item_h: np.ndarray, offsets: np.ndarray, items: np.ndarray,
                ctx: np.ndarray) -> dict[str, np.ndarray]:
    """The pieces both iALS functions share (float64): phi [I, dim], b [I] (item bias, no shift), per engagement
    the context part of the query xw [n, dim] and the shift [n]; per user the mean context [U, c], its query part
    xw_mean [U, dim] and shift_mean [U]; ex_user [n]."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    h = np.asarray(item_h, np.float64)
    phi = h @ p["tower/kernel"] + p["tower/bias"]
    bias = h @ p["text-bias/kernel"]
    if "items/embedding" in p:
        phi, bias = phi + p["items/embedding"], bias + p["items/bias"]
    counts = np.diff(offsets)
    ex_user = np.repeat(np.arange(len(counts)), counts)
    x = np.asarray(ctx, np.float64).reshape(len(items), -1)
    x_mean = segment_sum(x, offsets) / np.maximum(counts, 1)[:, None]
    return {"phi": phi, "bias": bias, "h": h, "x": x, "ex_user": ex_user, "x_mean": x_mean,
            "xw": x @ p["context/interaction"], "shift": x @ p["context/shift"] + p["global-bias"][0],
            "xw_mean": x_mean @ p["context/interaction"], "shift_mean": x_mean @ p["context/shift"] + p["global-bias"][0]}


def ials_solve(params: Mapping[str, np.ndarray], item_h: np.ndarray, offsets: np.ndarray, items: np.ndarray,
               ctx: np.ndarray, alpha0: float, lam: float) -> np.ndarray:
    """theta_u [U, dim] minimising each user's `ials_user_gradients` loss under the given shared parameters.

    Engagement l (item i_l, context x_l) is scored s_l = (theta + W_int^T x_l) . phi(i_l) + b(i_l) + theta_ctx . x_l
    + b_0 and pulled to 1; the whole catalogue is scored at the user's mean context x_u and pulled to 0 with
    weight alpha0. offsets [U + 1] index items [n] and ctx [n, context_dim]."""
    z = _ials_parts(params, item_h, offsets, items, ctx)
    phi = z["phi"]
    target = 1.0 - (z["bias"][items] + z["shift"] + np.sum(z["xw"] * phi[items], axis=1))
    # pull_u = phi^T (phi xw_u + b + shift_u): the all-items scores without theta, folded through phi
    pull = z["xw_mean"] @ (phi.T @ phi) + phi.T @ z["bias"] + z["shift_mean"][:, None] * phi.sum(0)
    return ials_theta(phi, offsets, items, target, pull, alpha0, lam)


def ials_solve_history(params: Mapping[str, np.ndarray], item_h: np.ndarray, items: np.ndarray, ctx: np.ndarray,
                       alpha0: float, lam: float) -> np.ndarray:
    """theta_u [dim] of one user from its history (items [n], ctx [n, context_dim]): `ials_solve` for one user."""
    return ials_solve(params, item_h, np.array([0, len(items)]), items, ctx, alpha0, lam)[0]
