"""The TensorFlow half of the device: the gradient steps of `client.device.refresh_theta` under loss="bce" or
"softmax" (`common.model.group_loss`, the loss `local_train` minimises). Imported only when those steps run, so
the other device commands start without TensorFlow."""

from __future__ import annotations

from typing import Mapping

import numpy as np
import tensorflow as tf

from common.model import DENSE_NAMES, group_loss

__all__ = ["refresh_steps"]


def refresh_steps(params: Mapping[str, np.ndarray], item_h: np.ndarray, theta_u: np.ndarray, cand: np.ndarray,
                  history_ctx: np.ndarray, weight: np.ndarray, *, steps: int, lr: float, l2: float, adam: bool,
                  loss: str) -> np.ndarray:
    """theta_u [dim] after `steps` full-batch steps (SGD, or Adam if adam) on theta_u alone; cand [n, 1 + negatives]
    catalogue indices (`client.device.refresh_candidates`), history_ctx [n, context_dim], weight [n] per
    engagement. Arguments are checked by `refresh_theta`."""
    rows, local = np.unique(cand, return_inverse=True)
    dense = {k: tf.constant(np.asarray(params[k], np.float32)[None]) for k in DENSE_NAMES}
    if "items/embedding" in params:
        emb = tf.constant(np.asarray(params["items/embedding"], np.float32)[rows][None])
        bias = tf.constant(np.asarray(params["items/bias"], np.float32)[rows][None])
    else:
        emb = bias = None
    theta = _refresh_tf(dense, tf.constant(theta_u[None]), emb, bias,
                        tf.constant(np.asarray(item_h, np.float32)[rows][None]), tf.constant(history_ctx[None]),
                        tf.constant(local.reshape(cand.shape)[None], tf.int32), tf.constant(weight[None]),
                        tf.constant(steps), tf.constant(lr, tf.float32), tf.constant(l2, tf.float32),
                        adam, loss)
    return theta.numpy()[0]


@tf.function(reduce_retracing=True, autograph=False)
def _refresh_tf(dense, theta, rows_emb, rows_bias, rows_h, ctx, cand, weight, steps, lr, l2, adam, loss_kind):
    """`steps` SGD or Adam steps on theta [1, dim] alone of `common.model.group_loss` (the loss `local_train`
    minimises, weight as its example mask); a while loop, so one trace serves any number of steps."""
    row_mask = tf.ones(tf.shape(rows_h)[:2])
    b1, b2, eps = 0.9, 0.999, 1e-8

    def body(t, th, m, v):
        with tf.GradientTape() as tape:
            tape.watch(th)
            loss = tf.reduce_sum(group_loss(dense, th, rows_emb, rows_bias, rows_h, row_mask, ctx, cand, weight, l2,
                                            loss_kind))
        g = tape.gradient(loss, th)
        if not adam:
            return t + 1, th - lr * g, m, v
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * tf.square(g)
        n = tf.cast(t + 1, tf.float32)
        return t + 1, th - lr * (m / (1 - b1 ** n)) / (tf.sqrt(v / (1 - b2 ** n)) + eps), m, v

    zeros = tf.zeros_like(theta)
    _, theta, _, _ = tf.while_loop(lambda t, *_: t < steps, body, (tf.constant(0), theta, zeros, zeros))
    return theta
