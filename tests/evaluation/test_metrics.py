"""Ranking metrics against hand-computed values."""

from __future__ import annotations

import numpy as np

from common.evaluation.metrics import hit_and_ndcg, rank_of_target, sample_eval_negatives


def test_rank_excludes_history_and_counts_ties_against_target():
    scores = np.array([[0.9, 0.5, 0.7, 0.5, 0.1]])
    # target item 1 (0.5): items 0 (0.9), 2 (0.7) score higher, item 3 ties -> rank 3
    assert rank_of_target(scores, np.array([1]), [np.array([], int)]).tolist() == [3]
    # excluding item 0 and 2 (history) leaves only the tie -> rank 1
    assert rank_of_target(scores, np.array([1]), [np.array([0, 2])]).tolist() == [1]
    # the target is never excluded, even if listed in the history
    assert rank_of_target(scores, np.array([0]), [np.array([0])]).tolist() == [0]


def test_nan_scores_never_rank_well():
    scores = np.array([[np.nan, np.nan, np.nan]])
    assert rank_of_target(scores, np.array([0]), [np.array([], int)]).tolist() == [2]


def test_hit_and_ndcg_by_hand():
    hit, ndcg = hit_and_ndcg(np.array([0, 1, 9, 10]), k=10)
    assert hit.tolist() == [1, 1, 1, 0]
    np.testing.assert_allclose(ndcg, [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0])


def test_sampled_negatives_avoid_seen_items():
    rng = np.random.default_rng(0)
    negs = sample_eval_negatives(50, np.array([1, 2, 3]), 20, rng)
    assert len(negs) == len(set(negs.tolist())) == 20
    assert not set(negs.tolist()) & {1, 2, 3}
    # fewer candidates than asked: all of them
    assert sorted(sample_eval_negatives(5, np.array([0, 1]), 10, rng).tolist()) == [2, 3, 4]


def test_sampled_negatives_are_a_uniform_draw_from_the_unseen_items_in_order():
    """The same draw as rng.choice over np.setdiff1d(all items, seen): published sampled metrics stay comparable."""
    seen = np.array([7, 3, 3, 40, 99])
    got = sample_eval_negatives(100, seen, 10, np.random.default_rng(5))
    expected = np.random.default_rng(5).choice(np.setdiff1d(np.arange(100), seen), size=10, replace=False)
    np.testing.assert_array_equal(got, expected)
