"""Server-side aggregation of per-user updates: plain numpy, no Flower.

A node sends the sum of its users' updates and how many users it trained; the server adds the
sums of all nodes, divides by the number of users (every user counts equally, as in DP-FedAvg,
McMahan et al. 2018) and applies the mean update with a server optimiser: SGD with a server
learning rate (FedAvg) or Adam (FedAdam, Reddi et al. 2021, "Adaptive Federated Optimization").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from common.config import Config

__all__ = ["sum_updates", "ServerOptimizer", "item_decay", "item_sgd_lr"]

#: the hybrid item-id table and biases
ITEM_TABLES = ("items/embedding", "items/bias")


def sum_updates(sums: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Element-wise sum of several {name: array} updates with identical keys and shapes."""
    if not sums:
        raise ValueError("no updates to sum")
    keys = set(sums[0])
    out = {k: np.array(v, np.float64) for k, v in sums[0].items()}
    for s in sums[1:]:
        if set(s) != keys:
            raise ValueError(f"updates disagree on parameter names: {sorted(keys ^ set(s))}")
        for k, v in s.items():
            if np.shape(v) != out[k].shape:
                raise ValueError(f"update of {k!r} has shape {np.shape(v)}, expected {out[k].shape}")
            out[k] += v
    return out


def item_decay(cfg: Config) -> dict[str, float]:
    """The `decay` of the item-id table and biases under cfg.item_decay (none without the hybrid tables)."""
    return {k: cfg.item_decay for k in ITEM_TABLES} if cfg.item_embedding and cfg.item_decay else {}


def item_sgd_lr(cfg: Config) -> dict[str, float]:
    """The `sgd_lr` of the item tables under cfg.item_lr (empty without the hybrid tables or at 0)."""
    if not (cfg.item_embedding and cfg.item_lr > 0):
        return {}
    return {k: cfg.item_lr for k in ITEM_TABLES}


@dataclass
class ServerOptimizer:
    """Applies a mean update Delta to the global parameters.

    "sgd":  x <- x + lr * Delta
    "adam": m <- b1 m + (1-b1) Delta; v <- b2 v + (1-b2) Delta^2; x <- x + lr * m_hat / (sqrt(v_hat) + eps)
            (bias-corrected moments; per-coordinate step sizes let rarely touched item rows learn).
    With total_steps T > 0, the step size of step t (1..T) decays on a cosine from lr to lr * final_fraction:
    lr_t = lr * (f + (1 - f) (1 + cos(pi (t - 1) / (T - 1))) / 2); after T it stays at lr * f.
    With warmup_steps W > 0, lr_t is also multiplied by min(1, t / W): Adam's first steps move every coordinate
    by about lr whatever its update, so a ramp keeps the first rounds from overshooting.
    decay {name: w}: decoupled weight decay (AdamW, Loshchilov & Hutter 2019), x <- x (1 - lr_t w) before the
    step: an L2 pull of those parameters counted once per round, not once per user who touched them.
    sgd_lr {name: a}: those parameters take x <- x + a * (lr_t / lr) * users * Delta whatever the kind, with
    users the count Delta was divided by (so a times the SUM of the users' updates): an item row's step then
    grows with the users who touched it, where Adam's per-coordinate step gives a row seen once the step of a
    popular one.
    """

    kind: str = "adam"
    lr: float = 0.02
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    step: int = 0
    total_steps: int = 0
    final_fraction: float = 1.0
    warmup_steps: int = 0
    m: dict[str, np.ndarray] = field(default_factory=dict)
    v: dict[str, np.ndarray] = field(default_factory=dict)
    decay: dict[str, float] = field(default_factory=dict)
    sgd_lr: dict[str, float] = field(default_factory=dict)

    def current_lr(self) -> float:
        """The step size of step `self.step` (1-based)."""
        ramp = min(1.0, max(self.step, 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.total_steps <= 0 or self.final_fraction == 1.0:
            return self.lr * ramp
        progress = min(max(self.step - 1, 0) / max(self.total_steps - 1, 1), 1.0)
        f = self.final_fraction
        return self.lr * ramp * (f + (1.0 - f) * 0.5 * (1.0 + np.cos(np.pi * progress)))

    def apply(self, params: Mapping[str, np.ndarray], delta: Mapping[str, np.ndarray],
              users: float = 1.0) -> dict[str, np.ndarray]:
        """New params from the mean update delta (the users' sum divided by `users`)."""
        self.step += 1
        lr = self.current_lr()
        out = {}
        for k, x in params.items():
            d = np.asarray(delta[k], np.float64)
            if self.decay.get(k, 0.0):
                x = np.asarray(x, np.float64) * (1.0 - lr * self.decay[k])
            if k in self.sgd_lr:
                out[k] = (x + self.sgd_lr[k] * (lr / self.lr) * users * d).astype(np.float32)
                continue
            if self.kind == "sgd":
                out[k] = (x + lr * d).astype(np.float32)
                continue
            m = self.m.get(k, np.zeros_like(d))
            v = self.v.get(k, np.zeros_like(d))
            m = self.beta1 * m + (1 - self.beta1) * d
            v = self.beta2 * v + (1 - self.beta2) * d * d
            self.m[k], self.v[k] = m, v
            m_hat = m / (1 - self.beta1 ** self.step)
            v_hat = v / (1 - self.beta2 ** self.step)
            out[k] = (x + lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(np.float32)
        return out
