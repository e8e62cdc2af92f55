"""Evaluation at scale: the blocked, vectorised ranking equals a plain per-user count; sub-sampled evaluation's
standard error covers the all-users mean; the prepared dataset's cache follows the files' content."""

from __future__ import annotations

import math

import numpy as np
import pytest

from common.config import Config
from common.federation.users import UserStore
from common.evaluation.evaluate import catalogue_scorer, context_averaged_scorer, eval_sample, evaluate_scores
from common.privacy.sampling import user_rng
from common.evaluation.metrics import sample_eval_negatives, standard_errors


def _store(rng: np.random.Generator, n_users: int, n_items: int) -> UserStore:
    """Users with awkward histories: repeated items, the targets themselves, the validation item in the history."""
    sizes = rng.integers(1, 9, n_users)
    items = [rng.integers(0, n_items, s) for s in sizes]
    val = rng.integers(0, n_items, n_users)
    test = rng.integers(0, n_items, n_users)
    items[0] = np.array([test[0], test[0], 1])  # the test target is in the history, twice
    items[1] = np.array([val[1], 2, 2])  # the validation target too, and a repeat
    test[2] = val[2]  # test target == validation item (excluded history for "test", but never the target itself)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    offsets[1:] = np.cumsum([len(h) for h in items])
    flat = np.concatenate(items).astype(np.int64)
    return UserStore(user_keys=np.array([f"u{u}" for u in range(n_users)]), offsets=offsets, items=flat,
                     age_days=np.zeros(len(flat), np.float32), ctx=np.zeros((len(flat), 0), np.float32),
                     val_item=val.astype(np.int64), val_ctx=np.zeros((n_users, 0), np.float32),
                     test_item=test.astype(np.int64), test_ctx=np.zeros((n_users, 0), np.float32))


def _reference(scores: np.ndarray, store: UserStore, cfg: Config, split: str, n_items: int) -> dict[str, list]:
    """The protocol written out user by user: rank = items other than the target, not in the history (nor the
    validation item for "test"), scoring >= the target (NaN counts as -inf)."""
    out = {k: [] for k in ("hr", "ndcg", "hr-sampled", "ndcg-sampled")}
    for u in range(store.n_users):
        s = [(-math.inf if math.isnan(x) else float(x)) for x in scores[u]]
        target = int((store.val_item if split == "val" else store.test_item)[u])
        excluded = set(store.history(u).tolist()) | ({int(store.val_item[u])} if split == "test" else set())
        rank = sum(1 for i in range(n_items) if i != target and i not in excluded and s[i] >= s[target])
        seen = np.concatenate([store.history(u), [store.val_item[u], store.test_item[u]]])
        negs = sample_eval_negatives(n_items, seen, cfg.eval_negatives, user_rng(cfg.seed, 0, store.user_keys[u],
                                                                                 f"eval-{split}"))
        s_rank = sum(1 for i in negs.tolist() if s[i] >= s[target])
        for name, r in (("", rank), ("-sampled", s_rank)):
            out["hr" + name].append(1.0 if r < cfg.top_k else 0.0)
            out["ndcg" + name].append(1.0 / math.log2(r + 2) if r < cfg.top_k else 0.0)
    return out


@pytest.mark.parametrize("split", ["val", "test"])
@pytest.mark.parametrize("chunk", [1, 7, 512])
def test_blocked_evaluation_equals_a_per_user_count(split, chunk):
    rng = np.random.default_rng(11)
    n_users, n_items = 40, 30
    store = _store(rng, n_users, n_items)
    scores = rng.integers(0, 6, (n_users, n_items)).astype(np.float32)  # few values: many ties
    scores[3, :] = np.nan  # a broken user: ranks last
    scores[4, ::3] = np.nan
    cfg = Config(top_k=5, eval_negatives=8, seed=4)
    got = evaluate_scores(lambda u: scores[u], store, n_items, cfg, split, chunk=chunk)
    want = _reference(scores, store, cfg, split, n_items)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert 0 < np.mean(got["hr"]) < 1 and 0 < np.mean(got["hr-sampled"]) < 1  # the fixture exercises both outcomes
    some = rng.permutation(n_users)[:13]  # a subset in any order: its rows of the whole evaluation
    part = evaluate_scores(lambda u: scores[u], store, n_items, cfg, split, chunk=chunk, users=some)
    for key in want:
        np.testing.assert_array_equal(part[key], np.asarray(want[key])[some])


def test_catalogue_scorer_equals_score_items_bit_for_bit():
    from common.model.formula import ModelShape, init_shared, score_items

    rng = np.random.default_rng(2)
    shape = ModelShape(n_items=300, text_dim=8, dim=4, context_dim=3, item_embedding=True)
    params = {k: v + rng.normal(0, 0.1, v.shape).astype(np.float32) for k, v in init_shared(shape, 0).items()}
    dense = {k: params[k] for k in params if not k.startswith("items/")}
    item_h = rng.normal(size=(300, 8)).astype(np.float32)
    theta, ctx = rng.normal(size=(50, 4)).astype(np.float32), rng.random((50, 3)).astype(np.float32)
    score = catalogue_scorer(dense, theta, ctx, item_h, params["items/embedding"], params["items/bias"])
    users = np.array([5, 0, 49, 17])
    np.testing.assert_array_equal(score(users), score_items(dense, theta[users], ctx[users], item_h,
                                                            params["items/embedding"], params["items/bias"]))


def test_context_averaged_scorers_mix_or_average_over_the_users_training_contexts():
    """The context-free twin: log of the catalogue softmax averaged over the user's own training contexts, written
    out here as the model's formula ((theta_u + W_int^T x) . phi(c) + b(c), phi = W_f^T h + b_f + E) in float64."""
    from common.model.formula import ModelShape, init_shared

    rng = np.random.default_rng(3)
    n_items, dim, cw = 40, 4, 3
    shape = ModelShape(n_items=n_items, text_dim=5, dim=dim, context_dim=cw, item_embedding=True)
    params = {k: v + rng.normal(0, 0.5, v.shape).astype(np.float32) for k, v in init_shared(shape, 0).items()}
    dense = {k: params[k] for k in params if not k.startswith("items/")}
    item_h = rng.normal(size=(n_items, 5)).astype(np.float32)
    sizes = np.array([3, 1, 0, 2])  # user 2 has no training rows
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    ctx = rng.random((sizes.sum(), cw)).astype(np.float32)
    store = UserStore(user_keys=np.array(["a", "b", "c", "d"]), offsets=offsets, items=np.zeros(sizes.sum(), np.int64),
                      age_days=np.zeros(sizes.sum(), np.float32), ctx=ctx, val_item=np.zeros(4, np.int64),
                      val_ctx=np.zeros((4, cw), np.float32), test_item=np.zeros(4, np.int64),
                      test_ctx=rng.random((4, cw)).astype(np.float32))
    theta = rng.normal(size=(4, dim)).astype(np.float32)
    p64 = {k: np.asarray(v, np.float64) for k, v in params.items()}
    phi = item_h @ p64["tower/kernel"] + p64["tower/bias"] + p64["items/embedding"]
    b = item_h @ p64["text-bias/kernel"] + p64["items/bias"]

    def softmax(x):
        s = (theta[u] + x @ p64["context/interaction"]) @ phi.T + b + x @ p64["context/shift"]
        e = np.exp(s - s.max())
        return e / e.sum()

    got = context_averaged_scorer(dense, theta, store, item_h, params["items/embedding"], params["items/bias"],
                                  "probabilities")(np.arange(4))
    for u in range(4):
        rows = ctx[offsets[u]:offsets[u + 1]] if sizes[u] else np.zeros((1, cw))
        want = np.log(np.mean([softmax(x) for x in rows], axis=0))
        np.testing.assert_allclose(got[u], want, rtol=0, atol=1e-5)
    # a user with one training context, scored at that context: the twin ranks as the model itself does
    at_own = np.repeat(ctx[offsets[1]][None], 4, axis=0)
    aware = catalogue_scorer(dense, theta, at_own, item_h, params["items/embedding"], params["items/bias"])
    assert np.array_equal(np.argsort(-aware(np.array([1]))[0]), np.argsort(-got[1]))
    # "logits": the mean of the scores over the user's training contexts
    at_mean = context_averaged_scorer(dense, theta, store, item_h, params["items/embedding"], params["items/bias"],
                                      "logits")(np.arange(4))
    for u in range(4):
        rows = ctx[offsets[u]:offsets[u + 1]] if sizes[u] else np.zeros((1, cw))
        want = np.mean([(theta[u] + x @ p64["context/interaction"]) @ phi.T + b + x @ p64["context/shift"]
                        + p64["global-bias"][0]
                        for x in rows], axis=0)
        np.testing.assert_allclose(at_mean[u], want, rtol=0, atol=1e-4)


def test_standard_errors_are_those_of_the_sampled_values():
    values = np.random.default_rng(0).random(57)
    got = standard_errors({"m": values.mean(), "m-sq": np.square(values).mean(), "other": 0.5}, len(values))
    assert set(got) == {"m", "m-se", "other"}
    assert got["m-se"] == pytest.approx(values.std(ddof=1) / np.sqrt(len(values)), rel=1e-9)


def test_sub_sampled_evaluation_covers_the_all_users_mean():
    """Over 300 seeds, mean +- 1.96 SE of a sub-sample of ~150 of 3,000 users holds the all-users mean in about
    95% of the samples; each sample's size is about eval-users."""
    rng = np.random.default_rng(1)
    ndcg = np.where(rng.random(3000) < 0.2, 1.0 / np.log2(rng.integers(0, 10, 3000) + 2.0), 0.0)
    keys = np.array([f"user{u}" for u in range(3000)])
    covered, sizes = 0, []
    for seed in range(300):
        mask = eval_sample(keys, Config(seed=seed, eval_users=150, population=3000))
        x = ndcg[mask]
        sizes.append(mask.sum())
        m = standard_errors({"v": x.mean(), "v-sq": np.square(x).mean()}, len(x))
        covered += abs(m["v"] - ndcg.mean()) <= 1.96 * m["v-se"]
    assert 0.90 <= covered / 300 <= 0.99
    assert abs(np.mean(sizes) - 150) < 5 and min(sizes) > 100
    assert eval_sample(keys, Config(eval_users=0)).all()


def test_sub_sampled_node_evaluation_reports_squares(small_synthetic):
    """A node's evaluation with eval-users: the sampled users' means and their squares; HR's square is itself."""
    from client.node import Node
    from common.data.loader import load_dataset
    from common.model.formula import ModelShape, init_shared

    ds = load_dataset(small_synthetic)
    store = UserStore.from_prepared(ds, np.arange(ds.n_users))
    cfg = Config(data=str(small_synthetic), dim=4, eval_users=12, population=ds.n_users)
    item_h = np.random.default_rng(0).normal(size=(ds.n_items, 8)).astype(np.float32)
    params = init_shared(ModelShape(ds.n_items, 8, 4, ds.context_dim, True), 0)
    node = Node(cfg=cfg, store=store, theta=np.zeros((store.n_users, 4), np.float32),
                ready=np.zeros(store.n_users, bool), taken=np.zeros(store.n_users, np.int64), item_h=item_h,
                schema=None)
    from common.federation.params import to_record
    from flwr.app import ConfigRecord, RecordDict

    out = node.evaluate(RecordDict({"arrays": to_record(params), "config": ConfigRecord({"server-round": 1})}))
    assert out["num-users"] == eval_sample(store.user_keys, cfg).sum() < ds.n_users
    assert out["test-hr@10-sq"] == out["test-hr@10"] and out["test-ndcg@10-sq"] <= out["test-ndcg@10"]


def test_prepared_cache_equals_a_fresh_load_and_follows_the_files(small_synthetic, tmp_path, monkeypatch):
    import shutil

    import common.data.cache as pc
    from common.data.loader import load_dataset
    from common.data.schema import build_schema

    data = tmp_path / "data"
    shutil.copytree(small_synthetic, data)
    loads = []
    real = pc.load_dataset
    monkeypatch.setattr(pc, "load_dataset", lambda *a, **k: loads.append(1) or real(*a, **k))
    fresh = load_dataset(data)
    schema = build_schema(fresh.item_ids, fresh.context_encoder, {"encoder": "test"},
                          np.zeros((fresh.n_items, 2), np.float32))
    for sch in (None, schema):
        want = load_dataset(data, schema=sch)
        for attempt in range(2):  # a miss (loads and writes), then a hit (maps what was written)
            got = pc.load_prepared(data, tmp_path / "cache", sch)
            for split in ("train", "val", "test"):
                for field in ("user", "item", "time", "context"):
                    np.testing.assert_array_equal(getattr(getattr(got, split), field),
                                                  getattr(getattr(want, split), field))
            np.testing.assert_array_equal(got.user_ids, want.user_ids)
            assert (got.item_ids.tolist(), got.item_texts, got.context_names, got.cleaning) == (
                want.item_ids.tolist(), want.item_texts, want.context_names, want.cleaning)
            assert got.context_encoder.to_dict() == want.context_encoder.to_dict()
    assert len(loads) == 2  # one load per (data, schema), none on a hit
    # change the data: one engagement fewer (same file name); the cache must not answer with the old arrays
    import pandas as pd

    inter = next(p for p in data.iterdir() if p.name.startswith("interactions"))
    frame = pd.read_parquet(inter)
    frame.iloc[1:].to_parquet(inter, index=False)
    got = pc.load_prepared(data, tmp_path / "cache")
    assert len(loads) == 3
    assert len(got.train) + len(got.val) + len(got.test) == len(frame) - 1
