"""Where a run's dataset comes from: a dataset directory, or the embedded synthetic generator."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from common.config import Config
from common.data.loader import PreparedDataset

__all__ = ["cache_dir", "resolve_dataset", "load_cached", "GENERATOR_VERSION"]

#: Bumped whenever the synthetic generator's output changes, so cached data is never stale.
GENERATOR_VERSION = 3  # 3: dataset.toml declares the device vocabulary


def cache_dir() -> Path:
    """Directory for generated data ($FEDCTX_CACHE, default ~/.cache/fedctx)."""
    return Path(os.environ.get("FEDCTX_CACHE", Path.home() / ".cache" / "fedctx"))


def resolve_dataset(cfg: Config) -> Path:
    """Dataset directory of a run; "synthetic" generates the seed case once (deterministic) and caches it."""
    if cfg.data != "synthetic":
        path = Path(cfg.data).expanduser()
        if not (path / "dataset.toml").is_file():
            raise FileNotFoundError(
                f"data: {path} is not a dataset directory (no dataset.toml). Fix: pass a directory made by "
                "`fedctx data generate` or `fedctx data import movielens`, or data=synthetic.")
        return path
    from common.data.sources.synthetic import SyntheticConfig, write_synthetic

    path = cache_dir() / f"synthetic-v{GENERATOR_VERSION}-u{cfg.synthetic_users}-i{cfg.synthetic_items}-s{cfg.seed}"
    if not (path / "dataset.toml").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write_synthetic(path, SyntheticConfig(users=cfg.synthetic_users, items=cfg.synthetic_items,
                                                  seed=cfg.seed))
        except FileExistsError:
            if not (path / "dataset.toml").is_file():  # another process is writing it right now
                raise
    return path


@functools.lru_cache(maxsize=4)
def load_cached(path: str) -> PreparedDataset:
    """load_dataset, once per process and path (nodes of one process share it), and once per content on this
    machine: the prepared arrays are kept under cache_dir()/prepared by content hash and memory-mapped
    (`common.data.cache`)."""
    from common.data.cache import load_prepared

    return load_prepared(path, cache_dir() / "prepared")
