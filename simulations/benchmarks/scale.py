"""Where start-up and evaluation spend their time at scale, old way and new way side by side in one process.

`python -m simulations.benchmarks.scale --users 1000000 --eval 5000` (synthetic data, generated once into the cache):
CPU seconds (this process, TensorFlow on one thread as in a simulated node) and wall seconds of
  * reading the prepared dataset: `load_dataset` (what the main process and every node's process paid before)
    against a hit of the content-hash cache (`common.data.cache`, memory-mapped);
  * building node 0's shard of 2: the old per-user concatenation against the vectorised `UserStore.from_prepared`
    (the old one ran for every message; the store is now built once per process);
  * evaluating `--eval` users of that shard on both splits: the old per-user loop (`rank_of_target` and a
    fresh draw of the sampled negatives every round) against the blocked `evaluate_scores`, first round (draws
    the negatives) and later rounds (keeps them); the per-user results are checked equal.
Per-user figures scale linearly in the users (every cost is per user or per block of users).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np


def _clock():
    return time.process_time(), time.perf_counter()


def _since(t0) -> tuple[float, float]:
    c, w = _clock()
    return c - t0[0], w - t0[1]


def _old_from_prepared(ds, users: np.ndarray) -> np.ndarray:
    """The gather of the old UserStore.from_prepared (one slice per user), the part the new one vectorises."""
    order = np.argsort(ds.train.user, kind="stable")
    user_sorted = ds.train.user[order]
    lo = np.searchsorted(user_sorted, users, side="left")
    hi = np.searchsorted(user_sorted, users, side="right")
    return np.concatenate([order[a:b] for a, b in zip(lo, hi)])


def _old_evaluate(score, store, n_items, cfg, split, users, chunk=512) -> dict[str, np.ndarray]:
    """evaluate_scores as it was (commit 201827a): per-user exclusion lists, rank_of_target, negatives drawn anew."""
    from common.privacy.sampling import user_rng
    from common.evaluation.metrics import hit_and_ndcg, rank_of_target, sample_eval_negatives

    target = store.val_item if split == "val" else store.test_item
    out = {m: np.zeros(len(users)) for m in ("hr", "ndcg", "hr-sampled", "ndcg-sampled")}
    for start in range(0, len(users), chunk):
        pos = np.arange(start, min(start + chunk, len(users)))
        us = users[pos]
        scores = score(us)
        scores = np.where(np.isnan(scores), -np.inf, scores)
        history = [store.history(u) if split == "val" else np.append(store.history(u), store.val_item[u]) for u in us]
        out["hr"][pos], out["ndcg"][pos] = hit_and_ndcg(rank_of_target(scores, target[us], history), cfg.top_k)
        s_rank = np.zeros(len(us), np.int64)
        for i, u in enumerate(us):
            seen = np.concatenate([store.history(u), [store.val_item[u], store.test_item[u]]])
            negs = sample_eval_negatives(n_items, seen, cfg.eval_negatives,
                                         user_rng(cfg.seed, 0, store.user_keys[u], f"eval-{split}"))
            s_rank[i] = int((scores[i, negs] >= scores[i, target[u]]).sum())
        out["hr-sampled"][pos], out["ndcg-sampled"][pos] = hit_and_ndcg(s_rank, cfg.top_k)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--eval", type=int, default=5000, help="users of node 0 evaluated (both splits)")
    parser.add_argument("--skip-load", action="store_true", help="leave out the (slow) uncached load_dataset")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from common.config import Config
    from common.data.loader import load_dataset
    from common.data.datasets import cache_dir, resolve_dataset
    from common.federation.users import UserStore
    from common.evaluation.evaluate import catalogue_scorer, evaluate_scores
    from common.model.scoring import DENSE_NAMES
    from common.model.formula import ModelShape, init_shared
    from common.data.cache import dataset_digest, load_prepared

    cfg = Config(synthetic_users=args.users)
    path = resolve_dataset(cfg)
    rows = []

    def row(what: str, t, per: int = 0) -> None:
        cpu, wall = _since(t)
        extra = f"  ({1e6 * cpu / per:.0f} us CPU per user-split)" if per else ""
        rows.append(f"{what:<66} CPU {cpu:8.2f} s  wall {wall:8.2f} s{extra}")
        print(rows[-1], flush=True)

    t = _clock()
    dataset_digest(path)
    row("content hash of the dataset files", t)
    if not args.skip_load:
        t = _clock()
        load_dataset(path)
        row("old: load_dataset (parse, validate, encode)", t)
    load_prepared(path, cache_dir() / "prepared")  # make sure the entry exists (a miss writes it)
    t = _clock()
    ds = load_prepared(path, cache_dir() / "prepared")
    row("new: load_prepared, a hit (hash + memory-map)", t)
    users = np.array_split(np.arange(ds.n_users), 2)[0]
    t = _clock()
    _old_from_prepared(ds, users)
    row(f"old: shard gather, {len(users):,} users (paid every message)", t)
    t = _clock()
    store = UserStore.from_prepared(ds, users)
    row(f"new: UserStore.from_prepared, {len(users):,} users (once per process)", t)

    rng = np.random.default_rng(0)
    shape = ModelShape(ds.n_items, cfg.text_dim, cfg.dim, ds.context_dim, True)
    params = init_shared(shape, 0)
    params["context/interaction"] = rng.normal(0, 0.1, params["context/interaction"].shape).astype(np.float32)
    item_h = rng.normal(size=(ds.n_items, cfg.text_dim)).astype(np.float32)
    theta = rng.normal(0, 0.3, (store.n_users, cfg.dim)).astype(np.float32)
    dense = {k: params[k] for k in DENSE_NAMES}
    sample = np.arange(min(args.eval, store.n_users))
    n = 2 * len(sample)
    scorers = {split: catalogue_scorer(dense, theta, store.val_ctx if split == "val" else store.test_ctx, item_h,
                                       params["items/embedding"], params["items/bias"]) for split in ("val", "test")}
    t = _clock()
    old = {s: _old_evaluate(scorers[s], store, ds.n_items, cfg, s, sample) for s in ("val", "test")}
    row(f"old: evaluation of {len(sample):,} users, val + test (every round)", t, n)
    for attempt in ("first round: draws the sampled negatives", "later rounds: negatives kept"):
        t = _clock()
        new = {s: evaluate_scores(scorers[s], store, ds.n_items, cfg, s, users=sample) for s in ("val", "test")}
        row(f"new: evaluation of {len(sample):,} users, {attempt}", t, n)
    same = all(np.array_equal(old[s][k], new[s][k]) for s in old for k in old[s])
    print(f"per-user metrics old == new: {same}")
    print(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if not same:
        raise SystemExit("the blocked evaluation differs from the old one")


if __name__ == "__main__":
    main()
