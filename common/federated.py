"""What a node does for its users, without any Flower message handling.

A node holds a `UserStore` (one user on a device, a shard of users in simulation). Each sampled
user trains its private theta_u and its own copy of the shared parameters from the same global
starting point; `user_updates` returns every user's change of the shared parameters separately
(`UserUpdates`), so it can later be clipped and noised per user. theta_u stays in the store.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from common.config import Config
from common.metrics import hit_and_ndcg, rank_of_target, sample_eval_negatives
from common.model import (DENSE_NAMES, dp_local_train, item_side, local_train, score_items, trainable_dense,
                          warm_start_theta)
from common.privacy import SecureGaussian

__all__ = ["UserStore", "UserUpdates", "user_rng", "poisson_sample", "training_members", "user_updates", "evaluate_users",
           "item_representations", "init_theta", "distinct_candidates",
           "evaluate_scores"]

SECONDS_PER_DAY = 86400.0


def user_rng(seed: int, round_: int, user_key: str, purpose: str) -> np.random.Generator:
    """Random stream of one user in one round, independent of which node holds the user."""
    digest = hashlib.blake2b(f"{seed}|{round_}|{purpose}|{user_key}".encode(), digest_size=16).digest()
    return np.random.default_rng(int.from_bytes(digest, "little"))


def poisson_sample(user_keys: np.ndarray, q: float, seed: int, round_: int) -> np.ndarray:
    """Boolean mask [U]: each user takes part independently with probability q (Poisson sampling).

    The server owns q and the seed; the decision of a user depends only on (seed, round, user),
    so it is the same whether the user is alone on a device or in a simulated shard.
    """
    if q >= 1.0:
        return np.ones(len(user_keys), bool)
    u = np.array([user_rng(seed, round_, str(k), "sample").random() for k in user_keys])
    return u < q


def training_members(user_keys: np.ndarray, audit_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask [U]: users who may train. The others (share `audit_fraction`, fixed by seed and
    user) never take part; they are the non-members of the membership-inference audit."""
    if audit_fraction <= 0.0:
        return np.ones(len(user_keys), bool)
    u = np.array([user_rng(seed, 0, str(k), "audit-holdout").random() for k in user_keys])
    return u >= audit_fraction


@dataclass(frozen=True)
class UserStore:
    """Engagements of the users a node holds (CSR by user); all of it stays on the node.

    offsets [U + 1] index items/age_days/ctx [n]; val_*/test_* hold one held-out engagement
    per user (item index, context [U, context_dim]).
    """

    user_keys: np.ndarray
    offsets: np.ndarray
    items: np.ndarray
    age_days: np.ndarray
    ctx: np.ndarray
    val_item: np.ndarray
    val_ctx: np.ndarray
    test_item: np.ndarray
    test_ctx: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_keys)

    def history(self, u: int) -> np.ndarray:
        return self.items[self.offsets[u]: self.offsets[u + 1]]

    @classmethod
    def from_prepared(cls, ds, users: np.ndarray, use_context: bool = True) -> "UserStore":
        """Store of the given user indices of a `common.data.PreparedDataset`."""
        users = np.asarray(users, np.int64)
        train = ds.train
        order = np.argsort(train.user, kind="stable")
        user_sorted = train.user[order]
        lo = np.searchsorted(user_sorted, users, side="left")
        hi = np.searchsorted(user_sorted, users, side="right")
        take = np.concatenate([order[a:b] for a, b in zip(lo, hi)]) if len(users) else np.zeros(0, np.int64)
        counts = hi - lo
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        time = train.time[take].astype(np.float64)
        newest = np.repeat(np.maximum.reduceat(time, offsets[:-1]) if len(time) else np.zeros(0), counts)
        width = ds.context_dim if use_context else 0
        pos_val = np.searchsorted(ds.val.user, users)
        pos_test = np.searchsorted(ds.test.user, users)
        return cls(
            user_keys=np.asarray(ds.user_ids)[users].astype(str),
            offsets=offsets,
            items=train.item[take].astype(np.int64),
            age_days=((newest - time) / SECONDS_PER_DAY).astype(np.float32),
            ctx=train.context[take][:, :width].astype(np.float32),
            val_item=ds.val.item[pos_val].astype(np.int64),
            val_ctx=ds.val.context[pos_val][:, :width].astype(np.float32),
            test_item=ds.test.item[pos_test].astype(np.int64),
            test_ctx=ds.test.context[pos_test][:, :width].astype(np.float32),
        )


@dataclass(frozen=True)
class UserUpdates:
    """Per-user change of the shared parameters after local training.

    dense {name: [U, ...]}; rows [U, R] global item index of each item row the user touched
    (-1 = padding); rows_emb [U, R, dim] and rows_bias [U, R] their change (hybrid model only).
    loss [U] final local training loss; n_examples [U].
    """

    dense: dict[str, np.ndarray]
    rows: np.ndarray
    rows_emb: np.ndarray | None
    rows_bias: np.ndarray | None
    loss: np.ndarray
    n_examples: np.ndarray
    free_noise_std: np.ndarray | None = None   # [U] local DP: noise std of each item row the user did not touch
    noise: SecureGaussian | None = None

    @property
    def n_users(self) -> int:
        return len(self.rows)

    def _free_noise(self, std_sq_rows: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian noise for the item table [n_items, dim] and biases [n_items], given each row's variance."""
        std = np.sqrt(np.maximum(std_sq_rows, 0.0))
        emb = self.noise.normal(1.0, (len(std), dim)) * std[:, None]
        bias = self.noise.normal(1.0, (len(std),)) * std
        return emb.astype(np.float32), bias.astype(np.float32)

    def user_update(self, u: int, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        """The whole shared-parameter update of user u, as dense arrays of the full shapes."""
        out = {k: self.dense[k][u].copy() for k in DENSE_NAMES}
        if self.rows_emb is not None:
            real = self.rows[u] >= 0
            emb = np.zeros(shapes["items/embedding"], np.float32)
            bias = np.zeros(shapes["items/bias"], np.float32)
            if self.free_noise_std is not None:  # local DP: the rows the user did not touch are noised too
                var = np.full(len(bias), self.free_noise_std[u] ** 2)
                var[self.rows[u][real]] = 0.0
                emb, bias = self._free_noise(var, emb.shape[1])
            emb[self.rows[u][real]] = self.rows_emb[u][real]
            bias[self.rows[u][real]] = self.rows_bias[u][real]
            out["items/embedding"], out["items/bias"] = emb, bias
        return out

    def total(self, shapes: Mapping[str, tuple[int, ...]], scale: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Sum over users of their updates (each times scale[u], e.g. a clip factor), as dense full-shape arrays."""
        w = np.ones(self.n_users, np.float32) if scale is None else np.asarray(scale, np.float32)
        out = {k: np.tensordot(w, self.dense[k], axes=1) for k in DENSE_NAMES}
        if self.rows_emb is not None:
            real = self.rows >= 0
            emb = np.zeros(shapes["items/embedding"], np.float32)
            bias = np.zeros(shapes["items/bias"], np.float32)
            if self.free_noise_std is not None:
                # local DP: every user's untouched rows carry N(0, std_u^2) noise; their sum over users is
                # one Gaussian per row with the summed variance (exact in distribution)
                var_u = (w * self.free_noise_std) ** 2
                var = np.full(len(bias), var_u.sum())
                users = np.broadcast_to(np.arange(self.n_users)[:, None], self.rows.shape)[real]
                np.subtract.at(var, self.rows[real], var_u[users])
                emb, bias = self._free_noise(var, emb.shape[1])
            np.add.at(emb, self.rows[real], (self.rows_emb * w[:, None, None])[real])
            np.add.at(bias, self.rows[real], (self.rows_bias * w[:, None])[real])
            out["items/embedding"], out["items/bias"] = emb, bias
        return out

    def norms(self) -> np.ndarray:
        """L2 norm [U] of each user's whole shared-parameter update."""
        sq = sum(np.square(v.reshape(len(v), -1)).sum(axis=1) for v in self.dense.values())
        if self.rows_emb is not None:
            real = (self.rows >= 0).astype(np.float32)
            sq = sq + (np.square(self.rows_emb).sum(-1) * real).sum(1) + (np.square(self.rows_bias) * real).sum(1)
        return np.sqrt(sq)


def item_representations(params: Mapping[str, np.ndarray], item_h: np.ndarray) -> np.ndarray:
    """phi(c) [n_items, dim] under the given shared parameters."""
    dense = {k: np.asarray(params[k])[None] for k in DENSE_NAMES}
    emb = params.get("items/embedding")
    bias = params.get("items/bias")
    phi, _ = item_side(dense, item_h[None], None if emb is None else emb[None],
                       None if bias is None else bias[None])
    return phi[0].numpy()


def init_theta(store: UserStore, users: np.ndarray, phi: np.ndarray, half_life_days: float) -> np.ndarray:
    """Warm start theta_u [len(users), dim] from each user's time-decayed history."""
    return np.stack([
        warm_start_theta(phi[store.history(u)], store.age_days[store.offsets[u]: store.offsets[u + 1]],
                         half_life_days)
        for u in users
    ]) if len(users) else np.zeros((0, phi.shape[1]), np.float32)


def _chunks(sizes: np.ndarray, max_cells: int) -> list[np.ndarray]:
    """Split positions of users sorted by size into groups whose padded size G*L stays below max_cells."""
    order = np.argsort(sizes, kind="stable")
    groups, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * sizes[order[end]] <= max_cells:
            end += 1
        groups.append(order[start:end])
        start = end
    return groups


def user_updates(params: Mapping[str, np.ndarray], theta: np.ndarray, store: UserStore, users: np.ndarray,
                 item_h: np.ndarray, cfg: Config, round_: int,
                 max_cells: int = 16384, noise: SecureGaussian | None = None) -> tuple[UserUpdates, np.ndarray]:
    """Local training of the given users (indices into the store), each from the same global params.

    params: global shared parameters; theta [len(users), dim] their current private vectors.
    Returns (per-user updates of the shared parameters, new theta [len(users), dim]).
    With cfg.privacy "local" or "local+central" every user trains by DP-SGD (`common.model.dp_local_train`)
    with Gaussian noise from `noise` (default: a secure source), and the item rows a user did not touch
    get the same noise, so the update does not reveal which items the user engaged with.
    """
    local_dp = cfg.privacy in ("local", "local+central")
    if local_dp:
        noise = noise or SecureGaussian()
        max_cells = min(max_cells, 4096)  # one parameter copy per example
        if cfg.negatives > item_h.shape[0] - 1:
            raise ValueError(f"negatives: must be < the number of items ({item_h.shape[0]}) with local DP "
                             f"(each example's candidates are distinct items). Found {cfg.negatives}.")
    users = np.asarray(users, np.int64)
    hybrid = "items/embedding" in params
    n_items, dim = item_h.shape[0], cfg.dim
    sizes = np.array([store.offsets[u + 1] - store.offsets[u] for u in users], np.int64)
    new_theta = np.array(theta, np.float32, copy=True)
    U = len(users)
    dense_out = {k: np.zeros((U,) + np.shape(params[k]), np.float32) for k in DENSE_NAMES}
    row_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]] = []
    loss = np.zeros(U, np.float32)
    K = cfg.negatives
    for group in _chunks(sizes, max_cells):
        G = len(group)
        L = int(sizes[group].max())
        cand_rows, locals_, rows_list = [], [], []
        for pos in group:
            u = users[pos]
            hist = store.history(u)
            rng = user_rng(cfg.seed, round_, store.user_keys[u], "negatives")
            if local_dp:
                cand = distinct_candidates(rng, hist, n_items, K)
            else:
                negs = rng.integers(0, n_items, size=(len(hist), K))
                cand = np.concatenate([hist[:, None], negs], axis=1)
            rows, inverse = np.unique(cand, return_inverse=True)
            rows_list.append(rows)
            locals_.append(inverse.reshape(cand.shape))
        R = max(len(r) for r in rows_list)
        rows = np.full((G, R), -1, np.int64)
        row_mask = np.zeros((G, R), np.float32)
        cand = np.zeros((G, L, K + 1), np.int32)
        ex_mask = np.zeros((G, L), np.float32)
        ctx = np.zeros((G, L, store.ctx.shape[1]), np.float32)
        for g, pos in enumerate(group):
            u = users[pos]
            r = rows_list[g]
            rows[g, : len(r)] = r
            row_mask[g, : len(r)] = 1.0
            n = sizes[pos]
            cand[g, :n] = locals_[g]
            ex_mask[g, :n] = 1.0
            ctx[g, :n] = store.ctx[store.offsets[u]: store.offsets[u + 1]]
        safe_rows = np.where(rows >= 0, rows, 0)
        rows_h = item_h[safe_rows]
        dense0 = {k: np.broadcast_to(np.asarray(params[k], np.float32), (G,) + np.shape(params[k]))
                  for k in DENSE_NAMES}
        emb0 = params["items/embedding"][safe_rows] if hybrid else None
        bias0 = params["items/bias"][safe_rows] if hybrid else None
        if local_dp:
            steps = cfg.local_steps
            shapes = {k: (steps, G) + np.shape(params[k]) for k in trainable_dense(cfg.loss)}
            if hybrid:
                shapes["items/embedding"], shapes["items/bias"] = (steps, G, R, dim), (steps, G, R)
            if cfg.local_dp_theta:
                shapes["theta"] = (steps, G, dim)
            d1, th1, emb1, bias1 = dp_local_train(
                dense0, new_theta[group], emb0, bias0, rows_h, ctx, cand, ex_mask,
                {k: noise.normal(1.0, v).astype(np.float32) for k, v in shapes.items()}, steps=steps,
                lr=cfg.local_lr, theta_lr=cfg.theta_lr, l2=cfg.l2, clip=cfg.local_clip_norm,
                noise_std=cfg.local_noise_multiplier * cfg.local_clip_norm, dp_theta=cfg.local_dp_theta,
                loss=cfg.loss)
            *_, loss[group] = local_train(d1, th1, emb1, bias1, rows_h, row_mask, ctx, cand, ex_mask, steps=0,
                                          lr=0.0, theta_lr=0.0, l2=cfg.l2, loss=cfg.loss)
        else:
            d1, th1, emb1, bias1, loss[group] = local_train(
                dense0, new_theta[group], emb0, bias0, rows_h, row_mask, ctx, cand, ex_mask,
                steps=cfg.local_steps, lr=cfg.local_lr, theta_lr=cfg.theta_lr, l2=cfg.l2, clip=cfg.local_grad_clip,
                loss=cfg.loss, optimizer=cfg.local_optimizer)
        for k in DENSE_NAMES:
            dense_out[k][group] = d1[k] - dense0[k]
        new_theta[group] = th1
        if hybrid:
            row_parts.append((group, rows, (emb1 - emb0) * row_mask[..., None], (bias1 - bias0) * row_mask))
        else:
            row_parts.append((group, rows, None, None))
    R_all = max((p[1].shape[1] for p in row_parts), default=0)
    rows_all = np.full((U, R_all), -1, np.int64)
    emb_all = np.zeros((U, R_all, dim), np.float32) if hybrid else None
    bias_all = np.zeros((U, R_all), np.float32) if hybrid else None
    for group, rows, emb, bias in row_parts:
        rows_all[group, : rows.shape[1]] = rows
        if hybrid:
            emb_all[group, : rows.shape[1]] = emb
            bias_all[group, : rows.shape[1]] = bias
    free_std = None
    if local_dp and hybrid:  # the SGD update of an untouched row is -lr * sum_t noise_t / n
        free_std = (np.sqrt(cfg.local_steps) * cfg.local_lr * cfg.local_noise_multiplier * cfg.local_clip_norm
                    / np.maximum(sizes, 1)).astype(np.float64)
    updates = UserUpdates(dense=dense_out, rows=rows_all, rows_emb=emb_all, rows_bias=bias_all,
                          loss=loss, n_examples=sizes.astype(np.int64), free_noise_std=free_std, noise=noise)
    return updates, new_theta


def distinct_candidates(rng: np.random.Generator, positives: np.ndarray, n_items: int, k: int) -> np.ndarray:
    """[n, 1 + k] candidates per example: the engaged item, then k uniform negatives, all distinct
    within the row (so a clipped example's gradient moves each item row once). Requires k < n_items."""
    cand = np.concatenate([positives[:, None], rng.integers(0, n_items, size=(len(positives), k))], axis=1)
    while True:
        s = np.sort(cand, axis=1)
        bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
        if len(bad) == 0:
            return cand
        cand[bad, 1:] = rng.integers(0, n_items, size=(len(bad), k))


def evaluate_users(params: Mapping[str, np.ndarray], theta: np.ndarray, store: UserStore, item_h: np.ndarray,
                   cfg: Config, split: str, users: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-user metrics [len(users)] (default: every user of the store) on the held-out engagement of
    `split` ("val" or "test"). theta [store.n_users, dim]."""
    dense = {k: np.asarray(params[k], np.float32) for k in DENSE_NAMES}
    emb, bias = params.get("items/embedding"), params.get("items/bias")
    ctx = store.val_ctx if split == "val" else store.test_ctx
    return evaluate_scores(lambda u: score_items(dense, theta[u], ctx[u], item_h, emb, bias),
                           store, item_h.shape[0], cfg, split, users=users)


def evaluate_scores(score: Callable[[np.ndarray], np.ndarray], store: UserStore, n_items: int, cfg: Config,
                    split: str, chunk: int = 512, users: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per-user HR/NDCG@k [len(users)] of any scorer, score(users [n]) -> [n, n_items], on `split`.

    Full ranking: the held-out item against every item not in the user's history (for "test",
    the validation item is history too). Sampled: against `eval_negatives` items the user never
    engaged with, drawn from a per-user stream fixed by the seed (the same for every system).
    """
    target = store.val_item if split == "val" else store.test_item
    which = np.arange(store.n_users) if users is None else np.asarray(users, np.int64)
    out = {m: np.zeros(len(which)) for m in ("hr", "ndcg", "hr-sampled", "ndcg-sampled")}
    for start in range(0, len(which), chunk):
        pos = np.arange(start, min(start + chunk, len(which)))
        users = which[pos]
        scores = score(users)
        scores = np.where(np.isnan(scores), -np.inf, scores)  # a broken (NaN) score never ranks well
        history = [store.history(u) if split == "val" else np.append(store.history(u), store.val_item[u])
                   for u in users]
        rank = rank_of_target(scores, target[users], history)
        out["hr"][pos], out["ndcg"][pos] = hit_and_ndcg(rank, cfg.top_k)
        s_rank = np.zeros(len(users), np.int64)
        for i, u in enumerate(users):
            seen = np.concatenate([store.history(u), [store.val_item[u], store.test_item[u]]])
            rng = user_rng(cfg.seed, 0, store.user_keys[u], f"eval-{split}")
            negs = sample_eval_negatives(n_items, seen, cfg.eval_negatives, rng)
            s_rank[i] = int((scores[i, negs] >= scores[i, target[u]]).sum())
        out["hr-sampled"][pos], out["ndcg-sampled"][pos] = hit_and_ndcg(s_rank, cfg.top_k)
    return out
