"""The membership-inference audit: the attack's loss and its ROC AUC."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from common.evaluation.audit import membership_auc, user_losses
from common.config import Config
from common.data.loader import load_dataset
from common.federation.users import UserStore
from common.model.formula import ModelShape, init_shared


def test_auc_equals_pairwise_win_rate():
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(1.0, 1.0, 40), rng.normal(1.5, 1.0, 30)
    members[:3] = nonmembers[:3]  # ties count one half
    wins = sum(1.0 if m < n else 0.5 if m == n else 0.0 for m, n in itertools.product(members, nonmembers))
    assert membership_auc(members, nonmembers) == pytest.approx(wins / (40 * 30))
    assert membership_auc(np.zeros(5), np.ones(5)) == 1.0  # members always lower loss: perfect attack


def test_user_losses_are_softmax_cross_entropy_of_the_newest_engagements(small_synthetic):
    ds = load_dataset(small_synthetic)
    store = UserStore.from_prepared(ds, np.arange(ds.n_users), use_context=False)
    rng = np.random.default_rng(1)
    item_h = rng.normal(size=(ds.n_items, 6)).astype(np.float32)
    params = init_shared(ModelShape(ds.n_items, 6, 4, 0, True), seed=2)
    params["items/embedding"] = rng.normal(0, 0.5, params["items/embedding"].shape).astype(np.float32)
    params["items/bias"] = rng.normal(0, 0.5, ds.n_items).astype(np.float32)
    params["text-bias/kernel"] = rng.normal(0, 0.3, 6).astype(np.float32)
    users = np.array([0, 5, 7])
    got = user_losses(params, store, users, item_h, half_life_days=10.0, max_engagements=3)
    # independent numpy: phi = h W + b + E, b(c) = h w + e; theta = decayed mean of phi over the history
    phi = item_h @ params["tower/kernel"] + params["tower/bias"] + params["items/embedding"]
    bias = item_h @ params["text-bias/kernel"] + params["items/bias"] + params["global-bias"][0]
    for i, u in enumerate(users):
        hist = store.history(u)
        age = store.age_days[store.offsets[u]: store.offsets[u + 1]]
        w = 0.5 ** (age / 10.0)
        theta = (w[:, None] * phi[hist]).sum(0) / w.sum()
        logits = phi @ theta + bias
        log_p = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
        newest = hist[np.argsort(age, kind="stable")[:3]]
        assert got[i] == pytest.approx(-log_p[newest].mean(), rel=1e-4)
