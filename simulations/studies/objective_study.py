"""The implicit-ALS objective on the model's own item side, trained centrally: does the objective close the gap
to ALS? Alternates the closed-form theta_u of every user (`common.model.scoring.ials_theta`) with Adam steps of the
shared item side (content tower, item-id embedding and biases) on `common.model.ials.ials_loss`. Context-free.
Each seed: test HR/NDCG@10 at the iteration with the best validation HR@10. Writes objective.json and table.md.

    python -m simulations.studies.objective_study --data data/ml-100k --seeds 0,1,2 --out runs/objective
    python -m simulations.studies.objective_study --data data/ml-100k --no-text --no-bias --out runs/objective-mf  # E alone
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from common.config import Config, config_from_mapping, parse_overrides
from common.data.datasets import load_cached, resolve_dataset
from common.federation.users import UserStore
from common.evaluation.evaluate import evaluate_users
from common.model.scoring import ITEM_NAMES, ials_solve
from common.model.formula import ModelShape, init_shared
from common.model.ials import ials_loss
from common.io import write_atomic
from simulations.studies.seeds import finish_table, mean_sd, study_parser

__all__ = ["train_ials"]

#: the shared parameters this study trains (the context weights and the global bias stay at zero)
TRAINED = ("tower/kernel", "tower/bias", "text-bias/kernel") + ITEM_NAMES


def train_ials(cfg: Config, alpha0: float, lam: float, item_l2: float, lr: float, inner: int, outer: int,
               init_std: float, text: bool, bias: bool = True) -> dict:
    """One centralized run; returns {"val", "iteration", "test-hr", "test-ndcg", "curve" [outer val HR]}."""
    from server.content import content_vectors

    ds = load_cached(str(resolve_dataset(cfg)))
    item_h = content_vectors(cfg, ds.item_texts, ds.item_ids)
    if not text:
        item_h = np.zeros_like(item_h)  # phi(c) = E[c], b(c) = e[c]: plain matrix factorisation
    store = UserStore.from_prepared(ds, np.arange(ds.n_users), use_context=False)
    params = init_shared(ModelShape(item_h.shape[0], item_h.shape[1], cfg.dim, 0, True), cfg.seed)
    params["items/embedding"] = np.random.default_rng(cfg.seed).normal(
        0.0, init_std, params["items/embedding"].shape).astype(np.float32)
    var = {k: tf.Variable(params[k]) for k in TRAINED
           if (text or k in ITEM_NAMES) and (bias or k not in ("items/bias", "text-bias/kernel"))}
    h = tf.constant(item_h, tf.float32)
    pos_user = tf.constant(np.repeat(np.arange(store.n_users), np.diff(store.offsets)), tf.int32)
    pos_item = tf.constant(store.items, tf.int32)
    opt = tf.keras.optimizers.Adam(lr)

    def item_side() -> tuple[tf.Tensor, tf.Tensor]:
        phi = var["items/embedding"]
        b = var["items/bias"] if bias else tf.zeros(item_h.shape[0], tf.float32)
        if text:
            phi = phi + h @ var["tower/kernel"] + var["tower/bias"]
            b = b + tf.linalg.matvec(h, var["text-bias/kernel"]) if bias else b
        return phi, b

    def solve() -> np.ndarray:
        current = {**params, **{k: v.numpy() for k, v in var.items()}}
        return ials_solve(current, item_h, store.offsets, store.items, store.ctx, alpha0, lam)

    @tf.function
    def step(theta: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            phi, b = item_side()
            loss = ials_loss(theta, phi, b, pos_user, pos_item, alpha0)
            loss += item_l2 * tf.add_n([tf.reduce_sum(tf.square(var[k])) for k in ITEM_NAMES if k in var])
        grads = tape.gradient(loss, list(var.values()))
        opt.apply_gradients(zip(grads, list(var.values())))
        return loss

    best, curve = {"val": -1.0}, []
    for it in range(1, outer + 1):
        t0 = time.perf_counter()
        theta = tf.constant(solve())
        for _ in range(inner):
            loss = step(theta)
        theta = solve()
        current = {**params, **{k: v.numpy() for k, v in var.items()}}
        val = float(evaluate_users(current, theta, store, item_h, cfg, "val")["hr"].mean())
        curve.append(val)
        if val > best["val"]:
            test = evaluate_users(current, theta, store, item_h, cfg, "test")
            best = {"val": val, "iteration": it, "test-hr": float(test["hr"].mean()),
                    "test-ndcg": float(test["ndcg"].mean())}
        print(f"seed {cfg.seed} iteration {it:3d}/{outer}  loss {float(loss):.1f}  val HR@{cfg.top_k} {val:.4f}  "
              f"{time.perf_counter() - t0:.1f}s", flush=True)
    return {**best, "curve": curve}


def main() -> None:
    p = study_parser(__doc__)
    p.add_argument("--alpha0", type=float, default=0.5, help="weight of the all-items term")
    p.add_argument("--lam", type=float, default=0.05, help="L2 of theta_u")
    p.add_argument("--item-l2", type=float, default=0.05, help="L2 of the item-id embedding and bias")
    p.add_argument("--lr", type=float, default=0.01, help="Adam step of the item side")
    p.add_argument("--inner", type=int, default=10, help="item steps per closed-form solve")
    p.add_argument("--outer", type=int, default=35, help="solves")
    p.add_argument("--init-std", type=float, default=0.1, help="std of the initial item-id embedding")
    p.add_argument("--no-text", action="store_true", help="the item-id embedding alone (no content tower)")
    p.add_argument("--no-bias", action="store_true", help="no item biases (with --no-text: plain matrix factorisation)")
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    cfg = config_from_mapping({**parse_overrides(a.sets), "data": a.data, "use-context": "false"})
    runs = []
    for seed in (int(s) for s in a.seeds.split(",")):
        r = train_ials(cfg.replace(seed=seed), a.alpha0, a.lam, a.item_l2, a.lr, a.inner, a.outer, a.init_std,
                       not a.no_text, not a.no_bias)
        runs.append({"seed": seed, **r})
        write_atomic(a.out / "objective.json", json.dumps({"args": {k: str(v) for k, v in vars(a).items()},
                                                          "runs": runs}, indent=2))
    k = cfg.top_k
    table = [f"| objective | val HR@{k} | test HR@{k} | test NDCG@{k} | best iteration | seeds |",
             "| --- | --- | --- | --- | --- | --- |",
             f"| implicit ALS on the model's item side{' (item ids only)' if a.no_text else ''} | "
             f"{mean_sd([r['val'] for r in runs])} | {mean_sd([r['test-hr'] for r in runs])} | "
             f"{mean_sd([r['test-ndcg'] for r in runs])} | {', '.join(str(r['iteration']) for r in runs)} | "
             f"{len(runs)} |"]
    finish_table(a.out, runs, "\n".join(table))


if __name__ == "__main__":
    main()
