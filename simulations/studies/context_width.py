"""Benchmark: a round's cost against the width of the context, same users and items.

Makes a wide copy of the seed case (the generator's interactions plus `--columns` categorical context columns of
`--values` values each, drawn at random, so about columns x values more one-hot features) and times the nodes' work
of a full-participation round (`common.federation.updates.user_updates` for every user, the computation each node runs),
median of the rounds after the first, for the default and the wide data, per loss. Prints the ratios.

    python -m simulations.studies.context_width --columns 4 --values 72 --loss softmax --loss ials
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from common.config import Config
from common.data.datasets import cache_dir, resolve_dataset

__all__ = ["wide_dataset", "round_seconds", "main"]


def wide_dataset(cfg: Config, columns: int, values: int) -> Path:
    """The seed case of `cfg` with `columns` extra categorical context columns of `values` values (cached)."""
    from common.io import write_dataset
    from common.data.sources.synthetic import SyntheticConfig, generate

    path = cache_dir() / f"wide-u{cfg.synthetic_users}-i{cfg.synthetic_items}-s{cfg.seed}-c{columns}x{values}"
    if (path / "dataset.toml").is_file():
        return path

    def produce():
        interactions, items, _ = generate(SyntheticConfig(users=cfg.synthetic_users, items=cfg.synthetic_items,
                                                          seed=cfg.seed))
        rng = np.random.default_rng(cfg.seed + 1)
        for c in range(columns):
            interactions[f"extra{c}"] = np.char.add("v", rng.integers(0, values, len(interactions)).astype(str))
        return "synthetic-wide", interactions, items

    kinds = {"device": "categorical", **{f"extra{c}": "categorical" for c in range(columns)}}
    return write_dataset(path, produce, time_column="timestamp", context_columns=kinds,
                         from_time=["hour", "weekday", "weekend"])


def round_seconds(cfg: Config, rounds: int) -> tuple[int, float]:
    """(context width, median seconds of the nodes' work per full-participation round after the first)."""
    from common.data.loader import load_dataset
    from common.federation.users import UserStore
    from common.federation.updates import init_theta, item_representations, user_updates
    from common.model.formula import ModelShape, init_shared
    from server.content import content_vectors

    ds = load_dataset(resolve_dataset(cfg))
    store = UserStore.from_prepared(ds, np.arange(ds.n_users), use_context=cfg.use_context)
    item_h = content_vectors(cfg, ds.item_texts, ds.item_ids)
    params = init_shared(ModelShape(ds.n_items, item_h.shape[1], cfg.dim, store.ctx.shape[1], cfg.item_embedding),
                         cfg.seed)
    users = np.arange(store.n_users)
    theta = init_theta(store, users, item_representations(params, item_h), cfg.half_life_days)
    seconds = []
    for r in range(1, rounds + 1):
        t0 = time.perf_counter()
        updates, theta = user_updates(params, theta, store, users, item_h, cfg, r)
        updates.total({k: v.shape for k, v in params.items()})  # what a node sends
        seconds.append(time.perf_counter() - t0)
    return store.ctx.shape[1], float(np.median(seconds[1:]))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--values", type=int, default=72)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--loss", action="append", default=None, help="softmax (default), bce, ials; repeatable")
    args = parser.parse_args(argv)
    base = Config()
    wide = base.replace(data=str(wide_dataset(base, args.columns, args.values)))
    out = []
    for loss in args.loss or ["softmax"]:
        narrow_w, narrow_s = round_seconds(base.replace(loss=loss), args.rounds)
        wide_w, wide_s = round_seconds(wide.replace(loss=loss), args.rounds)
        row = {"loss": loss, "context_width": [narrow_w, wide_w], "round_s": [narrow_s, wide_s],
               "ratio": wide_s / narrow_s}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


if __name__ == "__main__":
    main()
