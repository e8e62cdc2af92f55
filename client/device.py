"""What a device does for its own user between rounds: recommend, explain, and absorb feedback at once.

Pure functions, numpy arrays in and out; no Flower and no files. The score of item c for the user's
query (theta_u, x) is the model's (`common.model`):

    score(c) = theta_u . phi(c) + (W_int^T x) . phi(c) + (theta_ctx . x + b_0) + b(c)
               `----- user ----'  `- context_interaction -' `--- context_shift --'  `item_bias'

phi(c) and b(c) come from `common.model.scoring.item_side_np` (the numpy twin of `common.model.formula.item_side`; a test holds
them equal); this module only splits the query side into its parts, so each recommendation can say where its score
comes from. No TensorFlow here: a device command answers without paying its start.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from common.config import MODEL_LOSSES, Loss
from common.model.scoring import ials_solve_history, item_side_np, negative_shift

__all__ = ["ItemTables", "SimilarItem", "Recommendation", "item_tables", "recommend", "format_recommendations",
           "refresh_candidates", "refresh_theta"]


@dataclass(frozen=True)
class ItemTables:
    """The item side under fixed shared parameters: phi [n_items, dim] and b [n_items], the model's float32 values
    held as float64 (so the parts of a score add up without rounding). Computed once per global model
    (`item_tables`); a device can keep it between queries."""

    phi: np.ndarray
    bias: np.ndarray

    @property
    def n_items(self) -> int:
        return self.phi.shape[0]


def item_tables(params: Mapping[str, np.ndarray], item_h: np.ndarray) -> ItemTables:
    """phi(c) [n_items, dim] and b(c) [n_items] of every item; params: shared parameters (DENSE_NAMES, and
    ITEM_NAMES for the hybrid model); item_h [n_items, text_dim]. numpy only (`common.model.scoring.item_side_np`)."""
    phi, bias = item_side_np(params, item_h)
    return ItemTables(phi=phi.astype(np.float64), bias=bias.astype(np.float64))


@dataclass(frozen=True)
class SimilarItem:
    """One of the user's past items and its cosine similarity to a recommended item in phi space."""

    item: int
    similarity: float


@dataclass(frozen=True)
class Recommendation:
    """One recommended item and why. score == user + context_interaction + context_shift + item_bias.

    rank: 1-based position with the context; rank_without_context: its position among the same candidates
    when x = 0 (the context's whole effect on the order); similar_history: the user's past items nearest in
    phi space, most similar first."""

    item: int
    rank: int
    score: float
    user: float                  # theta_u . phi(c)
    context_interaction: float   # (W_int^T x) . phi(c)
    context_shift: float         # theta_ctx . x + b_0 (equal for every item)
    item_bias: float             # b(c)
    rank_without_context: int
    similar_history: tuple[SimilarItem, ...]

    def to_dict(self) -> dict:
        """Plain JSON-able dict (similar_history as a list of {item, similarity})."""
        out = asdict(self)
        out["similar_history"] = [asdict(s) for s in self.similar_history]
        return out


def _check_query(tables: ItemTables, params: Mapping[str, np.ndarray], theta_u: np.ndarray, ctx: np.ndarray,
                 history: np.ndarray) -> None:
    dim, context_dim = tables.phi.shape[1], np.shape(params["context/shift"])[0]
    if np.shape(theta_u) != (dim,):
        raise ValueError(f"theta_u: must have shape ({dim},) (the model's dim). Found {np.shape(theta_u)}.")
    if np.shape(ctx) != (context_dim,):
        raise ValueError(f"ctx: must have shape ({context_dim},) (the model's context_dim; encode it with "
                         f"ContextEncoder.transform). Found {np.shape(ctx)}.")
    bad = history[(history < 0) | (history >= tables.n_items)]
    if len(bad):
        raise ValueError(f"history: item indices must be in [0, {tables.n_items}). Found {bad[:5].tolist()}.")


def _top(scores: np.ndarray, eligible: np.ndarray, k: int) -> np.ndarray:
    """The k best eligible item indices, highest score first; ties by the lower item index."""
    cand = np.flatnonzero(eligible)
    if len(cand) > k:  # every item scoring at least the k-th best value (all of a tie), then an exact sort
        s = scores[cand]
        cand = cand[s >= np.partition(s, len(s) - k)[len(s) - k]]
    return cand[np.lexsort((cand, -scores[cand]))][:k]


def _rank_among(scores: np.ndarray, eligible: np.ndarray, item: int) -> int:
    """1-based position of `item` among the eligible items by score, ties by the lower item index (as `_top`)."""
    s = scores[item]
    ahead = (scores > s) | ((scores == s) & (np.arange(len(scores)) < item))
    return int(np.count_nonzero(ahead & eligible)) + 1


def _similar(phi: np.ndarray, item: int, past: np.ndarray, past_unit: np.ndarray, n: int) -> tuple[SimilarItem, ...]:
    """The n items of `past` (distinct indices, `item` left out) with the highest cosine to phi[item];
    past_unit [len(past), dim]: their phi scaled to unit norm."""
    keep = past != item
    if not keep.any() or n <= 0:
        return ()
    cos = past_unit[keep] @ (phi[item] / max(np.linalg.norm(phi[item]), 1e-12))
    top = np.argsort(-cos, kind="stable")[:n]
    return tuple(SimilarItem(item=int(past[keep][i]), similarity=float(cos[i])) for i in top)


def recommend(params: Mapping[str, np.ndarray], item_h: np.ndarray, theta_u: np.ndarray, ctx: np.ndarray,
              history: np.ndarray, k: int = 10, exclude_history: bool = True, n_similar: int = 3,
              tables: ItemTables | None = None) -> list[Recommendation]:
    """Top-k items for one user in one context, each with its explanation (`Recommendation`), best first.

    params: shared parameters; item_h [n_items, text_dim]; theta_u [dim]; ctx [context_dim] (the encoded
    context x); history [n] item indices the user engaged with (removed from the candidates when
    exclude_history; the source of similar_history either way). tables: `item_tables(params, item_h)` if the
    caller keeps it (else computed here). Fewer than k results when fewer items are left.
    Parts are computed in float64 from the model's float32 phi and b; ties are broken by the lower item index.
    """
    if k < 1:
        raise ValueError(f"k: must be >= 1. Found {k}.")
    tables = tables or item_tables(params, item_h)
    theta_u, ctx = np.asarray(theta_u, np.float64), np.asarray(ctx, np.float64)
    history = np.asarray(history, np.int64).reshape(-1)
    _check_query(tables, params, theta_u, ctx, history)
    w_x = np.asarray(params["context/interaction"], np.float64).T @ ctx                  # W_int^T x [dim]
    user, interaction = tables.phi @ theta_u, tables.phi @ w_x                           # [n_items] each
    shift = float(np.asarray(params["context/shift"], np.float64) @ ctx + np.float64(params["global-bias"][0]))
    bias = tables.bias
    scores = user + interaction + shift + bias
    no_context = user + float(params["global-bias"][0]) + bias  # x = 0
    eligible = np.ones(tables.n_items, bool)
    if exclude_history:
        eligible[history] = False
    past = np.unique(history)
    past_unit = tables.phi[past] / np.maximum(np.linalg.norm(tables.phi[past], axis=1, keepdims=True), 1e-12)
    out = []
    for rank, c in enumerate(_top(scores, eligible, k), start=1):
        out.append(Recommendation(
            item=int(c), rank=rank, score=float(scores[c]), user=float(user[c]),
            context_interaction=float(interaction[c]), context_shift=shift, item_bias=float(bias[c]),
            rank_without_context=_rank_among(no_context, eligible, int(c)),
            similar_history=_similar(tables.phi, int(c), past, past_unit, n_similar)))
    return out


def format_recommendations(recs: Sequence[Recommendation], titles: Sequence[str] | None = None,
                           title_width: int = 32) -> str:
    """A plain-text table for a terminal: one row per recommendation, the score's parts, the rank move the
    context causes (rank without context -> with), and the most similar past item. titles[i]: item i's name
    (default: its index)."""
    def name(i: int) -> str:
        s = str(i) if titles is None else str(titles[i])
        return s if len(s) <= title_width else s[: title_width - 1] + "~"

    head = ("rank", "item", "score", "user", "context", "shift", "bias", "no-ctx", "like (cosine)")
    rows = [head]
    for r in recs:
        like = ", ".join(f"{name(s.item)} ({s.similarity:.2f})" for s in r.similar_history) or "-"
        rows.append((str(r.rank), name(r.item), f"{r.score:+.3f}", f"{r.user:+.3f}", f"{r.context_interaction:+.3f}",
                     f"{r.context_shift:+.3f}", f"{r.item_bias:+.3f}", str(r.rank_without_context), like))
    widths = [max(len(row[j]) for row in rows) for j in range(len(head) - 1)]
    left = {1}
    lines = []
    for row in rows:
        cells = [row[j].ljust(widths[j]) if j in left else row[j].rjust(widths[j]) for j in range(len(widths))]
        lines.append("  ".join(cells + [row[-1]]).rstrip())
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def refresh_candidates(items: np.ndarray, n_items: int, negatives: int, seed: int) -> np.ndarray:
    """Candidates [n, 1 + negatives] of `refresh_theta`: column 0 the engaged item, then uniform items of the
    catalogue drawn from `seed` (as in training, a negative may repeat or equal the positive)."""
    rng = np.random.default_rng(seed)
    return np.concatenate([items[:, None], rng.integers(0, n_items, size=(len(items), negatives))], axis=1)


def refresh_theta(params: Mapping[str, np.ndarray], item_h: np.ndarray, theta_u: np.ndarray,
                  history_items: np.ndarray, history_ctx: np.ndarray, history_age_days: np.ndarray, *,
                  steps: int, lr: float, negatives: int, seed: int, l2: float, half_life_days: float,
                  loss: Loss, optimizer: str = "sgd", unobserved_weight: float = 0.5) -> np.ndarray:
    """theta_u [dim] after `steps` full-batch steps on the user's own history with the shared parameters FIXED,
    so new engagements count at once, before any round.

    history_items [n] item indices; history_ctx [n, context_dim]; history_age_days [n] (>= 0; any origin:
    only differences count). Example i weighs w_i = 2^(-(age_i - min age) / half_life_days) (newest 1), so the
    loss is the w-weighted mean of the training loss (`loss`: "softmax" | "bce", each engagement against
    `negatives` uniform items drawn from `seed`) plus l2 |theta_u|^2. Step size lr (SGD or Adam).
    The objective is `common.model.formula.group_loss`, the one `local_train` minimises (`local_train` with lr=0 for the
    shared parameters and no clipping gives the same theta_u; a test holds them equal). Only theta_u moves and
    d score(c) / d theta_u = phi(c), so its gradient is written out here in numpy (float64; the model's float32
    phi and b): a device refreshes without TensorFlow. An empty history returns theta_u unchanged.
    With loss="ials" theta_u is solved in closed form (`common.model.scoring.ials_solve_history`; steps, lr, negatives, seed,
    the time weights and optimizer play no part).
    """
    theta_u = np.asarray(theta_u, np.float32)
    items = np.asarray(history_items, np.int64).reshape(-1)
    n_items = np.shape(item_h)[0]
    if steps < 0:
        raise ValueError(f"steps: must be >= 0. Found {steps}.")
    if negatives < 1:
        raise ValueError(f"negatives: must be >= 1. Found {negatives}.")
    if not half_life_days > 0:
        raise ValueError(f"half_life_days: must be > 0. Found {half_life_days}.")
    if loss not in MODEL_LOSSES or optimizer not in ("sgd", "adam"):
        raise ValueError(f"loss, optimizer: must be 'softmax', 'bce' or 'ials', and 'sgd' or 'adam'. Found "
                         f"{loss!r}, {optimizer!r}.")
    context_dim = np.shape(params["context/shift"])[0]
    history_ctx = np.asarray(history_ctx, np.float32).reshape(len(items), context_dim)
    age = np.asarray(history_age_days, np.float64).reshape(-1)
    if len(age) != len(items):
        raise ValueError(f"history_age_days: must have one age per engagement ({len(items)}). Found {len(age)}.")
    if loss == "ials" and len(items):
        return ials_solve_history(params, item_h, items, history_ctx, unobserved_weight, l2)
    if len(items) == 0 or steps == 0:
        return theta_u.copy()
    cand = refresh_candidates(items, n_items, negatives, seed)
    weight = np.exp2(-(age - age.min()) / half_life_days)
    return _refresh_steps(params, item_h, theta_u, cand, history_ctx, weight, steps=steps, lr=lr, l2=l2,
                          neg_shift=negative_shift(n_items, negatives),
                          adam=optimizer == "adam", loss=loss)


def _refresh_steps(params: Mapping[str, np.ndarray], item_h: np.ndarray, theta_u: np.ndarray, cand: np.ndarray,
                   history_ctx: np.ndarray, weight: np.ndarray, *, steps: int, lr: float, l2: float, adam: bool,
                   loss: str, neg_shift: float = 0.0) -> np.ndarray:
    """`steps` SGD or Adam steps on theta_u [dim] alone of `common.model.formula.group_loss` over the candidates cand
    [n, 1 + negatives] (column 0 engaged), contexts history_ctx [n, context_dim] and example weights weight [n]:

        L(theta) = sum_i w_i l(s_i) / max(sum_i w_i, 1) + l2 |theta|^2,   s_ic = (theta + W_int^T x_i) . phi(c_ic)
                   + b(c_ic) + theta_ctx . x_i + b_0
        dL/dtheta = sum_i w_i sum_c r_ic phi(c_ic) / max(sum_i w_i, 1) + 2 l2 theta,
        r_ic = softmax(s_i + shift)_c - [c = 0] (loss "softmax"; neg_shift added to the negatives' logits, as
        `common.model.formula.candidate_loss`) or sigmoid(s_ic) - [c = 0] (loss "bce").
    Adam as `common.model.training.local_train` (beta1 0.9, beta2 0.999, eps 1e-8, bias-corrected)."""
    rows, local = np.unique(cand, return_inverse=True)
    local = local.reshape(cand.shape)
    sub = {k: params[k] for k in ("tower/kernel", "tower/bias", "text-bias/kernel")}
    if params.get("items/embedding") is not None:
        sub.update({"items/embedding": np.asarray(params["items/embedding"])[rows],
                    "items/bias": np.asarray(params["items/bias"])[rows]})
    phi, bias = (a.astype(np.float64) for a in item_side_np(sub, np.asarray(item_h)[rows]))
    x = np.asarray(history_ctx, np.float64)
    phi_c = phi[local]                                                                     # [n, C, dim]
    shift = x @ np.asarray(params["context/shift"], np.float64) + np.float64(params["global-bias"][0])
    fixed = np.einsum("nd,ncd->nc", x @ np.asarray(params["context/interaction"], np.float64), phi_c) + \
        bias[local] + shift[:, None]                                                       # s without theta
    w = np.asarray(weight, np.float64)
    denom = max(w.sum(), 1.0)
    theta = np.asarray(theta_u, np.float64).copy()
    m, v = np.zeros_like(theta), np.zeros_like(theta)
    for t in range(steps):
        s = fixed + phi_c @ theta                                                          # [n, C]
        if loss == "softmax":
            s = np.concatenate([s[:, :1], s[:, 1:] + neg_shift], axis=1)
            r = np.exp(s - s.max(axis=1, keepdims=True))
            r /= r.sum(axis=1, keepdims=True)
        else:
            r = 0.5 * (1.0 + np.tanh(0.5 * s))                                             # sigmoid, stable
        r[:, 0] -= 1.0
        g = np.einsum("n,nc,ncd->d", w, r, phi_c) / denom + 2.0 * l2 * theta
        if not adam:
            theta = theta - lr * g
            continue
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        theta = theta - lr * (m / (1 - 0.9 ** (t + 1))) / (np.sqrt(v / (1 - 0.999 ** (t + 1))) + 1e-8)
    return theta.astype(np.float32)
