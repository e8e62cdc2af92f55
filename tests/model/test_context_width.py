"""The context-width benchmark's data: the seed case plus wide categorical context columns."""

import numpy as np

from common.config import Config
from common.data.loader import load_dataset


def test_wide_dataset_adds_one_hot_features_and_keeps_the_engagements(small_cache, monkeypatch):
    from common.data.datasets import resolve_dataset
    from simulations.studies.context_width import wide_dataset

    monkeypatch.setenv("FEDCTX_CACHE", str(small_cache))
    cfg = Config().replace(synthetic_users=40, synthetic_items=300)
    narrow = load_dataset(resolve_dataset(cfg))
    wide = load_dataset(wide_dataset(cfg, columns=3, values=6))
    extra = [n for n in wide.context_names if n.startswith("extra")]
    # 3 columns x 6 values, each one-hot (a value no training row has would be missing, hence <=)
    assert 3 * 5 <= len(extra) <= 3 * 6
    assert wide.context_dim == narrow.context_dim + len(extra)
    assert [n for n in wide.context_names if not n.startswith("extra")] == list(narrow.context_names)
    np.testing.assert_array_equal(wide.train.item, narrow.train.item)
    np.testing.assert_array_equal(wide.test.item, narrow.test.item)
    onehot = wide.train.context[:, [wide.context_names.index(n) for n in extra]]
    np.testing.assert_allclose(onehot.sum(axis=1), 3.0)  # one value per column per engagement
