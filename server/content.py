"""The server's content encoders: the public item catalogue -> h(c) [n_items, width].

Three encoders (setting `content-encoder`):
* "word2vec": a Word2Vec model the server trains on the catalogue's texts, pooled per item (the default);
* "precomputed": item vectors made by any model, read from a file (`content-path`) and checked against
  the catalogue;
* "sentence-encoder": a pretrained Transformer sentence encoder (`content-model`: a local directory or a
  name the library downloads) run by the server: mean pooling of the last hidden states over the text's
  tokens, then L2 normalisation (as sentence-transformers does for all-MiniLM-L6-v2).

h(c) is computed once by the server from the public catalogue and shipped to the nodes; the width of h(c) is
the encoder's own. `content_descriptor(cfg)` says which encoder made h(c) (kind, model, sha256 of its files,
and the settings that shape h(c)), so that vectors of two encoders are never mixed. h(c) is cached under
$FEDCTX_CACHE/content, keyed by the catalogue and the descriptor.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from gensim.models import Word2Vec

from common.config import Config, ConfigError
from common.io import save_npy_atomic

__all__ = ["tokenize", "ContentEncoder", "SentenceEncoder", "ContentError", "ItemContent", "content_vectors",
           "item_content", "content_descriptor", "read_precomputed", "align_precomputed", "catalogue_sha256",
           "DESCRIPTOR_VERSION", "whitening"]

#: Bumped whenever the computation of h(c) changes for the same settings (descriptor and cache key).
DESCRIPTOR_VERSION = 1

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


class ContentError(ConfigError):
    """The content encoder's input (vectors file, model directory) is unusable; says the file, rule, value, fix."""


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens of an item text."""
    return _TOKEN.findall(text.lower())


def _stable_hash(text: str) -> int:
    """Process-independent hash, so Word2Vec's initial vectors do not depend on PYTHONHASHSEED."""
    return zlib.crc32(text.encode("utf-8"))


class ContentEncoder:
    """Word2Vec (gensim, skip-gram) trained on item texts; h(c) = pooled word vectors.

    pooling "mean" averages the word vectors of a text; "tfidf" weights each word by its
    inverse document frequency log(n_items / df). Vectors are then standardised per dimension
    over the catalogue; an item with no known word gets the zero vector.
    """

    def __init__(self, dim: int = 64, epochs: int = 15, window: int = 5, pooling: str = "tfidf",
                 seed: int = 0) -> None:
        self.dim, self.epochs, self.window, self.pooling, self.seed = dim, epochs, window, pooling, seed
        self.model: Word2Vec | None = None
        self.idf: dict[str, float] = {}

    def fit(self, texts: Sequence[str]) -> "ContentEncoder":
        docs = [tokenize(t) for t in texts]
        corpus = [d for d in docs if d]
        if not corpus:
            raise ValueError("item texts contain no words: the content encoder needs item text "
                             "(column 'text' of the items file).")
        self.model = Word2Vec(
            sentences=corpus, vector_size=self.dim, window=self.window, min_count=1, sg=1,
            negative=5, epochs=self.epochs, seed=self.seed, workers=1, hashfxn=_stable_hash,
        )
        df: dict[str, int] = {}
        for d in corpus:
            for w in set(d):
                df[w] = df.get(w, 0) + 1
        n = len(texts)
        self.idf = {w: float(np.log(n / c)) + 1e-3 for w, c in df.items()}
        return self

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """h(c) [n, dim] float32 for each text (unstandardised pooled vectors)."""
        if self.model is None:
            raise RuntimeError("ContentEncoder.fit must be called before transform")
        wv = self.model.wv
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, text in enumerate(texts):
            words = [w for w in tokenize(text) if w in wv.key_to_index]
            if not words:
                continue
            vecs = wv[words]
            if self.pooling == "tfidf":
                weights = np.array([self.idf.get(w, 1.0) for w in words], np.float32)
                out[i] = weights @ vecs / weights.sum()
            else:
                out[i] = vecs.mean(axis=0)
        return out


    def item_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """Fit on the catalogue and return standardised h(c) [n_items, dim] float32."""
        h = self.fit(texts).transform(texts)
        mean, std = _moments(h)
        return _standardized(h, mean, std)


def _moments(h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and std [width] over the catalogue; a constant dimension keeps std 1."""
    mean, std = h.mean(axis=0), h.std(axis=0)
    return mean, np.where(std > 0, std, 1.0)


def _standardized(h: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return ((h - mean) / std).astype(np.float32)


# -- precomputed vectors ------------------------------------------------------------------------------------

_PRECOMPUTED_FIX = ("write the file as np.savez(PATH.npz, item_ids=ids, vectors=matrix) with one row per catalogue "
                    "item, or as Parquet with a column item_id and a list column vector of one width")


def _file_error(path: Path, rule: str, found: str, fix: str = _PRECOMPUTED_FIX) -> ContentError:
    return ContentError(f"content-path: {path}: {rule}. Found {found}. Fix: {fix}.")


def _some(values: Sequence[Any], n: int = 5) -> str:
    shown = ", ".join(repr(str(v)) for v in list(values)[:n])
    return f"{len(values)} ({shown}{', ...' if len(values) > n else ''})"


def read_precomputed(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(item_ids [n] str, vectors [n, width]) of a vectors file, in the file's order.

    .npz: arrays `item_ids` [n] and `vectors` [n, width]. .parquet: a column `item_id` and either a list
    column `vector` or one numeric column per dimension. Ids are compared as text with the catalogue's.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise _file_error(path, "no such file", "nothing there", "give content-path the vectors file's path")
    suffix = path.suffix.lower()
    if suffix == ".npz":
        ids, vectors = _read_npz(path)
    elif suffix == ".parquet":
        ids, vectors = _read_parquet(path)
    elif suffix == ".npy":
        raise _file_error(path, "an .npy file holds no item ids, so its rows cannot be matched to the catalogue",
                          "an .npy file")
    else:
        raise _file_error(path, "the vectors file must be .npz or .parquet", f"suffix {suffix or 'none'!r}")
    if len(ids) != len(vectors):
        raise _file_error(path, "item_ids and vectors must have one row each per item",
                          f"{len(ids)} ids and {len(vectors)} vectors")
    if len(ids) == 0 or vectors.shape[1] < 1:
        raise _file_error(path, "the file must hold at least one vector of width >= 1", f"shape {vectors.shape}")
    return np.asarray(ids).astype(str), vectors


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if {"item_ids", "vectors"} - set(f.files):
                raise _file_error(path, "an .npz needs the arrays item_ids and vectors", f"arrays {sorted(f.files)}")
            ids, vectors = f["item_ids"], f["vectors"]
    except ValueError as e:  # object arrays (e.g. rows of several widths) need pickle, which is refused
        if isinstance(e, ContentError):
            raise
        raise _file_error(path, "item_ids and vectors must be plain arrays (vectors a 2-D float matrix, so every "
                                "row has one width)", f"an array that needs pickle ({e})") from None
    if vectors.ndim != 2 or not np.issubdtype(vectors.dtype, np.number):
        raise _file_error(path, "vectors must be a 2-D numeric matrix [n_items, width] (one width for all)",
                          f"shape {vectors.shape}, dtype {vectors.dtype}")
    return ids, vectors


def _read_parquet(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    frame = pd.read_parquet(path)
    if "item_id" not in frame.columns:
        raise _file_error(path, "a Parquet vectors file needs a column item_id", f"columns {list(frame.columns)}")
    ids = frame["item_id"].to_numpy()
    if "vector" in frame.columns:
        rows = [np.zeros(0) if v is None else np.asarray(v, np.float64) for v in frame["vector"]]
        widths = np.array([r.size for r in rows], np.int64)
        if len(rows) and (widths != widths[0]).any():
            odd = ids[widths != np.bincount(widths).argmax()]
            raise _file_error(path, "every vector must have one width",
                              f"widths {sorted(set(widths.tolist()))}; items off the common width: {_some(odd)}")
        return ids, (np.stack(rows) if rows else np.zeros((0, 0)))
    dims = frame.drop(columns=["item_id"])
    bad = [c for c in dims.columns if not pd.api.types.is_numeric_dtype(dims[c])]
    if bad or dims.shape[1] == 0:
        raise _file_error(path, "without a list column vector, every column but item_id must be numeric (one per "
                                "dimension)", f"non-numeric columns {bad or 'none at all'}")
    return ids, dims.to_numpy(np.float64)


def align_precomputed(path: str | Path, ids: np.ndarray, vectors: np.ndarray,
                      item_ids: Sequence[str]) -> np.ndarray:
    """The file's vectors [len(item_ids), width] float32 in the order of `item_ids`, after the checks: no
    duplicate id, every item present, every value finite. Items of the file that are not asked for are ignored
    (a file may cover more than the catalogue)."""
    import pandas as pd

    path = Path(path)
    index = pd.Index(ids)
    if index.has_duplicates:
        raise _file_error(path, "each item id must appear once",
                          f"duplicate ids {_some(index[index.duplicated()].unique())}")
    wanted = np.asarray(item_ids).astype(str)
    pos = index.get_indexer(wanted)
    if (pos < 0).any():
        raise _file_error(path, "every catalogue item needs a vector", f"missing items {_some(wanted[pos < 0])}",
                          "add their vectors (made by the same model) to the file, or drop those items from the "
                          "dataset's items file")
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        raise _file_error(path, "every value must be finite (no NaN or infinity)", f"items {_some(ids[bad])}",
                          "recompute those items' vectors, or drop the items")
    return vectors[pos].astype(np.float32)


# -- pretrained sentence encoder --------------------------------------------------------------------------

_MODEL_FIX = ("give the path of a local model directory (config.json, the tokenizer files, model.safetensors or "
              "tf_model.h5), e.g. --set content-model=/models/all-MiniLM-L6-v2")


def _resolve_model_dir(name_or_path: str) -> Path:
    """A local model directory as given, or the library's download (its cache first) of a model name."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise ContentError(f"content-model: {name_or_path} is not a model directory. Fix: {_MODEL_FIX}.")
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.txt", "model.safetensors", "tf_model.h5"]
        try:
            return Path(snapshot_download(name_or_path, allow_patterns=patterns, local_files_only=True))
        except Exception:  # not in the library's cache yet: download it
            return Path(snapshot_download(name_or_path, allow_patterns=patterns))
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise ContentError(f"content-model: {name_or_path!r} is no local directory and could not be downloaded "
                           f"({type(e).__name__}: {first}). Fix: {_MODEL_FIX}.") from None


class SentenceEncoder:
    """A pretrained Transformer encoder (transformers' TensorFlow classes) over item texts.

    encode(texts) -> [n, width] float32: the last hidden states averaged over each text's real tokens
    (attention mask), then L2-normalised. Weights: tf_model.h5, or a PyTorch model.safetensors (read with
    safetensors' numpy loader, so no PyTorch is needed).
    """

    def __init__(self, model_dir: str | Path, max_length: int = 256, batch: int = 32) -> None:
        transformers = _import_transformers()
        from transformers import AutoTokenizer

        transformers.logging.set_verbosity_error()
        self.model_dir, self.max_length, self.batch = Path(model_dir), max_length, batch
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
            self.model = _load_tf_model(self.model_dir)
        except ContentError:
            raise
        except Exception as e:
            raise ContentError(f"content-model: {self.model_dir} could not be loaded as a Transformer encoder "
                               f"({type(e).__name__}: {e}). Fix: {_MODEL_FIX}.") from None
        self.width = int(self.model.config.hidden_size)
        self._forward = self._graph()

    def _graph(self):
        """The model as one TensorFlow graph over int32 [batch, tokens] inputs (eager Keras calls measured
        about 1.3x the CPU time); the inputs are those the tokenizer makes and the model takes."""
        import tensorflow as tf

        keys = [k for k in self.tokenizer.model_input_names if k in ("input_ids", "attention_mask", "token_type_ids")]
        model = self.model

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)] * len(keys), reduce_retracing=True)
        def forward(*inputs):
            return model(**dict(zip(keys, inputs)), training=False).last_hidden_state  # [B, T, width]

        return lambda enc: forward(*[tf.constant(enc[k], tf.int32) for k in keys]).numpy()

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[len(texts), width] float32, L2-normalised mean-pooled token states."""
        texts = [str(t) for t in texts]
        out = np.zeros((len(texts), self.width), np.float32)
        if not texts:
            return out
        lengths = [len(i) for i in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]
        order = np.argsort(lengths, kind="stable")  # texts of similar length together: little padding
        for start in range(0, len(order), self.batch):
            rows = order[start:start + self.batch]
            enc = self.tokenizer([texts[i] for i in rows], truncation=True, max_length=self.max_length,
                                 padding=True, return_tensors="np")
            states = self._forward(enc)  # [B, T, width]
            mask = enc["attention_mask"][..., None].astype(np.float32)
            pooled = (states * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            out[rows] = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return out


def _import_transformers():
    """transformers with its TensorFlow classes, imported without changing tf.keras for anyone else.

    Importing them sets TF_USE_LEGACY_KERAS=1 (meant for Keras 3 setups). With the Keras 2.15 of this stack,
    that makes tf.keras look for the absent tf_keras package in this process and in every process started
    after it (Flower's Ray workers): "Keras cannot be imported". So tf.keras is resolved first, and the
    variable is put back as it was.
    """
    import tensorflow as tf

    before = os.environ.get("TF_USE_LEGACY_KERAS")
    _ = tf.keras.backend  # resolves the lazy tf.keras to Keras 2 now
    import transformers
    import transformers.modeling_tf_utils  # noqa: F401  (where the variable is set)

    if before is None:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
    else:
        os.environ["TF_USE_LEGACY_KERAS"] = before
    return transformers


def _load_tf_model(model_dir: Path):
    """TensorFlow model of a directory; a PyTorch safetensors checkpoint is converted in memory."""
    from transformers import AutoConfig, TFAutoModel

    weights = model_dir / "model.safetensors"
    if (model_dir / "tf_model.h5").is_file() or not weights.is_file():
        return TFAutoModel.from_pretrained(str(model_dir))
    from safetensors import safe_open
    from safetensors.numpy import load_file
    from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

    with safe_open(str(weights), framework="np") as f:
        fmt = (f.metadata() or {}).get("format", "pt")
    if fmt == "tf":
        return TFAutoModel.from_pretrained(str(model_dir))
    model = TFAutoModel.from_config(AutoConfig.from_pretrained(str(model_dir)))
    model.build_in_name_scope()
    # transformers 4.57 iterates over safe_open(framework="tf"), which safetensors does not allow: pass a dict
    model, info = load_pytorch_state_dict_in_tf2_model(model, load_file(str(weights)), tf_inputs=False,
                                                       allow_missing_keys=True, output_loading_info=True)
    missing = [k for k in info["missing_keys"] if "pooler" not in k]
    if missing:
        raise ContentError(f"content-model: {weights} lacks weights of the encoder: {_some(missing)}. Fix: give the "
                           f"checkpoint of a BERT-style encoder that matches its config.json.")
    return model


@lru_cache(maxsize=2)
def _sentence_encoder(model_dir: str, max_length: int, batch: int) -> SentenceEncoder:
    return SentenceEncoder(model_dir, max_length, batch)


# -- descriptor, cache, one entry point ----------------------------------------------------------------------

def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@lru_cache(maxsize=8)
def _sha256_stamped(path: str, stamp: tuple) -> str:
    """sha256 of a file, or of a directory's files (relative names and contents, in sorted order); memoised
    on the path and the files' (name, size, modification time)."""
    root = Path(path)
    if root.is_file():
        return _sha256_file(root)
    digest = hashlib.sha256()
    for name, _, _ in stamp:
        digest.update(f"{name}\0{_sha256_file(root / name)}\0".encode("utf-8"))
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    """sha256 of a file or a model directory (hidden files and README* skipped)."""
    if path.is_file():
        st = path.stat()
        return _sha256_stamped(str(path), ((path.name, st.st_size, st.st_mtime_ns),))
    files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("README")
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    stamp = tuple((str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _sha256_stamped(str(path), stamp)


def content_descriptor(cfg: Config) -> dict[str, Any]:
    """Which encoder makes h(c) under cfg (JSON-able): kind, model name or path, sha256 of the model files or
    of the vectors file (None for word2vec, which is trained on the catalogue itself), the library, and every
    setting that shapes h(c). Equal descriptors and equal catalogues give equal h(c)."""
    common = {"version": DESCRIPTOR_VERSION, "encoder": cfg.content_encoder, "standardize": cfg.content_standardize,
              "dims": cfg.content_dims, "neighbours": cfg.content_neighbours}
    if cfg.content_encoder == "word2vec":
        import gensim

        return {**common, "model": "word2vec trained on the catalogue", "sha256": None,
                "library": f"gensim {gensim.__version__}", "text_dim": cfg.text_dim, "text_epochs": cfg.text_epochs,
                "text_window": cfg.text_window, "text_pooling": cfg.text_pooling, "seed": cfg.seed}
    if cfg.content_encoder == "precomputed":
        path = Path(cfg.content_path).expanduser()
        if not path.is_file():
            raise _file_error(path, "no such file", "nothing there", "give content-path the vectors file's path")
        return {**common, "model": cfg.content_path, "sha256": _sha256(path), "library": None}
    from importlib.metadata import version

    return {**common, "model": cfg.content_model, "sha256": _sha256(_resolve_model_dir(cfg.content_model)),
            "library": f"transformers {version('transformers')} (TensorFlow)", "pooling": "mean",
            "normalize": "l2", "max_length": cfg.content_max_length}


def catalogue_sha256(item_ids: Sequence[str], texts: Sequence[str]) -> str:
    """sha256 of the catalogue: item ids and texts, in item order."""
    digest = hashlib.sha256()
    for i, t in zip(np.asarray(item_ids).astype(str), texts):
        digest.update(f"{i}\0{t}\0".encode("utf-8"))
    return digest.hexdigest()


@dataclass
class ItemContent:
    """h(c) of a catalogue, and the means to encode new items the same way.

    h [n_items, width] float32, standardised with mean, std [raw width] (zeros and ones with
    content-standardize=false), then, where the encoder is wider than content-dims, PCA-whitened: centred with
    centre [raw width] and projected by proj [raw width, width]; then, with content-neighbours k > 1, each row
    replaced by its mean with its k - 1 nearest rows of base [n_items, width] (the catalogue before this step;
    `neighbour_mean`) and standardised again with smooth_mean, smooth_std [width]. descriptor: content_descriptor
    of the settings. encode(texts, item_ids) -> [m, width]: new items through the same encoder and the
    catalogue's transform (an id of the catalogue skips its own row among the neighbours, as in h).
    """

    h: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    descriptor: dict[str, Any]
    raw: "RawEncoder" = field(repr=False)
    centre: np.ndarray | None = None
    proj: np.ndarray | None = None
    neighbours: int = 1
    base: np.ndarray | None = field(default=None, repr=False)
    item_ids: np.ndarray | None = field(default=None, repr=False)
    smooth_mean: np.ndarray | None = None
    smooth_std: np.ndarray | None = None

    @property
    def width(self) -> int:
        return int(self.h.shape[1])

    def encode(self, texts: Sequence[str], item_ids: Sequence[str] | None = None) -> np.ndarray:
        z = _standardized(self.raw(texts, item_ids), self.mean, self.std)
        z = z if self.proj is None else ((z - self.centre) @ self.proj).astype(np.float32)
        if self.base is None:
            return z
        own = None
        if item_ids is not None and self.item_ids is not None:
            index = {i: n for n, i in enumerate(self.item_ids)}
            own = np.array([index.get(i, -1) for i in np.asarray(item_ids).astype(str)], np.int64)
        return _standardized(neighbour_mean(z, self.base, self.neighbours, own), self.smooth_mean, self.smooth_std)


#: content-neighbours=0 (the default) averages over this share of the catalogue, within AUTO_NEIGHBOURS
AUTO_NEIGHBOURS_SHARE = 0.01
AUTO_NEIGHBOURS = (20, 100)


def neighbours_for(setting: int, n_items: int) -> int:
    """Items averaged into each h(c): the content-neighbours setting, or for 0 (by the catalogue's size) 1% of the
    `n_items` catalogue, at least 20 and at most 100 (docs/results.md, "Eighth pass": on the 10,000-item seed case
    100 is worth about +0.001 of expected HR@10 over 20; on ml-100k's 1,682 items 100 was no better than 20, and 20
    there is what the rule gives), never more than the catalogue."""
    if setting >= 1:
        return setting
    lo, hi = AUTO_NEIGHBOURS
    return int(min(n_items, max(lo, min(hi, round(AUTO_NEIGHBOURS_SHARE * n_items)))))


#: the largest catalogue whose exact all-pairs neighbour search (content-neighbours > 1) is run: about 3 minutes
MAX_NEIGHBOUR_ITEMS = 100_000


def neighbour_mean(query: np.ndarray, catalogue: np.ndarray, k: int, own: np.ndarray | None = None,
                   block: int = 1024) -> np.ndarray:
    """Mean [m, width] of each query row and its k - 1 nearest catalogue rows by cosine similarity.

    query [m, width]; catalogue [n, width]; own [m]: the catalogue row of each query that is a catalogue item
    (left out of its own neighbours, since the query row is counted already), -1 or None for new items. The
    public catalogue's text neighbours share what the engagement data cannot teach about one rarely seen item
    (feature propagation over a k-nearest-neighbour graph, as in Wu et al. 2019's SGC; docs/encoders.md).
    """
    query = np.asarray(query, np.float32)
    catalogue = np.asarray(catalogue, np.float32)
    own = np.full(len(query), -1, np.int64) if own is None else np.asarray(own, np.int64)
    unit = catalogue / np.maximum(np.linalg.norm(catalogue, axis=1, keepdims=True), 1e-12)
    take = min(k - 1, len(catalogue) - int((own >= 0).any()))
    out = np.empty(query.shape, np.float32)
    for lo in range(0, len(query), block):
        q = query[lo: lo + block]
        sim = (q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)) @ unit.T  # [b, n]
        rows = np.flatnonzero(own[lo: lo + block] >= 0)
        sim[rows, own[lo: lo + block][rows]] = -np.inf
        if take <= 0:
            out[lo: lo + block] = q
            continue
        nearest = np.argpartition(-sim, take - 1, axis=1)[:, :take]  # [b, k - 1]
        out[lo: lo + block] = (q.astype(np.float64) + catalogue[nearest].sum(axis=1, dtype=np.float64)) / (take + 1)
    return out


def whitening(z: np.ndarray, dims: int) -> tuple[np.ndarray, np.ndarray]:
    """PCA whitening of z [n, width] to its top `dims` principal axes: (centre [width], proj [width, dims]) with
    (z - centre) @ proj of unit variance and uncorrelated per output dimension over the n rows. Each axis's sign is
    fixed (its largest-magnitude loading positive), so the same z gives the same proj on any LAPACK."""
    z = np.asarray(z, np.float64)
    centre = z.mean(axis=0)
    _, s, vt = np.linalg.svd(z - centre, full_matrices=False)
    axes = vt[:dims]
    axes *= np.sign(axes[np.arange(len(axes)), np.abs(axes).argmax(axis=1)])[:, None]
    scale = s[:dims] / np.sqrt(len(z))
    return centre, axes.T / np.where(scale > 1e-12, scale, 1.0)


RawEncoder = Callable[[Sequence[str], "Sequence[str] | None"], np.ndarray]


def _raw_encoder(cfg: Config, catalogue: Sequence[str]) -> RawEncoder:
    """raw(texts, item_ids) -> unstandardised h [n, width] under cfg (word2vec: fitted on `catalogue` once)."""
    if cfg.content_encoder == "word2vec":
        fitted: list[ContentEncoder] = []

        def word2vec(texts: Sequence[str], item_ids: Sequence[str] | None) -> np.ndarray:
            if not fitted:
                fitted.append(ContentEncoder(cfg.text_dim, cfg.text_epochs, cfg.text_window, cfg.text_pooling,
                                             cfg.seed).fit(catalogue))
            return fitted[0].transform(texts)
        return word2vec
    if cfg.content_encoder == "precomputed":
        def precomputed(texts: Sequence[str], item_ids: Sequence[str] | None) -> np.ndarray:
            if item_ids is None:
                raise ContentError("content-encoder=precomputed looks items up by id: pass the item ids "
                                   "(content_vectors(cfg, texts, item_ids)).")
            return align_precomputed(cfg.content_path, *read_precomputed(cfg.content_path), item_ids)
        return precomputed

    def sentence(texts: Sequence[str], item_ids: Sequence[str] | None) -> np.ndarray:
        model_dir = _resolve_model_dir(cfg.content_model)
        return _sentence_encoder(str(model_dir), cfg.content_max_length, cfg.content_batch).encode(texts)
    return sentence


def _cache_path(descriptor: dict[str, Any], item_ids: Sequence[str], texts: Sequence[str], stage: str = "h") -> Path:
    """Where h(c) at `stage` ("h": the encoder's raw output; "neighbours": the neighbour means) is cached."""
    from common.data.datasets import cache_dir

    key = hashlib.sha256((json.dumps(descriptor, sort_keys=True) + catalogue_sha256(item_ids, texts)).encode())
    return cache_dir() / "content" / f"{stage}-{descriptor['encoder']}-{key.hexdigest()[:32]}.npy"


def item_content(cfg: Config, texts: Sequence[str], item_ids: Sequence[str] | None = None) -> ItemContent:
    """h(c) of the catalogue (texts and ids in item order) under cfg; Word2Vec and sentence-encoder vectors come
    from the cache when it holds them (precomputed files are read and checked every time)."""
    descriptor = content_descriptor(cfg)
    raw = _raw_encoder(cfg, texts)
    ids = np.arange(len(texts)).astype(str) if item_ids is None else item_ids
    encoder_key = {k: v for k, v in descriptor.items() if k != "neighbours"}  # the encoder's output does not depend on it
    cached = None if cfg.content_encoder == "precomputed" else _cache_path(encoder_key, ids, texts)
    if cached is not None and cached.is_file():
        h = np.load(cached)
    else:
        h = raw(texts, item_ids)
        if cached is not None:
            save_npy_atomic(cached, h)  # public: h(c) of the public catalogue
    width = h.shape[1]
    mean, std = _moments(h) if cfg.content_standardize else (np.zeros(width), np.ones(width))
    z = _standardized(h, mean, std)
    centre = proj = None
    if 0 < cfg.content_dims < min(width, len(z)):
        centre, proj = whitening(z, cfg.content_dims)  # a wide encoder: its top content-dims axes, whitened
        z = ((z - centre) @ proj).astype(np.float32)
    content = ItemContent(h=z, mean=mean, std=std, descriptor=descriptor, raw=raw, centre=centre, proj=proj)
    k = neighbours_for(cfg.content_neighbours, len(z))
    if k <= 1:
        return content
    if len(z) > MAX_NEIGHBOUR_ITEMS:
        raise ContentError(
            f"content-neighbours={cfg.content_neighbours} ({k} items): the exact neighbour search compares all pairs "
            f"of the catalogue's {len(z):,} items, which grows as the square of the catalogue (10,000 items: about 2 s; "
            f"40,000: 30 s on 2 cores); above {MAX_NEIGHBOUR_ITEMS:,} items it is refused. Set "
            f"--set content-neighbours=1, or smooth the vectors with your own nearest-neighbour index and pass them "
            f"with content-encoder=precomputed.")
    cached = _cache_path(descriptor, ids, texts, "neighbours")  # the descriptor fixes z (the file's sha256 included)
    if cached.is_file():
        smooth = np.load(cached)
    else:
        smooth = neighbour_mean(z, z, k, np.arange(len(z)))
        save_npy_atomic(cached, smooth)  # public: computed from the public catalogue alone
    s_mean, s_std = _moments(smooth) if cfg.content_standardize else (np.zeros(z.shape[1]), np.ones(z.shape[1]))
    return replace(content, h=_standardized(smooth, s_mean, s_std), neighbours=k, base=z,
                   item_ids=np.asarray(ids).astype(str), smooth_mean=s_mean, smooth_std=s_std)


def content_vectors(cfg: Config, texts: Sequence[str], item_ids: Sequence[str] | None = None) -> np.ndarray:
    """h(c) [n_items, width] float32 of a catalogue under a run's `common.config.Config` (content-encoder=
    precomputed needs the item ids)."""
    return item_content(cfg, texts, item_ids).h
