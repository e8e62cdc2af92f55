"""The ceiling of a generated dataset: rankings from the generator's planted truth.

The synthetic generator (`common.data.sources.synthetic`) draws an engagement's topic t with weight
``w(u, x, t) = pref[u, t] * mult[x, t] + boost[x, t]`` (x: the context code, bit 0 night, bit 1 mobile,
bit 2 weekend) and then an item of topic t with probability ``pop[i] / sum_{j in t} pop[j]``. So

    P(i | u, x) = w(u, x, t_i) / sum_t w(u, x, t) * pop[i] / popsum[t_i]

Three rankings of every catalogue item (the same exclusions as every other system):

* ``oracle``: P(i | u, x_test) with the planted preferences: no ranking of this data does better on average.
* ``structure``: the same, with pref[u] estimated from the user's own training rows only
  (:func:`estimate_preferences`): what a model that knew the planted structure reaches from the same rows.
* ``structure-context-free``: ``structure`` averaged over the user's own training contexts instead of the
  test context, so ``structure - structure-context-free`` is the context gain the data offers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.data.sources.synthetic import NIGHT_HOURS, SyntheticConfig, SyntheticTruth

__all__ = ["CEILING_SYSTEMS", "PlantedModel", "context_codes", "estimate_preferences", "counted_popularity",
           "ceiling_scorers", "expected_hits"]

#: Systems a report on generated data adds (in this order), next to the trained ones.
CEILING_SYSTEMS = ("oracle", "structure", "structure-context-free")

_SECONDS_PER_DAY = 86_400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)


@dataclass(frozen=True)
class PlantedModel:
    """The generator's weights in array form.

    mult, boost [8, T] per context code; item_topic [I]; item_share [I] = pop[i] / popsum[t_i].
    """

    mult: np.ndarray
    boost: np.ndarray
    item_topic: np.ndarray
    item_share: np.ndarray

    @classmethod
    def from_truth(cls, truth: SyntheticTruth, cfg: SyntheticConfig) -> "PlantedModel":
        n_topics = truth.user_topic_pref.shape[1]
        mult, boost = np.ones((8, n_topics)), np.zeros((8, n_topics))
        for bit, favoured in enumerate((truth.night_topics, truth.mobile_topics, truth.weekend_topics)):
            codes = [c for c in range(8) if c >> bit & 1]
            mult[np.ix_(codes, favoured)] *= cfg.context_strength
            boost[np.ix_(codes, favoured)] += cfg.context_mix
        popsum = np.bincount(truth.item_topic, weights=truth.item_popularity, minlength=n_topics)
        share = truth.item_popularity / popsum[truth.item_topic]
        return cls(mult, boost, np.asarray(truth.item_topic), share)

    def topic_probs(self, pref: np.ndarray, code: np.ndarray) -> np.ndarray:
        """P(t | u, x) [n, T] for preferences pref [n, T] and context codes code [n]."""
        w = pref * self.mult[code] + self.boost[code]
        return w / w.sum(axis=1, keepdims=True)

    def item_probs(self, topic_p: np.ndarray) -> np.ndarray:
        """P(i | u, x) [n, I] from P(t | u, x) [n, T]."""
        return topic_p[:, self.item_topic] * self.item_share[None, :]


def context_codes(time: np.ndarray, mobile: np.ndarray) -> np.ndarray:
    """The generator's context code [n] (bit 0 night, 1 mobile, 2 weekend) of events at Unix seconds
    time [n] (UTC); mobile [n] bool: the event's device is "mobile"."""
    time = np.asarray(time, np.int64)
    hour = (time % _SECONDS_PER_DAY) // 3600
    weekday = (time // _SECONDS_PER_DAY + _EPOCH_WEEKDAY) % 7
    night = np.isin(hour, NIGHT_HOURS)
    return night.astype(np.int64) + 2 * np.asarray(mobile, bool) + 4 * (weekday >= 5)


def estimate_preferences(planted: PlantedModel, n_users: int, user: np.ndarray, item: np.ndarray,
                         code: np.ndarray, prior: float = 0.5) -> np.ndarray:
    """pref_hat [n_users, T] from training rows (user [n], item [n], context code [n]).

    Each row counts 1 / mult[x, t] for its item's topic t (undoing the context's multiplier), plus `prior` per
    topic, normalised per user: the simple estimator that the ceiling's `structure` row uses.
    """
    n_topics = planted.mult.shape[1]
    topic = planted.item_topic[item]
    counts = np.zeros((n_users, n_topics))
    np.add.at(counts, (user, topic), 1.0 / planted.mult[code, topic])
    counts += prior
    return counts / counts.sum(axis=1, keepdims=True)


def counted_popularity(planted: PlantedModel, item: np.ndarray, prior: float = 0.1) -> PlantedModel:
    """`planted` with each item's share of its topic estimated from the training rows (item [n]) instead of the
    planted popularity: (count + prior) / sum over the topic's items. What the data offers of popularity: an item
    no training row engaged with (about half of the seed case's catalogue) gets the prior's share."""
    counts = np.bincount(item, minlength=len(planted.item_topic)) + prior
    topic_sum = np.bincount(planted.item_topic, weights=counts)
    return PlantedModel(planted.mult, planted.boost, planted.item_topic, counts / topic_sum[planted.item_topic])


def ceiling_scorers(planted: PlantedModel, true_pref: np.ndarray, est_pref: np.ndarray, test_code: np.ndarray,
                    train_user: np.ndarray, train_code: np.ndarray) -> dict:
    """{system: score(users [n]) -> [n, I]} for CEILING_SYSTEMS.

    true_pref, est_pref [U, T]; test_code [U] the test engagement's context code; train_user, train_code [n]
    the training rows' user and context code (for the context-free average over the user's own contexts).
    """
    n_users = true_pref.shape[0]
    code_share = np.zeros((n_users, 8))  # each user's share of training rows per context code
    np.add.at(code_share, (train_user, train_code), 1.0)
    code_share /= np.maximum(code_share.sum(axis=1, keepdims=True), 1.0)

    def oracle(users: np.ndarray) -> np.ndarray:
        return planted.item_probs(planted.topic_probs(true_pref[users], test_code[users]))

    def structure(users: np.ndarray) -> np.ndarray:
        return planted.item_probs(planted.topic_probs(est_pref[users], test_code[users]))

    def context_free(users: np.ndarray) -> np.ndarray:
        topic_p = np.zeros((len(users), planted.mult.shape[1]))
        for c in range(8):
            topic_p += code_share[users, c, None] * planted.topic_probs(est_pref[users], np.full(len(users), c))
        return planted.item_probs(topic_p)

    return dict(zip(CEILING_SYSTEMS, (oracle, structure, context_free)))


def expected_hits(score, truth, store, k: int, chunk: int = 512) -> np.ndarray:
    """Expected HR@k [U] of a ranking on the test split: for each user, the planted probability that the test
    engagement is one of the k items the ranking puts first, P(top-k | u, x_test) / P(any ranked item | u, x_test).

    score, truth: f(users [n]) -> [n, n_items] (the ranking's scores; the planted P(i | u, x_test), e.g.
    ceiling_scorers(...)["oracle"]). The ranked items are those evaluate_scores ranks on "test": every item but the
    user's history and validation item. The mean over users estimates E[HR@k] without the noise of drawing one
    test item per user (its standard error is that of the users' spread alone).
    """
    out = np.zeros(store.n_users)
    for start in range(0, store.n_users, chunk):
        users = np.arange(start, min(start + chunk, store.n_users))
        s = np.array(score(users), np.float64)
        p = np.array(truth(users), np.float64)
        rows = np.repeat(np.arange(len(users)), store.offsets[users + 1] - store.offsets[users])
        rows = np.concatenate([rows, np.arange(len(users))])  # the history, then the validation item
        cols = np.concatenate([store.items[store.offsets[u]:store.offsets[u + 1]] for u in users] + [store.val_item[users]])
        s[rows, cols], p[rows, cols] = -np.inf, 0.0
        s[np.isnan(s)] = -np.inf
        top = np.argpartition(-s, k, axis=1)[:, :k]
        out[users] = np.take_along_axis(p, top, 1).sum(1) / p.sum(1)
    return out


def planted_inputs(ds, store, cfg_synthetic: SyntheticConfig, truth: SyntheticTruth) -> dict:
    """ceiling_scorers' arguments for the users of `store` (a UserStore of `ds`, built with use_context=True)
    of a dataset made by the generator from `cfg_synthetic`: user and item indices are mapped to the
    generator's through their ids ("u000123" is generator user 123)."""
    planted = PlantedModel.from_truth(truth, cfg_synthetic)
    item_map = np.array([int(i[1:]) for i in np.asarray(ds.item_ids).astype(str)])
    planted = PlantedModel(planted.mult, planted.boost, planted.item_topic[item_map], planted.item_share[item_map])
    user_map = np.array([int(u[1:]) for u in store.user_keys])
    mobile = list(ds.context_names).index("device=mobile")
    n = np.diff(store.offsets)
    train_user = np.repeat(np.arange(store.n_users), n)
    train_time = _store_times(ds, store)
    train_code = context_codes(train_time, store.ctx[:, mobile] > 0.5)
    test_time = ds.test.time[np.searchsorted(ds.test.user, _dense_users(ds, store))]
    test_code = context_codes(test_time, store.test_ctx[:, mobile] > 0.5)
    est = estimate_preferences(planted, store.n_users, train_user, store.items, train_code)
    return dict(planted=planted, true_pref=np.asarray(truth.user_topic_pref)[user_map], est_pref=est,
                test_code=test_code, train_user=train_user, train_code=train_code)


def _dense_users(ds, store) -> np.ndarray:
    """The dataset's dense user index [U] of each user of the store."""
    index = {u: i for i, u in enumerate(np.asarray(ds.user_ids).astype(str))}
    return np.array([index[u] for u in store.user_keys], np.int64)


def _store_times(ds, store) -> np.ndarray:
    """Unix seconds [n] of the store's training rows (in the store's order: by user, then time)."""
    users = _dense_users(ds, store)
    order = np.argsort(ds.train.user, kind="stable")
    user_sorted = ds.train.user[order]
    lo, hi = np.searchsorted(user_sorted, users, "left"), np.searchsorted(user_sorted, users, "right")
    take = np.concatenate([order[a:b] for a, b in zip(lo, hi)])
    return ds.train.time[take]
