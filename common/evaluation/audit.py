"""Empirical privacy audit: a user-level membership-inference attack on the released global model.

Threat model: the adversary is the server, or anyone who sees the global model the server
releases (the shared parameters only, never theta_u). It knows a candidate user's engagement
history and wants to decide whether that user took part in training.

Attack: loss threshold (Yeom, Giacomelli, Fredrikson, Jha 2018, "Privacy Risk in Machine Learning"),
at the unit of privacy (the user). The adversary rebuilds the user's vector from the history with the
product's own warm start (time-decayed mean of phi(c)), scores the whole catalogue, and takes the
mean full-softmax cross-entropy of the history's engagements as the user's loss; members of the
training set are expected to have lower loss. The threshold-free summary is the ROC AUC of -loss
(scikit-learn); 0.5 means the attack cannot tell members from non-members.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from common.federation.users import UserStore
from common.federation.updates import init_theta, item_representations
from common.model.scoring import DENSE_NAMES
from common.model.formula import score_items

__all__ = ["user_losses", "membership_auc"]


def user_losses(params: Mapping[str, np.ndarray], store: UserStore, users: np.ndarray, item_h: np.ndarray,
                half_life_days: float, max_engagements: int = 20, chunk: int = 2048) -> np.ndarray:
    """Mean full-softmax cross-entropy [len(users)] of each user's newest <= max_engagements training
    engagements under the released shared parameters, with theta_u rebuilt from the history."""
    users = np.asarray(users, np.int64)
    phi = item_representations(params, item_h)
    theta = init_theta(store, users, phi, half_life_days)
    dense = {k: np.asarray(params[k], np.float32) for k in DENSE_NAMES}
    emb, bias = params.get("items/embedding"), params.get("items/bias")
    owner, rows = [], []
    for i, u in enumerate(users):
        lo, hi = store.offsets[u], store.offsets[u + 1]
        take = np.arange(lo, hi)[np.argsort(store.age_days[lo:hi], kind="stable")[:max_engagements]]
        owner.append(np.full(len(take), i))
        rows.append(take)
    owner, rows = np.concatenate(owner), np.concatenate(rows)
    loss = np.zeros(len(rows))
    for start in range(0, len(rows), chunk):
        o, r = owner[start: start + chunk], rows[start: start + chunk]
        s = score_items(dense, theta[o], store.ctx[r], item_h, emb, bias).astype(np.float64)
        top = s.max(axis=1)
        lse = top + np.log(np.exp(s - top[:, None]).sum(axis=1))
        loss[start: start + chunk] = lse - s[np.arange(len(r)), store.items[r]]
    return np.bincount(owner, weights=loss, minlength=len(users)) / np.maximum(
        np.bincount(owner, minlength=len(users)), 1)


def membership_auc(member_losses: np.ndarray, nonmember_losses: np.ndarray) -> float:
    """ROC AUC of the loss-threshold attack (score -loss; members are the positive class)."""
    from sklearn.metrics import roc_auc_score

    y = np.concatenate([np.ones(len(member_losses)), np.zeros(len(nonmember_losses))])
    score = -np.concatenate([member_losses, nonmember_losses])
    return float(roc_auc_score(y, score))
