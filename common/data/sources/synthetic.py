"""Embedded default dataset: a seeded synthetic engagement log with planted structure.

The generator plants structure a model can find, and returns it as
:class:`SyntheticTruth` so tests and reports can check that it was found:

* **Topics and text.** Each topic has its own vocabulary of made-up, pronounceable
  words (``WORDS_PER_TOPIC``, unique across topics) and all topics share
  ``FILLER_WORDS`` filler words. An item's text has 8-16 words: ~70% from its
  primary topic, ~15% from an optional secondary topic (half of the items have
  one; otherwise those slots are filler) and the rest filler.
* **Popularity.** Items carry a lognormal popularity weight; within a topic, items
  are drawn proportionally to it, so a few items are much more popular.
* **Users.** Each user prefers 2-4 topics (Dirichlet(1) weights over a random
  subset, mixed with ``PREF_SMOOTHING`` of uniform mass), has a device mix over
  ``DEVICES`` and a night affinity: the probability that an engagement's hour is
  drawn from the night profile (peak 23:00 UTC) rather than the day profile
  (peak 14:00 UTC).
* **Context.** Three disjoint sets of topics are favoured at night (hour 21..2
  UTC), on ``"mobile"`` and at weekends (Saturday/Sunday UTC): in that context the
  user's weight of each such topic is multiplied by ``context_strength``.
* **Engagements.** Per user ``min_events`` plus a negative binomial (r=2) draw,
  so the mean is ``mean_events``. Each engagement draws a timestamp, a device, a
  topic from the context-shifted preference and an item within the topic by
  popularity. Repeated (user, item) pairs are redrawn, so a user never engages
  with an item twice and keeps their drawn number of engagements.

Everything is vectorised over users and events (loops run over topics, word
positions or redraw rounds only) and deterministic given ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from common.io import write_dataset

__all__ = [
    "DEVICES",
    "FILLER_WORDS",
    "NIGHT_HOURS",
    "PREF_SMOOTHING",
    "WORDS_PER_TOPIC",
    "SyntheticConfig",
    "SyntheticTruth",
    "generate",
    "write_synthetic",
]

#: Device names, in the column order of :attr:`SyntheticTruth.user_device_mix`.
DEVICES: tuple[str, ...] = ("mobile", "desktop", "tablet")
#: UTC hours that count as night.
NIGHT_HOURS: tuple[int, ...] = (21, 22, 23, 0, 1, 2)
#: Words in each topic's own vocabulary.
WORDS_PER_TOPIC: int = 40
#: Filler words shared by all topics.
FILLER_WORDS: int = 100
#: Share of every user's preference spread uniformly over all topics.
PREF_SMOOTHING: float = 0.05

_SECONDS_PER_DAY = 86_400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)
_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "ch", "dr", "gr", "kr", "pl", "sh", "st", "tr", "th")
_NUCLEI = ("a", "e", "i", "o", "u", "ai", "ea", "ou", "io")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "k")
_DEVICE_ALPHA = (2.0, 1.5, 0.7)  # Dirichlet concentration of a user's device mix
_NIGHT_AFFINITY_BETA = (1.5, 4.0)  # Beta(a, b) of a user's night affinity
_DAY_PEAK, _NIGHT_PEAK = 14.0, 23.0  # hour-profile peaks (UTC)
_DAY_KAPPA, _NIGHT_KAPPA = 1.5, 2.5  # von Mises concentration of the hour profiles
_POPULARITY_SIGMA = 1.2  # lognormal sigma of item popularity
_EXTRA_EVENTS_R = 2.0  # negative binomial shape of engagements above min_events
_SECONDARY_SHARE = 0.5  # share of items with a secondary topic
_PRIMARY_WORDS, _SECONDARY_WORDS = 0.70, 0.15  # share of an item's words
_TEXT_LEN = (8, 16)  # inclusive range of words per item text
_REDRAW_ROUNDS = 8  # rounds of each redraw stage (see _deduplicate)
_MAX_UNIFORM_ROUNDS = 100_000


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of the synthetic dataset.

    ``start`` is Unix seconds (UTC) within the first day; days start at UTC
    midnight, so timestamps fall in ``[floor_day(start), floor_day(start) + days
    * 86400)``.
    """

    users: int = 1000
    items: int = 10000
    topics: int = 20
    min_events: int = 10
    mean_events: float = 20.0
    context_strength: float = 5.0
    context_mix: float = 0.3  # in a favouring context each favoured topic also gains this weight for every user
    seed: int = 0
    days: int = 120
    start: int = 1_700_000_000

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"users must be >= 1, got {self.users}")
        if self.topics < 1:
            raise ValueError(f"topics must be >= 1, got {self.topics}")
        if self.items < self.topics:
            raise ValueError(f"items ({self.items}) must be >= topics ({self.topics})")
        if not 1 <= self.min_events <= self.items:
            raise ValueError(
                f"min_events must be in [1, items={self.items}], got {self.min_events}"
            )
        if not self.mean_events >= self.min_events:
            raise ValueError(
                f"mean_events ({self.mean_events}) must be >= min_events ({self.min_events})"
            )
        if not self.context_mix >= 0:
            raise ValueError(f"context_mix must be >= 0, got {self.context_mix}")
        if not self.context_strength > 0:
            raise ValueError(f"context_strength must be > 0, got {self.context_strength}")
        if self.days < 1:
            raise ValueError(f"days must be >= 1, got {self.days}")


@dataclass(frozen=True, eq=False)
class SyntheticTruth:
    """The planted structure (all arrays are read-only).

    Shapes: ``U`` users, ``I`` items, ``T`` topics, ``k`` favoured topics per
    context. Row ``u`` / entry ``i`` refers to user ``u`` / item ``i`` of the
    frames, i.e. user id ``"u{u:06d}"``, item id ``"i{i:05d}"`` (wider if needed).
    """

    user_topic_pref: np.ndarray  # float [U, T], rows sum to 1 (context-free weights)
    item_topic: np.ndarray  # int [I], primary topic of each item
    night_topics: np.ndarray  # int [k], favoured at night (hour 21..2 UTC)
    mobile_topics: np.ndarray  # int [k], favoured on device "mobile"
    weekend_topics: np.ndarray  # int [k], favoured on Saturday/Sunday (UTC)
    item_secondary_topic: np.ndarray  # int [I], secondary topic, -1 where none
    item_popularity: np.ndarray  # float [I], > 0, relative draw weight within a topic
    topic_words: np.ndarray  # str [T, WORDS_PER_TOPIC], each topic's own vocabulary
    filler_words: np.ndarray  # str [FILLER_WORDS], shared filler vocabulary
    user_device_mix: np.ndarray  # float [U, len(DEVICES)], rows sum to 1
    user_night_affinity: np.ndarray  # float [U] in [0, 1], P(hour from night profile)


# ----------------------------------------------------------------------------- helpers


def _vocabulary(rng: np.random.Generator, n_words: int) -> np.ndarray:
    """``n_words`` distinct pronounceable words (2-3 syllables), str [n_words]."""
    syllables = np.unique(
        [o + n + c for o in _ONSETS for n in _NUCLEI for c in _CODAS]
    )
    words = np.empty(0, dtype=str)
    while words.size < n_words:
        n_cand = 3 * n_words + 64
        parts = syllables[rng.integers(0, syllables.size, size=(n_cand, 3))]
        three = rng.random(n_cand) < 0.4
        cand = np.char.add(np.char.add(parts[:, 0], parts[:, 1]), np.where(three, parts[:, 2], ""))
        pool = np.concatenate([words, cand])
        _, first = np.unique(pool, return_index=True)
        words = pool[np.sort(first)]
    return words[:n_words]


def _hour_cdf(peak: float, kappa: float) -> np.ndarray:
    """Cumulative distribution over hours 0..23 of a von Mises bump at ``peak``; [24]."""
    hours = np.arange(24)
    p = np.exp(kappa * np.cos(2 * np.pi * (hours - peak) / 24))
    cdf = np.cumsum(p / p.sum())
    cdf[-1] = 1.0
    return cdf


def _item_texts(
    rng: np.random.Generator,
    item_topic: np.ndarray,
    item_secondary: np.ndarray,
    topic_words: np.ndarray,
    filler_words: np.ndarray,
) -> np.ndarray:
    """Item texts, str [I]: shuffled primary / secondary / filler words (8-16)."""
    n_items = item_topic.size
    n_topics, per_topic = topic_words.shape
    lo, hi = _TEXT_LEN
    length = rng.integers(lo, hi + 1, size=n_items)
    n_pri = np.rint(_PRIMARY_WORDS * length).astype(np.int64)
    n_sec = np.where(item_secondary >= 0, np.rint(_SECONDARY_WORDS * length), 0).astype(np.int64)

    pos = np.arange(hi)[None, :]
    # word ids into vocab = [topic_words.ravel(), filler_words]
    primary = item_topic[:, None] * per_topic + rng.integers(0, per_topic, size=(n_items, hi))
    secondary = (
        np.maximum(item_secondary, 0)[:, None] * per_topic
        + rng.integers(0, per_topic, size=(n_items, hi))
    )
    filler = n_topics * per_topic + rng.integers(0, filler_words.size, size=(n_items, hi))
    word = np.where(
        pos < n_pri[:, None],
        primary,
        np.where(pos < (n_pri + n_sec)[:, None], secondary, filler),
    )
    # shuffle each row's first length[i] words; padding sorts last
    valid = pos < length[:, None]
    keys = np.where(valid, rng.random((n_items, hi)), 2.0)
    word = np.take_along_axis(word, np.argsort(keys, axis=1), axis=1)

    vocab = np.concatenate([topic_words.ravel(), filler_words])
    tokens = vocab[word[valid]]  # row-major: item 0's words, then item 1's, ...
    ends = np.cumsum(length) - 1
    sep = np.full(tokens.size, " ", dtype="<U1")
    sep[ends] = "\n"
    joined = "".join(np.char.add(tokens, sep).tolist())
    return np.array(joined.split("\n")[:-1], dtype=object)


def _user_prefs(rng: np.random.Generator, n_users: int, n_topics: int) -> np.ndarray:
    """Topic preferences, float [U, T], rows sum to 1, each concentrated on 2-4 topics."""
    k = np.minimum(rng.integers(2, 5, size=n_users), n_topics)
    rank = np.argsort(np.argsort(rng.random((n_users, n_topics)), axis=1), axis=1)
    weight = np.where(rank < k[:, None], rng.gamma(1.0, size=(n_users, n_topics)) + 1e-9, 0.0)
    pref = weight / weight.sum(axis=1, keepdims=True)
    return (1.0 - PREF_SMOOTHING) * pref + PREF_SMOOTHING / n_topics


def _draw_topics(
    rng: np.random.Generator,
    pref_t: np.ndarray,
    mult: np.ndarray,
    user: np.ndarray,
    ctx: np.ndarray,
    boost: np.ndarray | None = None,
) -> np.ndarray:
    """Topic of each event, int [E], with weight ``pref[user, t] * mult[ctx, t] + boost[ctx, t]``.

    ``boost`` is the same for every user: the part of the context effect that does not depend
    on the user's own taste (e.g. everyone drifts to night topics at night).

    ``pref_t`` is the transposed preference matrix [T, U]; ``mult`` is [n_ctx, T].
    """
    n_topics = pref_t.shape[0]
    total = np.zeros(user.size)
    for t in range(n_topics):
        total += pref_t[t][user] * mult[ctx, t] + (0.0 if boost is None else boost[ctx, t])
    target = rng.random(user.size) * total
    topic = np.full(user.size, n_topics - 1, dtype=np.int64)
    open_ = np.ones(user.size, dtype=bool)
    cum = np.zeros(user.size)
    for t in range(n_topics - 1):
        cum += pref_t[t][user] * mult[ctx, t] + (0.0 if boost is None else boost[ctx, t])
        hit = open_ & (cum > target)
        topic[hit] = t
        open_ &= ~hit
    return topic


@dataclass(frozen=True)
class _Catalogue:
    """Items grouped by topic for fast within-topic draws."""

    order: np.ndarray  # int [I], item ids sorted by topic
    cum_pop: np.ndarray  # float [I], cumulative popularity along ``order``
    start: np.ndarray  # int [T], first position of each topic in ``order``
    stop: np.ndarray  # int [T], one past the last position

    @classmethod
    def build(cls, item_topic: np.ndarray, popularity: np.ndarray, n_topics: int) -> _Catalogue:
        order = np.argsort(item_topic, kind="stable")
        sorted_topic = item_topic[order]
        start = np.searchsorted(sorted_topic, np.arange(n_topics), side="left")
        stop = np.searchsorted(sorted_topic, np.arange(n_topics), side="right")
        return cls(order, np.cumsum(popularity[order]), start, stop)

    def by_popularity(self, rng: np.random.Generator, topic: np.ndarray) -> np.ndarray:
        """An item of each event's topic, drawn proportionally to popularity; [E]."""
        start, stop = self.start[topic], self.stop[topic]
        before = np.where(start > 0, self.cum_pop[np.maximum(start - 1, 0)], 0.0)
        mass = self.cum_pop[stop - 1] - before
        pos = np.searchsorted(self.cum_pop, before + rng.random(topic.size) * mass, side="right")
        return self.order[np.clip(pos, start, stop - 1)]

    def uniform(self, rng: np.random.Generator, topic: np.ndarray) -> np.ndarray:
        """An item of each event's topic, drawn uniformly; [E]."""
        start, stop = self.start[topic], self.stop[topic]
        pos = start + (rng.random(topic.size) * (stop - start)).astype(np.int64)
        return self.order[np.minimum(pos, stop - 1)]


def _repeats(user: np.ndarray, item: np.ndarray, n_items: int) -> np.ndarray:
    """Mask of events whose (user, item) pair occurred at an earlier event; bool [E]."""
    _, first = np.unique(user * np.int64(n_items) + item, return_index=True)
    mask = np.ones(user.size, dtype=bool)
    mask[first] = False
    return mask


def _deduplicate(
    rng: np.random.Generator,
    user: np.ndarray,
    ctx: np.ndarray,
    topic: np.ndarray,
    item: np.ndarray,
    pref_t: np.ndarray,
    mult: np.ndarray,
    catalogue: _Catalogue,
    n_items: int,
    boost: np.ndarray | None = None,
) -> None:
    """Redraw repeated (user, item) pairs in place until every pair is unique.

    Stages, each redrawing only the repeats: (1) a fresh context-shifted topic and
    a popularity-weighted item, ``_REDRAW_ROUNDS`` times; (2) same topic, uniform
    item, ``_REDRAW_ROUNDS`` times; (3) a uniform item over the whole catalogue
    until done (always possible: a user has at most ``n_items`` events).
    """
    for round_ in range(2 * _REDRAW_ROUNDS + _MAX_UNIFORM_ROUNDS):
        rep = np.flatnonzero(_repeats(user, item, n_items))
        if rep.size == 0:
            return
        if round_ < _REDRAW_ROUNDS:
            topic[rep] = _draw_topics(rng, pref_t, mult, user[rep], ctx[rep], boost)
            item[rep] = catalogue.by_popularity(rng, topic[rep])
        elif round_ < 2 * _REDRAW_ROUNDS:
            item[rep] = catalogue.uniform(rng, topic[rep])
        else:
            item[rep] = rng.integers(0, n_items, size=rep.size)
    raise RuntimeError("could not make (user, item) pairs unique")  # pragma: no cover


def _ids(prefix: str, n: int, min_width: int) -> np.ndarray:
    """``prefix`` + zero-padded 0..n-1, str [n]."""
    width = max(min_width, len(str(n - 1)))
    return np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), width))


# --------------------------------------------------------------------------- public API


def generate(cfg: SyntheticConfig) -> tuple[pd.DataFrame, pd.DataFrame, SyntheticTruth]:
    """Generate the dataset in memory.

    Returns ``(interactions, items, truth)``:

    * ``interactions``: E rows sorted by (user_id, timestamp), columns ``user_id``
      (str ``"u000123"``), ``item_id`` (str ``"i00042"``), ``timestamp`` (int64
      Unix seconds, UTC), ``device`` (str, one of :data:`DEVICES`);
    * ``items``: I rows in id order, columns ``item_id``, ``text``;
    * ``truth``: the planted structure.
    """
    rng = np.random.default_rng(cfg.seed)  # one stream: the helpers below draw from it in this order
    n_users, n_items, n_topics = cfg.users, cfg.items, cfg.topics
    topic_words, filler_words, favoured = _words_and_favoured_topics(rng, n_topics)
    item_topic, item_secondary, popularity = _item_topics(rng, n_items, n_topics)
    texts = _item_texts(rng, item_topic, item_secondary, topic_words, filler_words)

    # users
    pref = _user_prefs(rng, n_users, n_topics)
    device_mix = rng.dirichlet(_DEVICE_ALPHA, size=n_users)
    night_affinity = rng.beta(*_NIGHT_AFFINITY_BETA, size=n_users)
    user = _event_users(rng, cfg)
    timestamp, device, ctx = _event_context(rng, cfg, user, device_mix, night_affinity)
    mult, boost = _context_multipliers(cfg, favoured)

    # topic, then item by popularity; redraw repeated (user, item) pairs
    pref_t = np.ascontiguousarray(pref.T)
    catalogue = _Catalogue.build(item_topic, popularity, n_topics)
    topic = _draw_topics(rng, pref_t, mult, user, ctx, boost)
    item = catalogue.by_popularity(rng, topic)
    _deduplicate(rng, user, ctx, topic, item, pref_t, mult, catalogue, n_items, boost)

    order = np.lexsort((item, timestamp, user))
    user_ids = _ids("u", n_users, 6)
    item_ids = _ids("i", n_items, 5)
    interactions = pd.DataFrame(
        {
            "user_id": pd.array(user_ids[user[order]], dtype="str"),
            "item_id": pd.array(item_ids[item[order]], dtype="str"),
            "timestamp": timestamp[order],
            "device": pd.array(np.asarray(DEVICES)[device[order]], dtype="str"),
        }
    )
    items = pd.DataFrame(
        {"item_id": pd.array(item_ids, dtype="str"), "text": pd.array(texts, dtype="str")}
    )
    night_topics, mobile_topics, weekend_topics = favoured
    for array in (pref, item_topic, night_topics, mobile_topics, weekend_topics, item_secondary,
                  popularity, topic_words, filler_words, device_mix, night_affinity):
        array.setflags(write=False)
    truth = SyntheticTruth(
        user_topic_pref=pref,
        item_topic=item_topic,
        night_topics=night_topics,
        mobile_topics=mobile_topics,
        weekend_topics=weekend_topics,
        item_secondary_topic=item_secondary,
        item_popularity=popularity,
        topic_words=topic_words,
        filler_words=filler_words,
        user_device_mix=device_mix,
        user_night_affinity=night_affinity,
    )
    return interactions, items, truth


def _words_and_favoured_topics(rng: np.random.Generator, n_topics: int
                               ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(topic words [n_topics, WORDS_PER_TOPIC], filler words [FILLER_WORDS], the topics favoured at night, on
    mobile and at weekends (each sorted, up to 3))."""
    vocab = _vocabulary(rng, n_topics * WORDS_PER_TOPIC + FILLER_WORDS)
    topic_words = vocab[: n_topics * WORDS_PER_TOPIC].reshape(n_topics, WORDS_PER_TOPIC)
    filler_words = vocab[n_topics * WORDS_PER_TOPIC:]
    k = min(3, n_topics // 3)
    perm = rng.permutation(n_topics)
    return topic_words, filler_words, (np.sort(perm[:k]), np.sort(perm[k: 2 * k]), np.sort(perm[2 * k: 3 * k]))


def _item_topics(rng: np.random.Generator, n_items: int, n_topics: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Balanced primary topics [n_items], optional secondary topics [n_items] (-1: none) and popularity
    [n_items] (log-normal)."""
    item_topic = rng.permutation(np.arange(n_items) % n_topics)
    has_secondary = rng.random(n_items) < _SECONDARY_SHARE
    if n_topics > 1:
        shift = rng.integers(1, n_topics, size=n_items)
        item_secondary = np.where(has_secondary, (item_topic + shift) % n_topics, -1)
    else:
        item_secondary = np.full(n_items, -1)
    return item_topic, item_secondary, rng.lognormal(0.0, _POPULARITY_SIGMA, size=n_items)


def _event_users(rng: np.random.Generator, cfg: SyntheticConfig) -> np.ndarray:
    """The user [E] of every engagement: min_events + NegBin(r, p) with mean extra per user (at most n_items)."""
    extra = cfg.mean_events - cfg.min_events
    if extra > 0:
        r = _EXTRA_EVENTS_R
        n_extra = rng.negative_binomial(r, r / (r + extra), size=cfg.users)
    else:
        n_extra = np.zeros(cfg.users, dtype=np.int64)
    n_events = np.minimum(cfg.min_events + n_extra, cfg.items)
    return np.repeat(np.arange(cfg.users, dtype=np.int64), n_events)


def _event_context(rng: np.random.Generator, cfg: SyntheticConfig, user: np.ndarray, device_mix: np.ndarray,
                   night_affinity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Time and device of every engagement: (timestamp [E] int64 Unix seconds, device [E] index into DEVICES,
    context code [E]: bit 0 night, bit 1 mobile, bit 2 weekend)."""
    n = user.size
    day0 = (cfg.start // _SECONDS_PER_DAY) * _SECONDS_PER_DAY
    day = rng.integers(0, cfg.days, size=n)
    from_night = rng.random(n) < night_affinity[user]
    u_hour = rng.random(n)
    hour = np.where(
        from_night,
        np.searchsorted(_hour_cdf(_NIGHT_PEAK, _NIGHT_KAPPA), u_hour, side="right"),
        np.searchsorted(_hour_cdf(_DAY_PEAK, _DAY_KAPPA), u_hour, side="right"),
    )
    hour = np.minimum(hour, 23)
    timestamp = (
        day0 + day * _SECONDS_PER_DAY + hour * 3600 + rng.integers(0, 3600, size=n)
    ).astype(np.int64)
    cum_mix = np.cumsum(device_mix, axis=1)[user]
    u_dev = rng.random(n)
    device = np.minimum(
        (u_dev >= cum_mix[:, 0]).astype(np.int64) + (u_dev >= cum_mix[:, 1]), len(DEVICES) - 1
    )
    weekday = (timestamp // _SECONDS_PER_DAY + _EPOCH_WEEKDAY) % 7
    is_night = np.isin(hour, NIGHT_HOURS)
    is_mobile = device == DEVICES.index("mobile")
    is_weekend = weekday >= 5
    return timestamp, device, is_night.astype(np.int64) + 2 * is_mobile + 4 * is_weekend


def _context_multipliers(cfg: SyntheticConfig, favoured: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Topic multiplier and additive boost [8, n_topics] per context code (bit 0 night, bit 1 mobile, bit 2
    weekend) for the favoured topics of each bit."""
    mult = np.ones((8, cfg.topics))
    boost = np.zeros((8, cfg.topics))
    for bit, topics in enumerate(favoured):
        codes = [c for c in range(8) if c >> bit & 1]
        mult[np.ix_(codes, topics)] *= cfg.context_strength
        boost[np.ix_(codes, topics)] += cfg.context_mix
    return mult, boost


def write_synthetic(
    out: Path,
    cfg: SyntheticConfig = SyntheticConfig(),
    *,
    fmt: str = "parquet",
    overwrite: bool = False,
) -> Path:
    """Generate and write the dataset directory ``out`` atomically; returns ``out``.

    Writes ``dataset.toml``, ``interactions.<fmt>`` and ``items.<fmt>`` (``fmt``:
    ``"parquet"`` or ``"csv"``). Raises :class:`FileExistsError` if ``out`` is a
    non-empty directory and ``overwrite`` is false (before generating anything).
    """
    return write_dataset(out, lambda: ("synthetic", *generate(cfg)[:2]), fmt=fmt, overwrite=overwrite,
                         time_column="timestamp",
                         # declared, not fitted: the vocabulary is the generator's own (public), in the sorted order
                         # a fit on rows with every device would give
                         context_columns={"device": {"kind": "categorical", "values": sorted(DEVICES)}},
                         from_time=["hour", "weekday", "weekend"])
