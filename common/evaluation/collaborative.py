"""Classic collaborative baselines on the same split: implicit ALS and BPR (the `implicit` package).

They see what a centralized recommender would see (every training engagement, no text, no context) and are
scored by the same full-ranking and sampled protocol as every other system (`evaluate_scores`). Each one's
hyperparameters are chosen from a small fixed grid by validation HR@k, never by test metrics.
The package is an optional extra (`pip install fedctx[eval]`; the lock file includes it): without it the
report says so and lists the other systems.
"""

from __future__ import annotations

import time
import warnings
from typing import Callable

import numpy as np
from scipy import sparse

from common.config import Config
from common.federation.users import UserStore
from common.evaluation.evaluate import evaluate_scores

__all__ = ["IMPLICIT_GRIDS", "implicit_available", "interaction_matrix", "fit_implicit", "implicit_baselines"]

#: Hyperparameters tried for each baseline (one fit each); the validation split picks one.
IMPLICIT_GRIDS: dict[str, tuple[dict, ...]] = {
    "als": tuple({"factors": f, "regularization": r, "alpha": 1.0, "iterations": 15}
                 for f in (32, 64, 128) for r in (0.1, 1.0)),
    "bpr": tuple({"factors": f, "learning_rate": 0.01, "regularization": 0.01, "iterations": 100}
                 for f in (32, 64, 128)),
}


def implicit_available() -> bool:
    """Whether the optional `implicit` package can be imported."""
    try:
        import implicit  # noqa: F401
    except ImportError:
        return False
    return True


def interaction_matrix(store: UserStore, n_items: int) -> sparse.csr_matrix:
    """Binary user x item matrix [n_users, n_items] (float32) of the store's training engagements."""
    users = np.repeat(np.arange(store.n_users), np.diff(store.offsets))
    x = sparse.csr_matrix((np.ones(len(users), np.float32), (users, store.items)), shape=(store.n_users, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return x


def fit_implicit(kind: str, x: sparse.csr_matrix, params: dict, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit ALS or BPR on x [n_users, n_items]; returns (user factors [n_users, f'], item factors [n_items, f']),
    whose dot product is the score (BPR's last factor is its item bias, with a user factor of 1)."""
    from implicit.als import AlternatingLeastSquares
    from implicit.bpr import BayesianPersonalizedRanking
    from threadpoolctl import threadpool_limits

    model_cls = {"als": AlternatingLeastSquares, "bpr": BayesianPersonalizedRanking}[kind]
    with warnings.catch_warnings(), threadpool_limits(1, "blas"):  # implicit warns when BLAS runs threads of its own
        warnings.filterwarnings("ignore", message=".*(OpenBLAS|threadpoolctl|blas).*")
        model = model_cls(random_state=seed, num_threads=1, **params)  # one thread: the same factors every run
        model.fit(x, show_progress=False)
    user, item = model.user_factors, model.item_factors
    to_np = (lambda a: a.to_numpy() if hasattr(a, "to_numpy") else np.asarray(a))
    return to_np(user), to_np(item)


def implicit_baselines(store: UserStore, n_items: int, cfg: Config, summarise: Callable[[dict], dict],
                       say: Callable[[str], None] = print) -> tuple[dict[str, dict], dict[str, float]]:
    """ALS and BPR on the store's training engagements, each at the grid point with the best validation HR@k.

    summarise(per-user metrics) -> the reported numbers. Returns ({"als": metrics, "bpr": metrics}, timings);
    each system's metrics carry its chosen hyperparameters under "selected".
    """
    x = interaction_matrix(store, n_items)
    systems, timings = {}, {}
    for kind, grid in IMPLICIT_GRIDS.items():
        t0 = time.perf_counter()
        best = None
        for params in grid:
            user, item = fit_implicit(kind, x, params, cfg.seed)
            score = (lambda u, user=user, item=item: user[u] @ item.T)  # [len(u), n_items]
            val = float(evaluate_scores(score, store, n_items, cfg, "val")["hr"].mean())
            if best is None or val > best[0]:
                best = (val, params, score)
        val, params, score = best
        systems[kind] = {**summarise(evaluate_scores(score, store, n_items, cfg, "test")),
                         "selected": dict(params), f"val-hr@{cfg.top_k}": val}
        timings[f"{kind}_total_s"] = time.perf_counter() - t0
        say(f"{kind}: best validation HR@{cfg.top_k} {val:.4f} with {params} ({len(grid)} fits, "
            f"{timings[f'{kind}_total_s']:.1f}s)")
    return systems, timings
