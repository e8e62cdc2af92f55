"""Implicit ALS: the loss and the per-user gradients of the shared parameters."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from common.model.scoring import _ials_parts, segment_outer_sum, segment_sum

__all__ = ["ials_loss", "ials_user_gradients"]


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
    catalogue scored at the user's mean context x_u. With Sigma_u [c, c] the covariance of the user's contexts (never
    formed: its products are taken from the centred context rows, linear in c), the two alpha0 terms are exactly
    alpha0 * mean_l sum_i (catalogue score at x_l)^2: the catalogue is pulled to 0 at every context the user
    engaged in. Without the Sigma_u term the context weights could raise the engagements'
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
        return segment_sum(v, offsets)

    spread_loss, pull_w, pull_t, spread, basis = _ials_context_spread(z, p, offsets, alpha0)
    g_phi_rows = rho2[:, None] * q                                           # d L / d phi(i_l) [n, dim]
    kernel = segment_outer_sum(h[items], g_phi_rows, offsets) + np.einsum("ut,ud->utd", coef @ h, q_mean)
    kernel += np.einsum("ta,uad->utd", h.T @ basis, spread)
    # each context row x_l is weighted by its engagement's error and by the spread's pull (which sums to 0 over
    # the user's rows, so that weighting x_l is weighting x_l - x_u): one pass over the c-wide rows
    interaction = segment_outer_sum(x, rho2[:, None] * phi[items] + pull_w, offsets)
    interaction += z["x_mean"][:, :, None] * (coef @ phi)[:, None, :]
    interaction += 2.0 * context_l2 * p["context/interaction"]
    dense = {
        "tower/kernel": kernel,
        "tower/bias": per_user(g_phi_rows) + coef_sum[:, None] * q_mean + basis.sum(0) @ spread,
        "text-bias/kernel": per_user(rho2[:, None] * h[items]) + coef @ h,
        "global-bias": (per_user(rho2) + coef_sum)[:, None],
        "context/shift": (per_user((rho2 + pull_t)[:, None] * x) + coef_sum[:, None] * z["x_mean"]
                          + 2.0 * context_l2 * p["context/shift"]),
        "context/interaction": interaction,
    }
    loss = (per_user(np.square(rho2 / 2.0)) + alpha0 * np.square(a).sum(1) + l2 * np.square(theta).sum(1)
            + alpha0 * spread_loss
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


def _ials_context_spread(z: dict, p: Mapping[str, np.ndarray], offsets: np.ndarray,
                         alpha0: float) -> tuple[np.ndarray, ...]:
    """The catalogue at each of the user's contexts, not only at their mean: the term
    alpha0 tr(Sigma_u sum_i v_i v_i^T) of `ials_user_gradients`. z: `_ials_parts`; p: float64 parameters.

    Sigma_u = mean_l d_l d_l^T with d_l = x_l - x_u the user's centred contexts [n, c] is never formed (nor any
    [c, c] matrix): with m_li = v_i . d_l = phi(i) . dw_l + dt_l (dw_l = W^T d_l, dt_l = tc . d_l) the move of item
    i's score from the mean context to x_l, tr(Sigma_u sum_i v_i v_i^T) = mean_l sum_i m_li^2 and its gradients need
    only dg_l = sum_i m_li phi(i) = G dw_l + dt_l sum_i phi(i) (G = phi^T phi) and dp_l = sum_i m_li: the gradient
    on W is sum_l d_l pull_w_l^T, on tc sum_l pull_t_l d_l. The cost is O(n c dim), linear in the context width c.

    Returns (tr(Sigma_u sum_i v_i v_i^T) [U], pull_w = 2 alpha0 dg_l / n_u [n, dim], pull_t = 2 alpha0 dp_l / n_u
    [n], spread [U, dim + 1, dim], basis [n_items, dim + 1]); pull_w and pull_t sum to 0 over each user's rows.
    """
    phi, ex_user = z["phi"], z["ex_user"]
    d = z["x"] - z["x_mean"][ex_user]                                        # [n, c]
    inv_n = 1.0 / np.maximum(np.diff(offsets), 1)                            # 1 / n_u [U]
    W, tc = p["context/interaction"], p["context/shift"]
    dwt = d @ np.column_stack([W, tc])                                       # [dw_l, dt_l] [n, dim + 1]
    dw, dt = dwt[:, :-1], dwt[:, -1]
    phi_sum = phi.sum(0)
    dg = dw @ (phi.T @ phi) + np.outer(dt, phi_sum)                          # sum_i m_li phi(i) [n, dim]
    dp = dw @ phi_sum + len(phi) * dt                                        # sum_i m_li [n]
    trace = inv_n * segment_sum(np.sum(dg * dw, 1) + dp * dt, offsets)       # mean_l sum_i m_li^2 [U]
    row_scale = (2.0 * alpha0 * inv_n)[ex_user]                              # [n]
    # its gradient on every phi(i) is [phi(i), 1] @ spread_u: spread_u = [A_u; beta_u^T] [U, dim + 1, dim] with
    # A_u = 2 alpha0 W^T Sigma_u W = 2 alpha0 mean_l dw_l dw_l^T and beta_u = 2 alpha0 W^T Sigma_u tc
    spread = (2.0 * alpha0 * inv_n)[:, None, None] * segment_outer_sum(dwt, dw, offsets)
    basis = np.hstack([phi, np.ones((len(phi), 1))])                         # [I, dim + 1]
    return trace, row_scale[:, None] * dg, row_scale * dp, spread, basis


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
