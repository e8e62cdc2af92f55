"""Tests for common.data.sources.synthetic: sizes, determinism and the planted structure.

Every planted effect is measured from the output frames (ids parsed back to
indices, hours and weekdays recomputed from the timestamps here), not by calling
the generator's internals.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data.sources.synthetic import DEVICES, SyntheticConfig, SyntheticTruth, generate, write_synthetic

CFG = SyntheticConfig(users=200, items=500, topics=20, min_events=10, mean_events=20.0, seed=7)


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame, SyntheticTruth]:
    return generate(CFG)


def _index(ids: pd.Series) -> np.ndarray:
    """'u000123' / 'i00042' -> 123 / 42."""
    return ids.str.slice(1).astype(int).to_numpy()


def _event_topics(inter: pd.DataFrame, truth: SyntheticTruth) -> np.ndarray:
    return truth.item_topic[_index(inter["item_id"])]


def _utc_hour(inter: pd.DataFrame) -> np.ndarray:
    return pd.to_datetime(inter["timestamp"], unit="s", utc=True).dt.hour.to_numpy()


def _share(in_set: np.ndarray, where: np.ndarray) -> float:
    return float(in_set[where].mean())


# ------------------------------------------------------------------ shape and determinism


def test_same_seed_is_identical(data) -> None:
    inter, items, truth = data
    inter2, items2, truth2 = generate(CFG)
    pd.testing.assert_frame_equal(inter, inter2)
    pd.testing.assert_frame_equal(items, items2)
    np.testing.assert_array_equal(truth.user_topic_pref, truth2.user_topic_pref)
    np.testing.assert_array_equal(truth.item_topic, truth2.item_topic)
    np.testing.assert_array_equal(truth.night_topics, truth2.night_topics)


def test_different_seed_differs(data) -> None:
    inter, items, truth = data
    inter2, items2, truth2 = generate(replace(CFG, seed=8))
    assert not inter.equals(inter2)
    assert not items["text"].equals(items2["text"])
    assert not np.array_equal(truth.item_topic, truth2.item_topic)


def test_columns_and_types(data) -> None:
    inter, items, _ = data
    assert list(inter.columns) == ["user_id", "item_id", "timestamp", "device"]
    assert list(items.columns) == ["item_id", "text"]
    assert inter["timestamp"].dtype == np.int64
    assert inter["user_id"].str.fullmatch(r"u\d{6}").all()
    assert inter["item_id"].str.fullmatch(r"i\d{5}").all()
    assert set(inter["device"]) == {"mobile", "desktop", "tablet"}
    assert items["item_id"].tolist() == [f"i{i:05d}" for i in range(CFG.items)]


def test_sizes_and_uniqueness(data) -> None:
    inter, items, _ = data
    assert sorted(inter["user_id"].unique()) == [f"u{u:06d}" for u in range(CFG.users)]
    assert items["item_id"].is_unique and len(items) == CFG.items
    assert inter["item_id"].isin(items["item_id"]).all()
    per_user = inter.groupby("user_id").size()
    assert per_user.min() >= CFG.min_events
    assert 0.85 * CFG.mean_events < per_user.mean() < 1.15 * CFG.mean_events
    assert per_user.max() > CFG.min_events + 10  # the count really varies
    assert not inter.duplicated(["user_id", "item_id"]).any()


def test_sorted_by_user_then_time(data) -> None:
    inter, _, _ = data
    key = list(zip(inter["user_id"], inter["timestamp"]))
    assert key == sorted(key)


def test_timestamps_span_days_from_start(data) -> None:
    inter, _, _ = data
    day0 = CFG.start - CFG.start % 86_400  # first UTC midnight
    ts = inter["timestamp"].to_numpy()
    assert ts.min() >= day0 and ts.max() < day0 + CFG.days * 86_400
    days = np.unique((ts - day0) // 86_400)
    assert len(days) > 0.9 * CFG.days


def test_every_user_reaches_min_events_when_items_are_few() -> None:
    # 20 items, 10-30 events per user: forces many redraws of repeated pairs
    cfg = SyntheticConfig(users=50, items=20, topics=4, min_events=10, mean_events=15.0, seed=1)
    inter, items, _ = generate(cfg)
    per_user = inter.groupby("user_id").size()
    assert len(per_user) == 50 and per_user.min() >= 10 and per_user.max() <= 20
    assert not inter.duplicated(["user_id", "item_id"]).any()


def test_invalid_config_rejected() -> None:
    with pytest.raises(ValueError, match=r"items \(5\) must be >= topics \(10\)"):
        SyntheticConfig(items=5, topics=10)
    with pytest.raises(ValueError, match=r"mean_events \(20\.0\) must be >= min_events \(30\)"):
        SyntheticConfig(min_events=30, mean_events=20.0)


# ---------------------------------------------------------------------------- item text


def test_vocabularies_are_disjoint_words(data) -> None:
    _, _, truth = data
    assert truth.topic_words.shape == (CFG.topics, 40)
    assert truth.filler_words.shape == (100,)
    words = [*truth.topic_words.ravel().tolist(), *truth.filler_words.tolist()]
    assert len(set(words)) == len(words)
    assert all(re.fullmatch(r"[a-z]{3,}", w) for w in words)
    # pronounceable: no run of 4 consonants
    assert not any(re.search(r"[^aeiou]{4}", w) for w in words)


def test_item_text_reflects_primary_topic(data) -> None:
    _, items, truth = data
    topic_of_word = {w: t for t, row in enumerate(truth.topic_words) for w in row}
    filler = set(truth.filler_words.tolist())
    own_share = []
    for idx, text in zip(_index(items["item_id"]), items["text"]):
        words = text.split(" ")
        assert 8 <= len(words) <= 16
        assert all(w in topic_of_word or w in filler for w in words)
        own = sum(topic_of_word.get(w) == truth.item_topic[idx] for w in words)
        own_share.append(own / len(words))
        other = {topic_of_word[w] for w in words if w in topic_of_word} - {truth.item_topic[idx]}
        secondary = truth.item_secondary_topic[idx]
        assert other <= ({secondary} if secondary >= 0 else set())
    own_share = np.array(own_share)
    assert own_share.min() > 0.5  # every item: most words from its topic
    assert 0.62 < own_share.mean() < 0.78  # ~70%


def test_topics_are_balanced_and_some_items_popular(data) -> None:
    inter, _, truth = data
    assert np.bincount(truth.item_topic, minlength=CFG.topics).min() > 0
    counts = np.bincount(_index(inter["item_id"]), minlength=CFG.items)
    top_decile = np.sort(counts)[::-1][: CFG.items // 10].sum()
    assert top_decile > 0.22 * counts.sum()  # uniform popularity: ~0.17 (Poisson noise)
    by_pop = np.argsort(truth.item_popularity)
    assert counts[by_pop[-50:]].mean() > 3 * counts[by_pop[:50]].mean()


# ---------------------------------------------------------------------- planted context


def test_context_topic_sets_are_disjoint(data) -> None:
    _, _, truth = data
    sets = [set(truth.night_topics), set(truth.mobile_topics), set(truth.weekend_topics)]
    assert all(len(s) == 3 for s in sets)
    assert len(sets[0] | sets[1] | sets[2]) == 9


def _context_ratios(inter: pd.DataFrame, truth: SyntheticTruth) -> dict[str, float]:
    topic = _event_topics(inter, truth)
    hour = _utc_hour(inter)
    night = (hour >= 21) | (hour <= 2)
    mobile = inter["device"].to_numpy() == "mobile"
    weekday = pd.to_datetime(inter["timestamp"], unit="s", utc=True).dt.weekday.to_numpy()
    weekend = weekday >= 5
    out = {}
    for name, mask, favoured in (
        ("night", night, truth.night_topics),
        ("mobile", mobile, truth.mobile_topics),
        ("weekend", weekend, truth.weekend_topics),
    ):
        in_set = np.isin(topic, favoured)
        out[name] = _share(in_set, mask) / _share(in_set, ~mask)
    return out


def test_planted_context_effect_is_visible(data) -> None:
    inter, _, truth = data
    ratios = _context_ratios(inter, truth)
    assert ratios["night"] > 1.6, ratios
    assert ratios["mobile"] > 1.6, ratios
    assert ratios["weekend"] > 1.6, ratios


def test_no_context_effect_without_context_strength() -> None:
    inter, _, truth = generate(replace(CFG, context_strength=1.0, context_mix=0.0))
    ratios = _context_ratios(inter, truth)
    assert all(0.7 < r < 1.35 for r in ratios.values()), ratios


def test_night_owls_are_active_at_night(data) -> None:
    inter, _, truth = data
    hour = _utc_hour(inter)
    night = pd.Series((hour >= 21) | (hour <= 2)).groupby(_index(inter["user_id"])).mean()
    affinity = truth.user_night_affinity[night.index.to_numpy()]
    assert np.corrcoef(affinity, night.to_numpy())[0, 1] > 0.5


def test_device_follows_user_mix(data) -> None:
    inter, _, truth = data
    mobile = pd.Series(inter["device"].to_numpy() == "mobile").groupby(_index(inter["user_id"])).mean()
    mix = truth.user_device_mix[mobile.index.to_numpy(), 0]
    assert np.corrcoef(mix, mobile.to_numpy())[0, 1] > 0.6


# ------------------------------------------------------------------------ user preference


def test_engagements_concentrate_on_preferred_topics() -> None:
    # the user-independent context drift (context_mix) is switched off to see taste alone
    inter, _, truth = generate(replace(CFG, context_mix=0.0))
    pref = truth.user_topic_pref
    np.testing.assert_allclose(pref.sum(axis=1), 1.0)
    assert ((pref > 0.1).sum(axis=1) <= 4).all()  # 2-4 topics carry the weight
    user = _index(inter["user_id"])
    topic = _event_topics(inter, truth)
    top4 = np.argsort(pref, axis=1)[:, -4:]
    on_own = (top4[user] == topic[:, None]).any(axis=1)
    own_share = pd.Series(on_own).groupby(user).mean()
    # the same measure against another user's favourites (a shifted pairing)
    other = top4[(user + 1) % CFG.users]
    on_other = (other == topic[:, None]).any(axis=1)
    assert own_share.mean() > 0.8
    assert on_other.mean() < 0.4
    # empirical topic distribution per user tracks the preference
    counts = np.zeros_like(pref)
    np.add.at(counts, (user, topic), 1)
    empirical = counts / counts.sum(axis=1, keepdims=True)
    assert np.corrcoef(empirical.ravel(), pref.ravel())[0, 1] > 0.8


# ------------------------------------------------------------------------------- writing


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_write_synthetic(tmp_path: Path, fmt: str, data) -> None:
    inter, items, _ = data
    out = write_synthetic(tmp_path / "syn", CFG, fmt=fmt)
    assert out == tmp_path / "syn"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["dataset.toml", f"interactions.{fmt}", f"items.{fmt}"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["syn"]  # no temp dir left
    with open(out / "dataset.toml", "rb") as f:
        assert tomllib.load(f) == {
            "dataset": {
                "name": "synthetic",
                "interactions": f"interactions.{fmt}",
                "items": f"items.{fmt}",
                "time-column": "timestamp",
            },
            "context": {
                "columns": {"device": {"kind": "categorical", "values": sorted(DEVICES)}},
                "from-time": ["hour", "weekday", "weekend"],
            },
        }
    read = pd.read_parquet if fmt == "parquet" else pd.read_csv
    pd.testing.assert_frame_equal(read(out / f"interactions.{fmt}"), inter, check_dtype=False)
    pd.testing.assert_frame_equal(read(out / f"items.{fmt}"), items, check_dtype=False)


def test_write_synthetic_refuses_to_clobber(tmp_path: Path) -> None:
    small = replace(CFG, users=5, items=40)
    out = write_synthetic(tmp_path / "syn", small)
    before = (out / "items.parquet").read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_synthetic(out, replace(small, seed=99))
    assert (out / "items.parquet").read_bytes() == before
    write_synthetic(out, replace(small, seed=99), overwrite=True)
    assert (out / "items.parquet").read_bytes() != before
    with pytest.raises(ValueError, match="fmt must be 'parquet' or 'csv', got 'json'"):
        write_synthetic(tmp_path / "other", small, fmt="json")
