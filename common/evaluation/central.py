"""Centralized training of the same model on pooled data (the non-federated upper bound),
and the most-popular baseline."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import tensorflow as tf

from common.federation.aggregation import ServerOptimizer, item_decay
from common.config import Config
from common.federation.users import UserStore
from common.federation.updates import ials_user_theta, init_theta, item_representations, user_updates
from common.model.scoring import DENSE_NAMES, negative_shift
from common.model.formula import ModelShape, candidate_loss, context_penalty, group_logits, init_shared, trainable_dense

__all__ = ["train_central", "popularity_scores"]


def popularity_scores(store: UserStore, n_items: int) -> np.ndarray:
    """Engagement count [n_items] of each item in the pooled training data."""
    return np.bincount(store.items, minlength=n_items).astype(np.float64)


def train_central(store: UserStore, item_h: np.ndarray, cfg: Config,
                  progress: Callable[[int, float, float], None] | None = None,
                  validate: Callable[[dict[str, np.ndarray], np.ndarray], float] | None = None,
                  ) -> tuple[dict[str, np.ndarray], np.ndarray, list[float], int]:
    """Minibatch Adam on all users' engagements at once (BCE, uniform sampled negatives).

    store: every user's training engagements; item_h [n_items, text_dim].
    Returns (shared params, theta [n_users, dim], seconds per epoch, selected epoch).
    progress(epoch, loss, seconds) is called after every epoch. With validate(params, theta) -> score
    (higher is better, e.g. validation HR@10), the parameters of the best-scoring epoch are returned
    (early stopping on the validation split).
    """
    n_items = item_h.shape[0]
    shape = ModelShape(n_items=n_items, text_dim=item_h.shape[1], dim=cfg.dim,
                       context_dim=store.ctx.shape[1], item_embedding=cfg.item_embedding)
    params0 = init_shared(shape, cfg.seed)
    if cfg.ials:
        return _train_central_ials(store, item_h, cfg, params0, progress, validate)
    phi0 = item_representations(params0, item_h)
    theta0 = init_theta(store, np.arange(store.n_users), phi0, cfg.half_life_days)

    hybrid = cfg.item_embedding
    dense = {k: tf.Variable(params0[k][None], name=k.replace("/", "_")) for k in DENSE_NAMES}
    theta = tf.Variable(theta0, name="theta")
    emb = tf.Variable(params0["items/embedding"], name="emb") if hybrid else None
    ibias = tf.Variable(params0["items/bias"], name="ibias") if hybrid else None
    step = _adam_step(dense, theta, emb, ibias, item_h, cfg)
    n = len(store.items)
    users_all = np.repeat(np.arange(store.n_users), np.diff(store.offsets))
    rng = np.random.default_rng(cfg.seed + 1)
    epoch_seconds: list[float] = []

    def snapshot() -> tuple[dict[str, np.ndarray], np.ndarray]:
        params = {k: v.numpy()[0] for k, v in dense.items()}
        if hybrid:
            params["items/embedding"] = emb.numpy()
            params["items/bias"] = ibias.numpy()
        return params, theta.numpy()

    best = (-np.inf, cfg.central_epochs, None)
    for epoch in range(1, cfg.central_epochs + 1):
        t0 = time.perf_counter()
        perm = rng.permutation(n)
        negs = rng.integers(0, n_items, size=(n, cfg.negatives))
        losses = []
        for start in range(0, n, cfg.central_batch):
            idx = perm[start: start + cfg.central_batch]
            cand = np.concatenate([store.items[idx, None], negs[idx]], axis=1)
            losses.append(float(step(tf.constant(users_all[idx], tf.int32), tf.constant(cand, tf.int32),
                                     tf.constant(store.ctx[idx], tf.float32))))
        epoch_seconds.append(time.perf_counter() - t0)
        if progress is not None:
            progress(epoch, float(np.mean(losses)), epoch_seconds[-1])
        if validate is not None:
            current = snapshot()
            score = validate(*current)
            if score > best[0]:
                best = (score, epoch, current)
    params, theta_out = best[2] if best[2] is not None else snapshot()
    return params, theta_out, epoch_seconds, best[1]


def _adam_step(dense: dict[str, tf.Variable], theta: tf.Variable, emb: tf.Variable | None, ibias: tf.Variable | None,
               item_h: np.ndarray, cfg: Config) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """One minibatch step of `train_central`'s Adam, step(users [B] int32, cand [B, 1 + negatives] int32, ctx
    [B, context_dim]) -> mean candidate loss of the batch (before the step): the same formula (`group_logits`) with
    the whole batch as one group; + l2 * (|theta_u|^2 + the candidate rows' squares) / B + context_l2 * penalty."""
    hybrid = emb is not None
    variables = [dense[k] for k in trainable_dense(cfg.model_loss)] + [theta] + ([emb, ibias] if hybrid else [])
    opt = tf.keras.optimizers.Adam(learning_rate=cfg.central_lr)
    item_h_t = tf.constant(item_h, tf.float32)
    l2 = tf.constant(cfg.l2, tf.float32)
    context_l2 = tf.constant(cfg.context_l2, tf.float32)
    shift = tf.constant(negative_shift(item_h.shape[0], cfg.negatives), tf.float32)

    @tf.function(reduce_retracing=True)
    def step(users, cand, ctx):
        with tf.GradientTape() as tape:
            flat = tf.reshape(cand, [-1])
            rows_h = tf.gather(item_h_t, flat)[None]
            rows_emb = tf.gather(emb, flat)[None] if hybrid else None
            rows_bias = tf.gather(ibias, flat)[None] if hybrid else None
            local = tf.reshape(tf.range(tf.size(flat)), tf.shape(cand))[None]
            th = tf.gather(theta, users)
            logits = group_logits(dense, th[None], ctx[None], rows_h, rows_emb, rows_bias, local)
            loss = tf.reduce_mean(candidate_loss(logits, cfg.model_loss, shift))
            reg = tf.reduce_sum(tf.square(th))
            if hybrid:
                reg += tf.reduce_sum(tf.square(rows_emb)) + tf.reduce_sum(tf.square(rows_bias))
            total = loss + l2 * reg / tf.cast(tf.shape(users)[0], tf.float32) + context_l2 * context_penalty(dense)[0]
        grads = tape.gradient(total, variables)
        opt.apply_gradients(zip(grads, variables))
        return loss

    return step


#: loss="ials": full-batch Adam steps of the shared parameters per epoch (theta_u is solved before each one)
IALS_STEPS_PER_EPOCH = 10


def _train_central_ials(store: UserStore, item_h: np.ndarray, cfg: Config, params0: dict[str, np.ndarray],
                        progress: Callable[[int, float, float], None] | None,
                        validate: Callable[[dict[str, np.ndarray], np.ndarray], float] | None,
                        ) -> tuple[dict[str, np.ndarray], np.ndarray, list[float], int]:
    """loss="ials" on pooled data: every step solves every theta_u in closed form, then applies the mean of the
    users' updates (`common.federation.updates.user_updates`, the computation a device does) with the server's Adam at
    central-lr, item-decay included."""
    users = np.arange(store.n_users)
    params = dict(params0)
    opt = ServerOptimizer("adam", cfg.central_lr, decay=item_decay(cfg))  # the server's Adam, as in federation
    shapes = {k: v.shape for k, v in params0.items()}
    best, epoch_seconds = (-np.inf, cfg.central_epochs, None), []
    for epoch in range(1, cfg.central_epochs + 1):
        t0, losses = time.perf_counter(), []
        for _ in range(IALS_STEPS_PER_EPOCH):
            updates, _ = user_updates(params, np.zeros((len(users), cfg.dim), np.float32), store, users, item_h, cfg,
                                      epoch)
            params = opt.apply(params, {k: v / len(users) for k, v in updates.total(shapes).items()})
            losses.append(float(updates.loss.mean()))
        epoch_seconds.append(time.perf_counter() - t0)
        if progress is not None:
            progress(epoch, float(np.mean(losses)), epoch_seconds[-1])
        if validate is not None:
            theta = ials_user_theta(params, store, users, item_h, cfg)
            score = validate(params, theta)
            if score > best[0]:
                best = (score, epoch, (params, theta))
    if best[2] is not None:
        return best[2][0], best[2][1], epoch_seconds, best[1]
    return params, ials_user_theta(params, store, users, item_h, cfg), epoch_seconds, best[1]
