"""Per-user updates of the shared parameters: local training, iALS, warm start."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import sparse

from common.config import Config
from common.federation.users import UserStore
from common.model.scoring import DENSE_NAMES, ials_solve, negative_shift, segment_outer_sum, warm_start_theta
from common.model.formula import GroupParams, TrainBatch, item_side, trainable_dense
from common.model.training import StepRule, dp_local_train, dp_warm_start_theta, local_train
from common.model.ials import ials_user_gradients
from common.privacy.noise import SecureGaussian
from common.privacy.sampling import user_rng

__all__ = ["UserUpdates", "user_updates", "item_representations", "init_theta", "ials_user_theta", "dp_init_theta",
    "distinct_candidates"]


@dataclass(frozen=True)
class UserUpdates:
    """Per-user change of the shared parameters after local training.

    dense {name: [U, ...]}. The item rows the users touched, as one flat list of M (user, item) pairs:
    row_user [M] (0..U-1), rows [M] (global item index), rows_emb [M, dim] and rows_bias [M] their
    change (hybrid model only; None otherwise). loss [U] local training loss (after the last step; under
    local DP, of the last step's forward pass); n_examples [U].

    loss="ials" (hybrid model): a user's item-table update also has two dense parts over the whole catalogue,
    item_coef[u] (x) item_dir[u] (item_coef [U, n_items], item_dir [U, dim]) and item_basis @ item_spread[u]
    (item_basis [n_items, dim + 1], the same for every user; item_spread [U, dim + 1, dim]); its item-bias
    update has item_coef[u]. Kept as factors: U dense tables would not fit in memory at 10,000 items.

    Local DP (hybrid model): each user's item rows still carry Gaussian noise that is drawn (from
    `noise`) only when an update is materialised by `user_update` or `total`: i.i.d. N(0, s^2) per
    coordinate with s = untouched_std[u] on every row user u did not touch, and s = touched_std[u]
    (the last DP-SGD step's noise, which nothing computed on the device afterwards depends on) on the
    rows it touched.
    """

    dense: dict[str, np.ndarray]
    row_user: np.ndarray
    rows: np.ndarray
    rows_emb: np.ndarray | None
    rows_bias: np.ndarray | None
    loss: np.ndarray
    n_examples: np.ndarray
    untouched_std: np.ndarray | None = None   # [U] local DP: pending noise std of the rows a user did not touch
    touched_std: np.ndarray | None = None     # [U] local DP: pending noise std of the rows a user touched
    noise: SecureGaussian | None = None
    item_coef: np.ndarray | None = None      # [U, n_items] loss="ials": the dense part's per-item factor
    item_dir: np.ndarray | None = None       # [U, dim] loss="ials": the dense part's direction
    item_basis: np.ndarray | None = None     # [n_items, dim + 1] loss="ials": [phi, 1], shared by all users
    item_spread: np.ndarray | None = None    # [U, dim + 1, dim] loss="ials": each user's map of item_basis

    @property
    def n_users(self) -> int:
        return len(self.loss)

    @property
    def pending_noise(self) -> bool:
        return self.rows_emb is not None and self.untouched_std is not None

    def _row_noise(self, var_rows: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Gaussian noise for the item table [n_items, dim] and biases [n_items], given each row's variance."""
        std = np.sqrt(np.maximum(var_rows, 0.0)).astype(np.float32)
        return self.noise.normal(1.0, (len(std), dim)) * std[:, None], self.noise.normal(1.0, (len(std),)) * std

    def _item_tables(self, shapes: Mapping[str, tuple[int, ...]], w: np.ndarray,
                     sel: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """sum_u w[u] * (user u's item-table update, pending noise included); sel: the row entries of
        the users with w[u] != 0."""
        n_items, dim = shapes["items/embedding"]
        rows, wr = self.rows[sel], w[self.row_user[sel]]
        if self.pending_noise:  # independent Gaussians: their weighted sum is one Gaussian with the summed variance
            var = np.full(n_items, np.sum((w.astype(np.float64) * self.untouched_std) ** 2))
            change = (self.untouched_std ** 2 - self.touched_std ** 2)[self.row_user[sel]] * wr.astype(np.float64) ** 2
            var -= np.bincount(rows, weights=change, minlength=n_items)
            emb, bias = self._row_noise(var, dim)
        else:
            emb, bias = np.zeros((n_items, dim), np.float32), np.zeros(n_items, np.float32)
        to_items = sparse.csr_matrix((wr, (rows, np.arange(len(rows)))), shape=(n_items, len(rows)))  # [n_items, M]
        emb, bias = emb + to_items @ self.rows_emb[sel], bias + to_items @ self.rows_bias[sel]
        if self.item_coef is not None:  # sum_u w[u] coef_u (x) dir_u, without forming U tables
            emb = emb + self.item_coef.T @ (w[:, None] * self.item_dir)
            bias = bias + self.item_coef.T @ w
        if self.item_spread is not None:
            emb = emb + self.item_basis @ np.tensordot(w, self.item_spread, axes=1)
        return emb.astype(np.float32), bias.astype(np.float32)

    def user_update(self, u: int, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
        """The whole shared-parameter update of user u, as dense arrays of the full shapes."""
        out = {k: self.dense[k][u].copy() for k in DENSE_NAMES}
        if self.rows_emb is not None:
            w = np.zeros(self.n_users, np.float32)
            w[u] = 1.0
            sel = np.flatnonzero(self.row_user == u)
            out["items/embedding"], out["items/bias"] = self._item_tables(shapes, w, sel)
        return out

    def total(self, shapes: Mapping[str, tuple[int, ...]], scale: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Sum over users of their updates (each times scale[u], e.g. a clip factor), as dense full-shape arrays."""
        w = np.ones(self.n_users, np.float32) if scale is None else np.asarray(scale, np.float32)
        out = {k: np.tensordot(w, self.dense[k], axes=1) for k in DENSE_NAMES}
        if self.rows_emb is not None:
            out["items/embedding"], out["items/bias"] = self._item_tables(shapes, w, slice(None))
        return out

    def norms(self) -> np.ndarray:
        """L2 norm [U] of each user's whole shared-parameter update (without pending noise: none allowed)."""
        if self.pending_noise:
            raise ValueError("norms: a local-DP update of the item table still has pending noise; "
                             "per-user clipping needs item-embedding=false (see Config).")
        sq = sum(np.square(v.reshape(len(v), -1)).sum(axis=1) for v in self.dense.values())
        if self.rows_emb is not None:
            per_row = np.square(self.rows_emb).sum(-1) + np.square(self.rows_bias)
            if self.item_coef is not None:  # |sparse + dense|^2 = |sparse|^2 + 2 <sparse, dense> + |dense|^2
                c = self.item_coef[self.row_user, self.rows]
                per_row = per_row + 2.0 * c * (np.sum(self.rows_emb * self.item_dir[self.row_user], -1) + self.rows_bias)
                sq = sq + np.square(self.item_coef).sum(1) * (np.square(self.item_dir).sum(1) + 1.0)
            if self.item_spread is not None:  # + |B S_u|^2 + 2 <coef dir^T, B S_u> + 2 <sparse, B S_u>
                B, S = self.item_basis.astype(np.float64), self.item_spread.astype(np.float64)
                sq = sq + np.einsum("uab,ac,ucb->u", S, B.T @ B, S)
                sq = sq + 2.0 * np.einsum("ua,uab,ub->u", self.item_coef @ B, S, self.item_dir)
                order = np.argsort(self.row_user, kind="stable")
                offsets = np.concatenate([[0], np.cumsum(np.bincount(self.row_user, minlength=self.n_users))])
                touched = segment_outer_sum(B[self.rows[order]], self.rows_emb[order].astype(np.float64), offsets)
                sq = sq + 2.0 * np.einsum("uab,uab->u", touched, S)
            sq = sq + np.bincount(self.row_user, weights=per_row, minlength=self.n_users)
        return np.sqrt(np.maximum(sq, 0.0))


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


def dp_init_theta(store: UserStore, users: np.ndarray, phi: np.ndarray, clip: float, noise_std: float,
                  noise: SecureGaussian) -> np.ndarray:
    """Warm start theta_u [len(users), dim] by one Gaussian release per user (`dp_warm_start_theta`)."""
    z = noise.normal(1.0, (len(users), phi.shape[1] + 1))
    return np.stack([dp_warm_start_theta(phi[store.history(u)], clip, noise_std, z[i]) for i, u in enumerate(users)]
                    ) if len(users) else np.zeros((0, phi.shape[1]), np.float32)


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
                 max_cells: int = 16384, noise: SecureGaussian | None = None,
                 negatives: SecureGaussian | None = None) -> tuple[UserUpdates, np.ndarray]:
    """Local training of the given users (indices into the store), each from the same global params.

    params: global shared parameters; theta [len(users), dim] their current private vectors.
    Returns (per-user updates of the shared parameters, new theta [len(users), dim]).
    With cfg.privacy "local" or "local+central" every user trains by DP-SGD (`common.model.training.dp_local_train`)
    with Gaussian noise from `noise` (default: a secure source), and the item rows a user did not touch
    get the same noise, so the update does not reveal which items the user engaged with. Its negatives come
    from `negatives` (default: the noise source), never from the public seed: a seeded stream is known to the
    server, and it assigns other negatives to every later example when one example is added or removed, so the
    per-example sensitivity bound would not hold against the server.
    """
    if cfg.ials:
        return _ials_updates(params, store, np.asarray(users, np.int64), item_h, cfg)
    local_dp = cfg.local_dp
    if local_dp:
        noise = noise or SecureGaussian()
        negatives = negatives or noise
        max_cells = min(max_cells, 4096)  # one parameter copy per example
        if cfg.negatives > item_h.shape[0] - 1:
            raise ValueError(f"negatives: must be < the number of items ({item_h.shape[0]}) with local DP "
                             f"(each example's candidates are distinct items). Found {cfg.negatives}.")
    users = np.asarray(users, np.int64)
    hybrid = "items/embedding" in params
    sizes = np.array([store.offsets[u + 1] - store.offsets[u] for u in users], np.int64)
    new_theta = np.array(theta, np.float32, copy=True)
    U = len(users)
    dense_out = {k: np.zeros((U,) + np.shape(params[k]), np.float32) for k in DENSE_NAMES}
    row_parts: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]] = []  # flat (user, row)
    loss = np.zeros(U, np.float32)
    rule = StepRule(steps=cfg.local_steps, lr=cfg.local_lr, theta_lr=cfg.theta_lr, l2=cfg.l2, loss=cfg.model_loss,
                    context_l2=cfg.context_l2, neg_shift=negative_shift(item_h.shape[0], cfg.negatives))
    for group in _chunks(sizes, max_cells):
        rows, batch = _group_batch(store, users[group], sizes[group], item_h, cfg, round_,
                                   negatives if local_dp else None)
        safe_rows = np.where(rows >= 0, rows, 0)
        start = GroupParams({k: np.broadcast_to(np.asarray(params[k], np.float32), (len(group),) + np.shape(params[k]))
                             for k in DENSE_NAMES}, new_theta[group],
                            params["items/embedding"][safe_rows] if hybrid else None,
                            params["items/bias"][safe_rows] if hybrid else None)
        if local_dp:
            out, loss[group] = dp_local_train(start, batch, rule, _dp_noise(noise, params, cfg, rows.shape),
                                              clip=cfg.local_clip_norm,
                                              noise_std=cfg.local_noise_multiplier * cfg.local_clip_norm,
                                              denominator=cfg.local_denominator, dp_theta=cfg.local_dp_theta)
        else:
            out, loss[group] = local_train(start, batch, rule, clip=cfg.local_grad_clip, optimizer=cfg.local_optimizer)
        for k in DENSE_NAMES:
            dense_out[k][group] = out.dense[k] - start.dense[k]
        new_theta[group] = out.theta
        real = rows >= 0
        row_parts.append((np.broadcast_to(group[:, None], rows.shape)[real], rows[real],
                          (out.rows_emb - start.rows_emb)[real] if hybrid else None,
                          (out.rows_bias - start.rows_bias)[real] if hybrid else None))
    return _gathered_updates(dense_out, row_parts, loss, sizes, cfg, hybrid, local_dp, noise), new_theta


def _group_batch(store: UserStore, users: np.ndarray, sizes: np.ndarray, item_h: np.ndarray, cfg: Config,
                 round_: int, negatives: SecureGaussian | None) -> tuple[np.ndarray, TrainBatch]:
    """One chunk's G users as a padded batch: (rows [G, R] the global item of each user's rows, -1 padding; the
    batch). Negatives: K uniform items per example from the user's seeded stream, or (negatives given: local DP)
    K distinct ones from that source."""
    n_items, K = item_h.shape[0], cfg.negatives
    locals_, rows_list = [], []
    for u in users:
        hist = store.history(u)
        if negatives is not None:
            cand = distinct_candidates(negatives, hist, n_items, K)
        else:
            rng = user_rng(cfg.seed, round_, store.user_keys[u], "negatives")
            negs = rng.integers(0, n_items, size=(len(hist), K))
            cand = np.concatenate([hist[:, None], negs], axis=1)
        rows, inverse = np.unique(cand, return_inverse=True)
        rows_list.append(rows)
        locals_.append(inverse.reshape(cand.shape))
    G, L, R = len(users), int(sizes.max()), max(len(r) for r in rows_list)
    rows = np.full((G, R), -1, np.int64)
    row_mask = np.zeros((G, R), np.float32)
    cand = np.zeros((G, L, K + 1), np.int32)
    ex_mask = np.zeros((G, L), np.float32)
    ctx = np.zeros((G, L, store.ctx.shape[1]), np.float32)
    for g, u in enumerate(users):
        r = rows_list[g]
        rows[g, : len(r)] = r
        row_mask[g, : len(r)] = 1.0
        n = sizes[g]
        cand[g, :n] = locals_[g]
        ex_mask[g, :n] = 1.0
        ctx[g, :n] = store.ctx[store.offsets[u]: store.offsets[u + 1]]
    rows_h = item_h[np.where(rows >= 0, rows, 0)]
    return rows, TrainBatch(rows_h=rows_h, ctx=ctx, cand=cand, ex_mask=ex_mask, row_mask=row_mask)


def _dp_noise(noise: SecureGaussian, params: Mapping[str, np.ndarray], cfg: Config, rows_shape: tuple[int, int]
              ) -> dict[str, np.ndarray]:
    """Standard normals for `dp_local_train` of G users with R rows each (rows_shape (G, R)): per step for each
    trained dense parameter, the item rows (all steps but the last: `UserUpdates` draws that one, summed over
    users) and theta (local-dp-theta)."""
    steps, (G, R) = cfg.local_steps, rows_shape
    shapes = {k: (steps, G) + np.shape(params[k]) for k in trainable_dense(cfg.model_loss)}
    if "items/embedding" in params:  # the last step's row noise stays pending (UserUpdates draws it)
        shapes["items/embedding"], shapes["items/bias"] = (steps - 1, G, R, cfg.dim), (steps - 1, G, R)
    if cfg.local_dp_theta:
        shapes["theta"] = (steps, G, cfg.dim)
    return {k: noise.normal(1.0, v) for k, v in shapes.items()}


def _gathered_updates(dense_out: dict[str, np.ndarray], row_parts: list[tuple], loss: np.ndarray, sizes: np.ndarray,
                      cfg: Config, hybrid: bool, local_dp: bool, noise: SecureGaussian | None) -> UserUpdates:
    """The chunks' results as one `UserUpdates` (under local DP with item rows, the std of the rows' pending
    noise: one DP-SGD step moves a row by -lr * noise / B (B public); untouched rows by every step's)."""
    def cat(i: int, empty: np.ndarray) -> np.ndarray:
        return _concat_parts(row_parts, i, empty)

    row_user, rows_flat = cat(0, np.zeros(0, np.int64)), cat(1, np.zeros(0, np.int64))
    emb_flat = cat(2, np.zeros((0, cfg.dim), np.float32)) if hybrid else None
    bias_flat = cat(3, np.zeros(0, np.float32)) if hybrid else None
    untouched = touched = None
    if local_dp and hybrid:
        per_step = np.full(len(loss), cfg.local_lr * cfg.local_noise_multiplier * cfg.local_clip_norm
                           / cfg.local_denominator, np.float64)
        untouched, touched = np.sqrt(cfg.local_steps) * per_step, per_step
    return UserUpdates(dense=dense_out, row_user=row_user, rows=rows_flat, rows_emb=emb_flat, rows_bias=bias_flat,
                       loss=loss, n_examples=sizes.astype(np.int64), untouched_std=untouched,
                       touched_std=touched, noise=noise)


def _concat_parts(parts: list[tuple], i: int, empty: np.ndarray) -> np.ndarray:
    """Field i of every chunk's (row_user, rows, rows_emb, rows_bias) part, joined in empty's dtype (empty if none)."""
    return np.concatenate([p[i] for p in parts]).astype(empty.dtype, copy=False) if parts else empty


def _sub_store(store: UserStore, users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """offsets [len(users) + 1], items [n] and ctx [n, context_dim] of the given users' histories."""
    counts = store.offsets[users + 1] - store.offsets[users]
    take = np.concatenate([np.arange(store.offsets[u], store.offsets[u + 1]) for u in users]) if len(users) else \
        np.zeros(0, np.int64)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), store.items[take], store.ctx[take]


def ials_user_theta(params: Mapping[str, np.ndarray], store: UserStore, users: np.ndarray, item_h: np.ndarray,
                    cfg: Config) -> np.ndarray:
    """loss="ials": each user's closed-form theta_u [len(users), dim] under the given shared parameters."""
    offsets, items, ctx = _sub_store(store, np.asarray(users, np.int64))
    return ials_solve(params, item_h, offsets, items, ctx, cfg.unobserved_weight, cfg.l2)


def _ials_updates(params: Mapping[str, np.ndarray], store: UserStore, users: np.ndarray, item_h: np.ndarray,
                  cfg: Config, chunk_cells: int = 4_000_000) -> tuple[UserUpdates, np.ndarray]:
    """loss="ials": each user solves theta_u in closed form, then takes one gradient step of its own loss on the
    shared parameters (`common.model.ials.ials_user_gradients`); the update is -local-lr times that gradient."""
    U, n_items, lr = len(users), item_h.shape[0], cfg.local_lr
    hybrid = "items/embedding" in params
    dense = {k: np.zeros((U,) + np.shape(params[k]), np.float32) for k in DENSE_NAMES}
    theta, loss = np.zeros((U, cfg.dim), np.float32), np.zeros(U, np.float32)
    coef = np.zeros((U, n_items), np.float32) if hybrid else None
    direction = np.zeros((U, cfg.dim), np.float32) if hybrid else None
    spread = np.zeros((U, cfg.dim + 1, cfg.dim), np.float32) if hybrid else None
    basis = np.zeros((n_items, cfg.dim + 1), np.float32) if hybrid else None  # [phi, 1], set by the first chunk
    parts = []
    step = max(1, chunk_cells // max(n_items, 1))  # users per chunk: [chunk, n_items] scores at a time
    for start in range(0, U, step):
        pos = np.arange(start, min(start + step, U))
        offsets, items, ctx = _sub_store(store, users[pos])
        theta[pos] = ials_solve(params, item_h, offsets, items, ctx, cfg.unobserved_weight, cfg.l2)
        g = ials_user_gradients(params, item_h, theta[pos], offsets, items, ctx, cfg.unobserved_weight, cfg.l2,
                                cfg.context_l2)
        for k in DENSE_NAMES:
            dense[k][pos] = -lr * g["dense"][k]
        loss[pos] = g["loss"]
        if hybrid:
            coef[pos], direction[pos], spread[pos] = -lr * g["coef"], g["dir"], -lr * g["spread"]
            basis[:] = g["basis"]
            parts.append((pos[g["row_user"]], g["rows"], -lr * g["rows_emb"], -lr * g["rows_bias"]))
    def cat(i: int, empty: np.ndarray) -> np.ndarray:
        return _concat_parts(parts, i, empty)

    updates = UserUpdates(
        dense=dense, row_user=cat(0, np.zeros(0, np.int64)), rows=cat(1, np.zeros(0, np.int64)),
        rows_emb=cat(2, np.zeros((0, cfg.dim), np.float32)) if hybrid else None,
        rows_bias=cat(3, np.zeros(0, np.float32)) if hybrid else None, loss=loss,
        n_examples=(store.offsets[users + 1] - store.offsets[users]).astype(np.int64), item_coef=coef,
        item_dir=direction, item_spread=spread, item_basis=basis)
    return updates, theta


def distinct_candidates(rng: np.random.Generator | SecureGaussian, positives: np.ndarray, n_items: int,
                        k: int) -> np.ndarray:
    """[n, 1 + k] candidates per example: the engaged item, then k uniform negatives, all distinct
    within the row (so a clipped example's gradient moves each item row once). Requires k < n_items."""
    cand = np.concatenate([positives[:, None], rng.integers(0, n_items, size=(len(positives), k))], axis=1)
    while True:
        s = np.sort(cand, axis=1)
        bad = np.flatnonzero((s[:, 1:] == s[:, :-1]).any(axis=1))
        if len(bad) == 0:
            return cand
        cand[bad, 1:] = rng.integers(0, n_items, size=(len(bad), k))


_NEGATIVES: dict[int, dict[tuple, tuple[np.ndarray, np.ndarray]]] = {}  # id(store) -> drawn negatives, while it lives
