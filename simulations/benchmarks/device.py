"""Benchmark of the device side: the TFLite scorer next to numpy and TensorFlow scoring, and refresh_theta.

    python -m simulations.benchmarks.device [--items 10000] [--dim 32] [--text-dim 64] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from common.io import write_atomic

__all__ = ["device_bench", "latency_ms"]


def latency_ms(fn: Callable[[], object], repeats: int) -> dict[str, float]:
    """p50/p99 wall time (ms) of `repeats` calls of fn, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    ms = 1e3 * np.asarray(times)
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def device_bench(n_items: int = 10000, dim: int = 32, text_dim: int = 64, context_dim: int = 12,
                 item_embedding: bool = False, k: int = 10, repeats: int = 200, history: int = 200,
                 refresh_steps: int = 20, threads: int = 1, seed: int = 0,
                 say: Callable[[str], None] = print) -> dict:
    """Time one top-k query over the whole catalogue, side by side in one process, and refresh_theta.

    Random shared parameters (ModelShape of the given sizes) and item_h [n_items, text_dim]. Rows:
    tflite (the exported scorer, TFLite interpreter with `threads` threads: scores + top-k);
    numpy (phi, b precomputed: phi q + b + shift, argpartition top-k); tf (common.model.formula.score_items, the whole
    formula with phi recomputed, + tf.math.top_k); recommend (client.device.recommend with tables kept: history
    of `history` items excluded and every explanation built). refresh: refresh_theta on `history` engagements,
    `refresh_steps` SGD steps (first call with its trace, then p50 of 10). Returns the figures as a dict.
    """
    import tensorflow as tf

    from client.device import item_tables, recommend, refresh_theta
    from client.tflite import TFLiteScorer, export_scorer
    from common.model.scoring import DENSE_NAMES
    from common.model.formula import ModelShape, score_items

    rng = np.random.default_rng(seed)
    shape = ModelShape(n_items=n_items, text_dim=text_dim, dim=dim, context_dim=context_dim,
                       item_embedding=item_embedding)
    params = {name: rng.normal(0.0, 0.1, s).astype(np.float32) for name, s in shape.shapes().items()}
    item_h = rng.normal(size=(n_items, text_dim)).astype(np.float32)
    theta = rng.normal(size=dim).astype(np.float32)
    ctx = rng.normal(size=context_dim).astype(np.float32)
    past = rng.choice(n_items, size=history, replace=False)
    out: dict = {"n_items": n_items, "dim": dim, "text_dim": text_dim, "context_dim": context_dim, "k": k,
                 "item_embedding": item_embedding, "repeats": repeats, "threads": threads}

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = export_scorer(params, item_h, Path(tmp) / "scorer.tflite", k=k)
        out["tflite_export_s"] = time.perf_counter() - t0
        out["tflite_bytes"] = os.path.getsize(path)
        scorer = TFLiteScorer(path, num_threads=threads)
    tables = item_tables(params, item_h)
    phi, bias = tables.phi, tables.bias
    w_int, shift, b0 = params["context/interaction"], params["context/shift"], params["global-bias"][0]
    dense = {name: params[name] for name in DENSE_NAMES}

    def numpy_top_k() -> np.ndarray:
        s = phi @ (theta + w_int.T @ ctx) + bias + (shift @ ctx + b0)
        top = np.argpartition(-s, k - 1)[:k]
        return top[np.argsort(-s[top], kind="stable")]

    def tf_top_k() -> np.ndarray:
        s = score_items(dense, theta[None], ctx[None], item_h, params.get("items/embedding"), params.get("items/bias"))
        return tf.math.top_k(s[0], k=k).indices.numpy()

    ref = scorer(theta, ctx)
    out["tflite_top_k_equals_numpy"] = bool(np.array_equal(ref["top_indices"], numpy_top_k()))
    rows = {
        "tflite": lambda: scorer(theta, ctx),
        "numpy": numpy_top_k,
        "tf": tf_top_k,
        "recommend": lambda: recommend(params, item_h, theta, ctx, past, k=k, tables=tables),
    }
    for name, fn in rows.items():
        out[name] = latency_ms(fn, repeats)

    ages = rng.uniform(0.0, 365.0, history)
    past_ctx = rng.normal(size=(history, context_dim)).astype(np.float32)

    def refresh() -> np.ndarray:
        return refresh_theta(params, item_h, theta, past, past_ctx, ages, steps=refresh_steps, lr=0.2, negatives=16,
                             seed=seed, l2=1e-3, half_life_days=30.0, loss="softmax")

    t0 = time.perf_counter()
    refresh()
    out["refresh_first_s"] = time.perf_counter() - t0
    out["refresh"] = latency_ms(refresh, 10)
    out["refresh_steps"], out["history"] = refresh_steps, history

    out["load_average_1min"], out["cpus"] = os.getloadavg()[0], os.cpu_count()
    _say_device_bench(out, say)
    return out


def _say_device_bench(out: dict, say: Callable[[str], None]) -> None:
    """`device_bench`'s figures as a table."""
    k, history, refresh_steps = out["k"], out["history"], out["refresh_steps"]
    say(f"device bench: {out['n_items']} items, dim {out['dim']}, text_dim {out['text_dim']}, context_dim "
        f"{out['context_dim']}, top-{k}, {out['repeats']} queries, TFLite threads {out['threads']}; load average "
        f"{out['load_average_1min']:.1f} on {out['cpus']} CPUs (other work skews p99)")
    say(f"  TFLite file {out['tflite_bytes'] / 2 ** 20:.2f} MiB (export {out['tflite_export_s']:.3f} s); "
        f"TFLite top-k equals numpy: {out['tflite_top_k_equals_numpy']}")
    say(f"  {'one top-' + str(k) + ' query':28s} {'p50 ms':>8s} {'p99 ms':>8s}")
    for name, label in (("tflite", "TFLite interpreter"), ("numpy", "numpy (phi precomputed)"),
                        ("tf", "TF score_items + top_k"), ("recommend", "recommend (explained)")):
        say(f"  {label:28s} {out[name]['p50_ms']:8.3f} {out[name]['p99_ms']:8.3f}")
    say(f"  refresh_theta ({history} engagements, {refresh_steps} steps): first call {out['refresh_first_s']:.2f} s "
        f"(numpy: no trace), then p50 {out['refresh']['p50_ms']:.1f} ms, p99 {out['refresh']['p99_ms']:.1f} ms")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m simulations.benchmarks.device", description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=10000)
    p.add_argument("--dim", type=int, default=32)
    p.add_argument("--text-dim", type=int, default=64)
    p.add_argument("--context-dim", type=int, default=12)
    p.add_argument("--item-embedding", action="store_true")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    out = device_bench(n_items=a.items, dim=a.dim, text_dim=a.text_dim, context_dim=a.context_dim,
                       item_embedding=a.item_embedding, repeats=a.repeats, threads=a.threads, seed=a.seed)
    if a.json:
        write_atomic(a.json, json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
