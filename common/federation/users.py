"""The user store: a node's users, their rows and context, as flat arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.model.scoring import SECONDS_PER_DAY

__all__ = ["UserStore"]


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
        """Store of the given user indices of a `common.data.loader.PreparedDataset`."""
        users = np.asarray(users, np.int64)
        train = ds.train
        if np.all(train.user[1:] >= train.user[:-1]):  # sorted by user, as load_dataset leaves it: no argsort
            order, user_sorted = None, train.user
        else:
            order = np.argsort(train.user, kind="stable")
            user_sorted = train.user[order]
        lo = np.searchsorted(user_sorted, users, side="left")
        hi = np.searchsorted(user_sorted, users, side="right")
        counts = hi - lo
        take = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts - lo, counts)  # lo[u]..hi[u] in turn
        take = take if order is None else order[take]
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
