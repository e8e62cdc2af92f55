"""The ceiling of generated data (common/evaluation/ceiling.py): the planted probabilities match what the generator draws."""

import calendar
import json

import numpy as np
import pytest

from common.evaluation.ceiling import (PlantedModel, ceiling_scorers, context_codes, counted_popularity,
                                       estimate_preferences)
from common.data.sources.synthetic import SyntheticConfig, generate


def test_context_codes_by_hand():
    # 2023-11-18 was a Saturday; 23:30 UTC is night; 14:00 UTC on Tuesday 2023-11-14 is day, weekday
    sat_night = calendar.timegm((2023, 11, 18, 23, 30, 0))
    tue_day = calendar.timegm((2023, 11, 14, 14, 0, 0))
    sun_early = calendar.timegm((2023, 11, 19, 2, 59, 0))  # 02:59 is still night (hours 21..2)
    mon_three = calendar.timegm((2023, 11, 20, 3, 0, 0))   # 03:00 is not
    codes = context_codes(np.array([sat_night, tue_day, sun_early, mon_three]), np.array([True, False, False, True]))
    assert codes.tolist() == [1 + 2 + 4, 0, 1 + 4, 2]


def test_estimated_preferences_by_hand():
    # 2 topics; context code 1 multiplies topic 0 by 5: a row of topic 0 seen in code 1 counts 1/5
    planted = PlantedModel(mult=np.array([[1.0, 1.0], [5.0, 1.0]]), boost=np.zeros((2, 2)),
                           item_topic=np.array([0, 1, 0]), item_share=np.array([0.5, 1.0, 0.5]))
    pref = estimate_preferences(planted, 2, user=np.array([0, 0, 0, 1]), item=np.array([0, 2, 1, 1]),
                                code=np.array([1, 0, 0, 0]), prior=0.5)
    # user 0: topic 0: 1/5 + 1 + 0.5 = 1.7, topic 1: 1 + 0.5 = 1.5; user 1: 0.5 and 1.5
    np.testing.assert_allclose(pref, [[1.7 / 3.2, 1.5 / 3.2], [0.25, 0.75]])


@pytest.fixture(scope="module")
def generated():
    cfg = SyntheticConfig(users=400, items=4000, topics=9, min_events=20, mean_events=30, seed=3)
    inter, _, truth = generate(cfg)
    user = np.array([int(u[1:]) for u in inter["user_id"]])
    item = np.array([int(i[1:]) for i in inter["item_id"]])
    code = context_codes(inter["timestamp"].to_numpy(), (inter["device"] == "mobile").to_numpy())
    return cfg, truth, user, item, code


def test_counted_popularity_by_hand():
    # topic 0: items 0, 2, 3; topic 1: item 1. Rows: item 0 twice, item 2 once; item 3 never
    planted = PlantedModel(mult=np.ones((1, 2)), boost=np.zeros((1, 2)), item_topic=np.array([0, 1, 0, 0]),
                           item_share=np.array([0.2, 1.0, 0.3, 0.5]))
    got = counted_popularity(planted, item=np.array([0, 2, 0]), prior=0.5)
    # topic 0: 2.5, 1.5, 0.5 of 4.5; topic 1: 0.5 of 0.5
    np.testing.assert_allclose(got.item_share, [2.5 / 4.5, 1.0, 1.5 / 4.5, 0.5 / 4.5])
    assert got.mult is planted.mult and got.boost is planted.boost


def test_planted_topic_probabilities_match_the_generated_draws(generated):
    """Summed over the events of each context code, P(t | u, x) predicts how many events of each topic the
    generator drew there (Poisson error; almost no event is redrawn at this catalogue size)."""
    cfg, truth, user, item, code = generated
    planted = PlantedModel.from_truth(truth, cfg)
    p = planted.topic_probs(np.asarray(truth.user_topic_pref)[user], code)       # [E, T]
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    topic = np.asarray(truth.item_topic)[item]
    for c in range(8):
        at = code == c
        expected = p[at].sum(axis=0)
        seen = np.bincount(topic[at], minlength=expected.size)
        z = (seen - expected) / np.sqrt(np.maximum(expected, 1.0))
        assert np.abs(z).max() < 5.0, (c, seen, expected.round(1))
    # a wrong context mapping (night and mobile swapped) is far off the draws
    swapped = (code & 4) | ((code & 1) << 1) | ((code & 2) >> 1)
    q = planted.topic_probs(np.asarray(truth.user_topic_pref)[user], swapped)
    worst = max(np.abs((np.bincount(topic[code == c], minlength=q.shape[1]) - q[code == c].sum(0))
                       / np.sqrt(np.maximum(q[code == c].sum(0), 1.0))).max() for c in range(8))
    assert worst > 10.0


def test_item_probabilities_follow_popularity_within_a_topic(generated):
    cfg, truth, user, item, code = generated
    planted = PlantedModel.from_truth(truth, cfg)
    probs = planted.item_probs(planted.topic_probs(np.asarray(truth.user_topic_pref)[:3], np.array([0, 3, 7])))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    t = np.asarray(truth.item_topic)
    in_topic = np.flatnonzero(t == 0)
    ratio = probs[:, in_topic] / np.asarray(truth.item_popularity)[in_topic]
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=1e-10)


def test_ceiling_rankings_order_as_their_knowledge(generated):
    """The log-likelihood of held-out events: planted truth > structure estimated from other rows > the same
    structure without the event's context."""
    cfg, truth, user, item, code = generated
    planted = PlantedModel.from_truth(truth, cfg)
    last = np.r_[user[1:] != user[:-1], True]  # each user's last row (rows are sorted by user, time)
    train = ~last
    est = estimate_preferences(planted, cfg.users, user[train], item[train], code[train])
    scorers = ceiling_scorers(planted, np.asarray(truth.user_topic_pref), est, code[last], user[train], code[train])
    users = user[last]
    loglik = {name: float(np.log(f(users)[np.arange(len(users)), item[last]]).mean()) for name, f in scorers.items()}
    assert loglik["oracle"] > loglik["structure"] > loglik["structure-context-free"], loglik


def test_report_glue_maps_users_items_and_contexts_to_the_generator(small_cache, monkeypatch):
    """planted_inputs reads the prepared dataset (dense indices, encoded contexts): its test context codes, training
    rows and items must be the generator's own, found through the ids; ceiling_metrics reports every member."""
    from common.evaluation.ceiling import planted_inputs
    from common.config import Config
    from common.data.datasets import load_cached, resolve_dataset
    from common.federation.users import UserStore
    from simulations.simulate import ceiling_metrics

    monkeypatch.setenv("FEDCTX_CACHE", str(small_cache))
    cfg = Config().replace(synthetic_users=40, synthetic_items=300, seed=5)
    ds = load_cached(str(resolve_dataset(cfg)))
    members = np.arange(ds.n_users)
    store = UserStore.from_prepared(ds, members, use_context=True)
    synthetic = SyntheticConfig(users=40, items=300, seed=5)
    inter, _, truth = generate(synthetic)
    got = planted_inputs(ds, store, synthetic, truth)
    last = inter.groupby("user_id").tail(1)  # rows are sorted by (user, time): the test engagement
    raw = context_codes(last["timestamp"].to_numpy(), (last["device"] == "mobile").to_numpy())
    users = [int(u[1:]) for u in store.user_keys]
    np.testing.assert_array_equal(got["test_code"], raw[users])
    np.testing.assert_array_equal(got["true_pref"], np.asarray(truth.user_topic_pref)[users])
    items = np.array([int(i[1:]) for i in np.asarray(ds.item_ids).astype(str)])
    np.testing.assert_array_equal(got["planted"].item_topic, np.asarray(truth.item_topic)[items])
    assert len(got["train_code"]) == len(store.items)
    metrics = ceiling_metrics(cfg, ds, members)
    assert list(metrics) == ["oracle", "structure", "structure-context-free"]
    assert all(m["hr"].shape == (ds.n_users,) for m in metrics.values())


def _store(histories, val, test):
    """A UserStore of hand-made histories (lists of item indices), validation and test items."""
    from common.federation.users import UserStore

    counts = [len(h) for h in histories]
    z = np.zeros((len(histories), 0), np.float32)
    return UserStore(np.array([f"u{i}" for i in range(len(histories))]), np.concatenate([[0], np.cumsum(counts)]),
                     np.concatenate(histories).astype(np.int64), np.zeros(sum(counts), np.float32),
                     np.zeros((sum(counts), 0), np.float32), np.array(val), z, np.array(test), z)


def test_expected_hits_by_hand():
    from common.evaluation.ceiling import expected_hits

    # one user, 5 items: history {0}, validation item 1; ranked: 2, 3, 4 with planted P 0.1, 0.25, 0.15
    p = np.array([[0.3, 0.2, 0.1, 0.25, 0.15]])
    store = _store([[0]], [1], [3])
    scores = np.array([[9.0, 8.0, 0.0, 2.0, 1.0]])  # the excluded items score highest: they must not count
    got = expected_hits(lambda u: scores[u], lambda u: p[u], store, k=2)
    np.testing.assert_allclose(got, [(0.25 + 0.15) / 0.5])
    worst = expected_hits(lambda u: -scores[u], lambda u: p[u], store, k=2)  # items 2 and 4
    np.testing.assert_allclose(worst, [(0.1 + 0.15) / 0.5])


def test_expected_hits_the_truth_ranks_best_and_matches_drawn_test_items():
    from common.evaluation.ceiling import expected_hits

    rng = np.random.default_rng(3)
    users, items, k = 40, 30, 5
    p = rng.dirichlet(np.full(items, 0.3), size=users)
    store = _store([rng.choice(items, 3, replace=False) for _ in range(users)], [0] * users, [0] * users)
    truth = lambda u: p[u]
    best = expected_hits(truth, truth, store, k)
    for _ in range(5):
        other = rng.normal(size=(users, items))
        assert np.all(best >= expected_hits(lambda u: other[u], truth, store, k) - 1e-12)
    # E[HR] is the mean realized HR over test items drawn from the truth (outside history and validation)
    other = rng.normal(size=(users, items))
    e = expected_hits(lambda u: other[u], truth, store, k)
    hits = np.zeros(users)
    draws = 4000
    for u in range(users):
        q = p[u].copy()
        q[store.history(u)] = 0
        q[0] = 0
        test = rng.choice(items, draws, p=q / q.sum())
        ranked = np.argsort(-np.where(q > 0, other[u], -np.inf))[:k]
        hits[u] = np.isin(test, ranked).mean()
    np.testing.assert_allclose(e, hits, atol=0.04)


def test_report_gives_every_model_its_expected_hits_below_the_oracle(small_cache, monkeypatch):
    """On generated data the report carries each model's expected HR@k (from the planted truth) next to the
    realized one: no ranking's can exceed the oracle's (the oracle puts the k most probable items first for every
    user), the structure's is above the trained models' here, and the expected context gain is the paired
    difference of the two systems' expected hits (so its mean is the difference of their means)."""
    from common.config import Config
    from simulations.simulate import run_baselines

    monkeypatch.setenv("FEDCTX_CACHE", str(small_cache))
    cfg = Config().replace(synthetic_users=40, synthetic_items=300, seed=5, central_epochs=2)
    systems, _ = run_baselines(cfg, say=lambda line: None)
    key = f"expected-hr@{cfg.top_k}"
    models = ("centralized", "context-free", "popularity", "structure", "structure-context-free")
    for name in models:
        assert 0.0 < systems[name][key] <= systems["oracle"][key] + 1e-12, name
        assert 0.0 < systems[name][key + "-se"] < 0.2, name
    assert systems["structure"][key] > systems["centralized"][key]
    for aware, free in (("centralized", "context-free"), ("structure", "structure-context-free")):
        gain = systems[aware]["expected_context_gain"]
        assert gain["mean"] == pytest.approx(systems[aware][key] - systems[free][key], abs=1e-12)
        assert gain["se"] > 0
    assert all(key not in systems[name] for name in ("als", "bpr", "federated") if name in systems)


def test_report_gives_the_federated_model_its_context_gain_against_its_own_twins(small_cache, monkeypatch, tmp_path):
    """A finished run on generated data: the federated row's expected context gain is its expected HR minus that of
    the same last-round model scored at each user's mean training context (recomputed here from the run's files)."""
    from common.config import Config
    from common.data.datasets import load_cached, resolve_dataset
    from common.evaluation.ceiling import expected_hits
    from common.evaluation.evaluate import catalogue_scorer
    from common.model.scoring import DENSE_NAMES
    from server.content import content_vectors
    from simulations.simulate import ceiling_rankings, last_round_model, simulate

    monkeypatch.setenv("FEDCTX_CACHE", str(small_cache))
    cfg = Config().replace(synthetic_users=40, synthetic_items=300, seed=5, num_rounds=2, central_epochs=2,
                           loss="softmax", run_dir=str(tmp_path / "run"))
    run = simulate(cfg, say=lambda line: None)
    fed = json.loads((run / "summary.json").read_text())["systems"]["federated"]
    key = f"expected-hr@{cfg.top_k}"
    ds = load_cached(str(resolve_dataset(cfg)))
    store, ceiling = ceiling_rankings(cfg, ds, np.arange(ds.n_users))
    params, theta, _ = last_round_model(cfg, run, store)
    mean_ctx = np.stack([store.ctx[store.offsets[u]:store.offsets[u + 1]].mean(axis=0) for u in range(store.n_users)])
    twin = catalogue_scorer({k: params[k] for k in DENSE_NAMES}, theta, mean_ctx.astype(np.float32),
                            content_vectors(cfg, ds.item_texts, ds.item_ids), params["items/embedding"],
                            params["items/bias"])
    free = expected_hits(twin, ceiling["oracle"], store, cfg.top_k).mean()
    assert fed["expected_context_gain"]["mean"] == pytest.approx(fed[key] - free, abs=1e-9)
    assert fed["expected_context_gain"]["se"] > 0 and fed["expected_context_gain_mixture"]["se"] > 0
