"""A dataset's prepared form (`common.data.loader.load_dataset`), kept on disk by content hash and memory-mapped.

Reading, validating and encoding a dataset's files costs about a minute per million users on one core (parsing and
factorising 20 million string ids, dropping duplicates, encoding the context); every simulated node's process paid
it again before its first message. The result depends only on the bytes of the dataset's files, the loader's
version and the schema a node encodes with, so it is written once under `cache_dir()/prepared/<hash>/` (one `.npy`
per array, the rest in `meta.json`) and later loads map the arrays read-only: no parsing, and processes on one
machine share the pages. A changed file gives another hash (and a fresh load), never a stale result.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from common.data.loader import Interactions, PreparedDataset, load_dataset
from common.data.spec import DEFAULT_HARMONICS
from common.io import atomic_output_dir

__all__ = ["LOADER_VERSION", "dataset_digest", "load_prepared"]

#: Bumped whenever load_dataset's output for the same files changes, so a cached form is never stale.
LOADER_VERSION = 2  # 2: cycles encoded with several harmonics
_SPLITS = ("train", "val", "test")
_FIELDS = ("user", "item", "time", "context")


def dataset_digest(root: str | Path, schema_json: str | None = None) -> str:
    """BLAKE2b (hex, 40) of the loader version, the default harmonics (a dataset.toml without `harmonics` takes them),
    the schema (None: the dataset's own encoding) and the name and bytes
    of every regular file of the dataset directory (hidden files excluded)."""
    h = hashlib.blake2b(digest_size=20)
    h.update(json.dumps({"loader": LOADER_VERSION, "harmonics": DEFAULT_HARMONICS, "schema": schema_json}).encode())
    for path in sorted(p for p in Path(root).iterdir() if p.is_file() and not p.name.startswith(".")):
        h.update(f"\0{path.name}\0{path.stat().st_size}\0".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def load_prepared(root: str | Path, cache: Path, schema=None) -> PreparedDataset:
    """load_dataset(root, schema=schema) from `cache` (a directory) when its content hash is there; otherwise
    loaded, written there atomically, and returned memory-mapped like a later hit."""
    from common.data.context import ContextEncoder

    schema_json = schema.to_json() if schema is not None else None
    target = Path(cache) / dataset_digest(root, schema_json)
    if not (target / "meta.json").is_file():
        ds = load_dataset(root, schema=schema)
        try:
            with atomic_output_dir(target) as tmp:
                for split in _SPLITS:
                    for field in _FIELDS:
                        np.save(tmp / f"{split}.{field}.npy", getattr(getattr(ds, split), field))
                np.save(tmp / "user_ids.npy", np.asarray(ds.user_ids, str))
                np.save(tmp / "item_ids.npy", np.asarray(ds.item_ids, str))
                meta = {"name": ds.name, "item_texts": list(ds.item_texts), "context_names": list(ds.context_names),
                        "cleaning": ds.cleaning,
                        "context_encoder": ds.context_encoder.to_dict() if ds.context_encoder is not None else None}
                (tmp / "meta.json").write_text(json.dumps(meta))
        except OSError:  # another process wrote the same entry first (FileExistsError), or no writable cache
            if not (target / "meta.json").is_file():
                return ds  # the load itself still counts
    meta = json.loads((target / "meta.json").read_text())

    def arr(name: str) -> np.ndarray:
        return np.load(target / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    splits = {s: Interactions(**{f: arr(f"{s}.{f}") for f in _FIELDS}) for s in _SPLITS}
    encoder = meta["context_encoder"]
    return PreparedDataset(name=meta["name"], user_ids=arr("user_ids"), item_ids=arr("item_ids"),
                           item_texts=tuple(meta["item_texts"]), context_names=tuple(meta["context_names"]),
                           cleaning=meta["cleaning"], context_encoder=ContextEncoder.from_dict(encoder)
                           if encoder is not None else None, **splits)
