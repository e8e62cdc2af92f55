"""ALS and BPR baselines (implicit): the matrix they see, the grid choice by validation, and that they learn."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import Config
from common.federation.users import UserStore
from common.evaluation.evaluate import evaluate_scores

pytest.importorskip("implicit")

from common.evaluation.collaborative import IMPLICIT_GRIDS, fit_implicit, implicit_baselines, interaction_matrix  # noqa: E402


def block_store(n_users: int = 60, n_items: int = 40, per_user: int = 8, seed: int = 0) -> UserStore:
    """Two tastes: even users engage only with items 0..19, odd users only with 20..39, uniformly within the
    block (so popularity cannot tell the blocks apart). Every user's val and test item is from their own block
    and not in their history."""
    rng = np.random.default_rng(seed)
    half = n_items // 2
    items, val, test = [], [], []
    for u in range(n_users):
        block = np.arange(half) + (half if u % 2 else 0)
        chosen = rng.choice(block, per_user + 2, replace=False)
        items.append(chosen[:per_user])
        val.append(chosen[per_user])
        test.append(chosen[per_user + 1])
    items = np.concatenate(items).astype(np.int64)
    n = len(items)
    return UserStore(user_keys=np.arange(n_users).astype(str), offsets=np.arange(0, n + 1, per_user, dtype=np.int64),
                     items=items, age_days=np.zeros(n, np.float32), ctx=np.zeros((n, 0), np.float32),
                     val_item=np.array(val, np.int64), val_ctx=np.zeros((n_users, 0), np.float32),
                     test_item=np.array(test, np.int64), test_ctx=np.zeros((n_users, 0), np.float32))


def test_interaction_matrix_is_the_binary_history():
    store = block_store()
    # a repeated engagement counts once
    store = UserStore(**{**store.__dict__, "items": np.where(np.arange(len(store.items)) == 1, store.items[0],
                                                              store.items)})
    x = interaction_matrix(store, 40).toarray()
    expected = np.zeros((store.n_users, 40), np.float32)
    for u in range(store.n_users):
        expected[u, store.history(u)] = 1.0
    np.testing.assert_array_equal(x, expected)
    assert x[0].sum() == len(set(store.history(0).tolist())) == 7


def test_als_and_bpr_learn_the_blocks_and_are_chosen_on_validation():
    store = block_store()
    cfg = Config().replace(top_k=10, eval_negatives=5)
    found, timings = implicit_baselines(store, 40, cfg, lambda m: {"hr@10": float(m["hr"].mean())}, say=lambda s: None)
    assert set(found) == {"als", "bpr"} and set(timings) == {"als_total_s", "bpr_total_s"}
    x = interaction_matrix(store, 40)
    for kind, grid in IMPLICIT_GRIDS.items():
        # the reported validation HR is the best of the grid, refitted here point by point
        vals = []
        for params in grid:
            user, item = fit_implicit(kind, x, params, cfg.seed)
            vals.append(evaluate_scores(lambda u: user[u] @ item.T, store, 40, cfg, "val")["hr"].mean())
        assert found[kind]["val-hr@10"] == pytest.approx(max(vals))
        assert found[kind]["selected"] == grid[int(np.argmax(vals))]
    # the test item is one of the 11 unseen items of the user's block among 31 unseen items: chance (and
    # popularity, which is flat over both blocks) gives HR@10 near 10/31; a model of the blocks near 10/11
    assert found["als"]["hr@10"] >= 0.8
    assert found["bpr"]["hr@10"] >= 0.5
