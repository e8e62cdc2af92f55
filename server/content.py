"""The global content encoder: Word2Vec over the public item catalogue, pooled into h(c).

The server trains it (the catalogue is public) and ships the item vectors h(c) [n_items, text_dim]
to the clients, which never see anything of each other.
"""

from __future__ import annotations

import re
import zlib
from typing import Sequence

import numpy as np
from gensim.models import Word2Vec

__all__ = ["tokenize", "ContentEncoder", "content_vectors", "content_descriptor"]

_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


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
        mean, std = h.mean(axis=0), h.std(axis=0)
        return ((h - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)


def content_vectors(cfg, texts: Sequence[str]) -> np.ndarray:
    """h(c) [n_items, cfg.text_dim] of a catalogue under a run's `common.config.Config`."""
    return ContentEncoder(cfg.text_dim, cfg.text_epochs, cfg.text_window, cfg.text_pooling,
                          cfg.seed).item_vectors(texts)


def content_descriptor(cfg) -> dict:
    """JSON-able description of the encoder that makes h(c) under `cfg` (part of the public schema)."""
    return {"encoder": "word2vec", "text-dim": cfg.text_dim, "epochs": cfg.text_epochs, "window": cfg.text_window,
            "pooling": cfg.text_pooling, "seed": cfg.seed}
