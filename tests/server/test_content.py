"""The server's content encoder: text -> h(c)."""

from __future__ import annotations

import numpy as np

from common.data.sources.synthetic import SyntheticConfig, generate
from server.content import ContentEncoder, tokenize


def test_tokenize():
    assert tokenize("Toy Story (1995) Children's Comedy") == ["toy", "story", "1995", "children's", "comedy"]


def test_item_vectors_recover_topics_and_are_deterministic():
    _, items, truth = generate(SyntheticConfig(users=50, items=300, topics=5, seed=1))
    enc = ContentEncoder(dim=16, epochs=10, seed=0)
    h = enc.item_vectors(list(items["text"]))
    assert h.shape == (300, 16) and h.dtype == np.float32
    np.testing.assert_array_equal(h, ContentEncoder(dim=16, epochs=10, seed=0).item_vectors(list(items["text"])))
    # items of the same topic are closer (cosine) than items of different topics
    unit = h / np.linalg.norm(h, axis=1, keepdims=True)
    cos = unit @ unit.T
    same = truth.item_topic[:, None] == truth.item_topic[None, :]
    off_diag = ~np.eye(300, dtype=bool)
    assert cos[same & off_diag].mean() > cos[~same].mean() + 0.2
