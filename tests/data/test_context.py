"""Tests for common.data.context.ContextEncoder; expected values are worked out by hand."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.data.context import DEFAULT_HARMONICS, ContextEncoder
from common.data.loader import ContextColumn

MONDAY = 1_704_067_200  # 2024-01-01T00:00:00Z, a Monday
SATURDAY = MONDAY + 5 * 86_400  # 2024-01-06T00:00:00Z
HOUR = 3_600

NO_FRAME = pd.DataFrame()


def time_encoder(*features: str, harmonics: int = 1) -> ContextEncoder:
    return ContextEncoder.fit(NO_FRAME, [], features, np.array([MONDAY], dtype=np.int64), harmonics)


def test_hour_six_utc() -> None:
    enc = time_encoder("hour")
    assert enc.feature_names == ("hour_sin", "hour_cos") and enc.dim == 2
    t = np.array([MONDAY + 6 * HOUR, MONDAY + 12 * HOUR, MONDAY + 6 * HOUR + 30 * 60], dtype=np.int64)
    out = enc.transform(NO_FRAME, t)
    assert out.dtype == np.float32 and out.shape == (3, 2)
    # 06:00 -> angle pi/2: sin 1, cos 0
    assert out[0, 0] == 1.0
    assert abs(out[0, 1]) < 1e-6
    # 12:00 -> angle pi: sin 0, cos -1
    np.testing.assert_allclose(out[1], [0.0, -1.0], atol=1e-6)
    # 06:30 -> 97.5 degrees: sin = cos(7.5 deg) = 0.9914449, cos = -sin(7.5 deg) = -0.1305262
    np.testing.assert_allclose(out[2], [0.9914449, -0.1305262], atol=1e-6)


def test_harmonics_by_hand_and_their_names() -> None:
    """Order k of a cycle is sin(k a), cos(k a); the default is DEFAULT_HARMONICS orders for the hour and for a
    declared cyclic column alike."""
    enc = time_encoder("hour", harmonics=3)
    assert enc.feature_names == ("hour_sin", "hour_cos", "hour_sin2", "hour_cos2", "hour_sin3", "hour_cos3")
    out = enc.transform(NO_FRAME, np.array([MONDAY + 6 * HOUR, MONDAY + 4 * HOUR], dtype=np.int64))
    # 06:00 -> a = pi/2: (1, 0), (0, -1), (-1, 0); 04:00 -> a = pi/3
    np.testing.assert_allclose(out[0], [1, 0, 0, -1, -1, 0], atol=1e-6)
    r = math.sqrt(3) / 2
    np.testing.assert_allclose(out[1], [r, 0.5, r, -0.5, 0, -1], atol=1e-6)
    default = ContextEncoder.fit(pd.DataFrame({"dir": [0.0]}), [ContextColumn("dir", "cyclic", 360.0)], ["hour"],
                                 np.array([MONDAY], np.int64))
    assert default.harmonics == DEFAULT_HARMONICS and default.dim == 4 * DEFAULT_HARMONICS
    assert default.feature_names[2 * DEFAULT_HARMONICS - 2:2 * DEFAULT_HARMONICS + 2] == (
        f"dir_sin{DEFAULT_HARMONICS}", f"dir_cos{DEFAULT_HARMONICS}", "hour_sin", "hour_cos")
    with pytest.raises(ValueError, match=r"harmonics must be an integer in \[1, 24\]; got 0"):
        time_encoder("hour", harmonics=0)


def test_twelve_harmonics_express_any_hour_of_day_effect_one_cannot() -> None:
    """What the harmonics are for: a context that switches at set hours (the generator's night, 21:00 to 02:59
    UTC). At whole hours, 12 orders and a constant span every function of the hour, so least squares fits the
    night exactly; one order (a single bump) leaves a large residual."""
    hours = np.arange(24)
    night = np.isin(hours, (21, 22, 23, 0, 1, 2)).astype(np.float64)
    t = (MONDAY + hours * HOUR).astype(np.int64)

    def residual(harmonics: int) -> float:
        x = time_encoder("hour", harmonics=harmonics).transform(NO_FRAME, t).astype(np.float64)
        design = np.column_stack([np.ones(24), x])
        coef, *_ = np.linalg.lstsq(design, night, rcond=None)
        return float(np.abs(design @ coef - night).max())

    assert residual(12) < 1e-5
    assert residual(1) > 0.25  # 0.25 + 0.45 cos(a - a_night) is the best a single order can do


def test_a_version_1_document_reads_as_one_harmonic() -> None:
    """Schemas and declarations written before the harmonics (version 1) keep their width and encoding."""
    enc, frame, time = full_encoder()
    old = {k: v for k, v in enc.to_dict().items() if k != "harmonics"} | {"version": 1}
    assert ContextEncoder.from_dict(old) == enc
    np.testing.assert_array_equal(ContextEncoder.from_dict(old).transform(frame, time), enc.transform(frame, time))


def test_saturday_weekday_and_weekend() -> None:
    enc = time_encoder("weekday", "weekend")
    assert enc.feature_names == tuple(f"weekday={d}" for d in range(7)) + ("weekend",)
    t = np.array([SATURDAY + 13 * HOUR, MONDAY, SATURDAY + 2 * 86_400 - 1], dtype=np.int64)
    out = enc.transform(NO_FRAME, t)
    # Saturday 13:00, Monday 00:00, Sunday 23:59:59
    np.testing.assert_array_equal(out[0], [0, 0, 0, 0, 0, 1, 0, 1])
    np.testing.assert_array_equal(out[1], [1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(out[2], [0, 0, 0, 0, 0, 0, 1, 1])


def test_categorical_one_hot_unseen_and_missing_are_zero() -> None:
    cols = [ContextColumn("device", "categorical")]
    enc = ContextEncoder.fit(pd.DataFrame({"device": ["tv", "mobile", "tv", None]}), cols, [], None)
    assert enc.feature_names == ("device=mobile", "device=tv")  # sorted vocabulary
    out = enc.transform(pd.DataFrame({"device": ["mobile", "watch", None, "tv", ""]}), None)
    np.testing.assert_array_equal(out, [[1, 0], [0, 0], [0, 0], [0, 1], [0, 0]])


def test_categorical_values_as_strings() -> None:
    enc = ContextEncoder.fit(pd.DataFrame({"floor": [3, 10, 3]}),
                             [ContextColumn("floor", "categorical")], [], None)
    # string order: "10" < "3"
    assert enc.feature_names == ("floor=10", "floor=3")
    np.testing.assert_array_equal(enc.transform(pd.DataFrame({"floor": ["3"]}), None), [[0, 1]])


def test_numeric_standardisation_by_hand() -> None:
    cols = [ContextColumn("temp", "numeric")]
    # train 1, 2, 3, 6 (and a missing one): mean 3, population variance (4+1+0+9)/4 = 3.5
    enc = ContextEncoder.fit(pd.DataFrame({"temp": [1.0, 2.0, None, 3.0, 6.0]}), cols, [], None)
    out = enc.transform(pd.DataFrame({"temp": [3.0, 6.0, None, 0.0]}), None)
    expected = [0.0, 3.0 / math.sqrt(3.5), 0.0, -3.0 / math.sqrt(3.5)]
    np.testing.assert_allclose(out[:, 0], expected, rtol=1e-6)


def test_numeric_constant_column_uses_std_one() -> None:
    enc = ContextEncoder.fit(pd.DataFrame({"x": [5.0, 5.0]}), [ContextColumn("x", "numeric")], [], None)
    np.testing.assert_allclose(enc.transform(pd.DataFrame({"x": [7.0, 4.0]}), None)[:, 0], [2.0, -1.0])


def test_cyclic_column() -> None:
    enc = ContextEncoder.fit(pd.DataFrame({"dow": [0.0]}), [ContextColumn("dow", "cyclic", 7.0)], [], None, 1)
    assert enc.feature_names == ("dow_sin", "dow_cos")
    out = enc.transform(pd.DataFrame({"dow": [1.75, 3.5, None]}), None)
    # 1.75/7 of a turn = 90 degrees; 3.5/7 = 180 degrees; missing -> zeros
    np.testing.assert_allclose(out, [[1.0, 0.0], [0.0, -1.0], [0.0, 0.0]], atol=1e-6)


def full_encoder() -> tuple[ContextEncoder, pd.DataFrame, np.ndarray]:
    cols = [
        ContextColumn("device", "categorical"),
        ContextColumn("temp", "numeric"),
        ContextColumn("dow", "cyclic", 7.0),
    ]
    frame = pd.DataFrame({
        "device": ["mobile", "desktop", None, "tv"],
        "temp": [0.1, 0.7, None, 2.3],
        "dow": [0.0, 1.0, 6.5, None],
    })
    time = np.array([MONDAY + 1234, SATURDAY + 999, MONDAY + 86_400 * 3 + 7, 0], dtype=np.int64)
    enc = ContextEncoder.fit(frame, cols, ["hour", "weekday", "weekend"], time, harmonics=1)
    return enc, frame, time


def test_feature_layout() -> None:
    enc, _, _ = full_encoder()
    assert enc.feature_names == (
        "device=desktop", "device=mobile", "device=tv", "temp", "dow_sin", "dow_cos",
        "hour_sin", "hour_cos", *(f"weekday={d}" for d in range(7)), "weekend",
    )
    assert enc.dim == 16  # 3 + 1 + 2 + 2 + 7 + 1


def test_to_dict_from_dict_round_trip() -> None:
    enc, frame, time = full_encoder()
    state = json.loads(json.dumps(enc.to_dict()))
    copy = ContextEncoder.from_dict(state)
    assert copy.feature_names == enc.feature_names and copy.dim == enc.dim
    assert copy == enc
    np.testing.assert_array_equal(copy.transform(frame, time), enc.transform(frame, time))


def test_full_encoder_transform_by_hand() -> None:
    """Every kind at once (categorical, numeric, cyclic, hour, weekday, weekend), in the feature layout's order;
    the expected rows are worked out by hand (statistics' population mean and std, not the encoder's numpy)."""
    enc, frame, time = full_encoder()
    seen = [0.1, 0.7, 2.3]  # temp's non-missing training values: (t - mean) / population std, missing -> 0
    mean, std = statistics.fmean(seen), statistics.pstdev(seen)

    def turn(value: float, period: float) -> list[float]:
        return [math.sin(2 * math.pi * value / period), math.cos(2 * math.pi * value / period)]

    def weekday(d: int) -> list[float]:
        return [1.0 if k == d else 0.0 for k in range(7)]

    expected = [
        # mobile, 0.1, dow 0; Monday 00:20:34 UTC, not a weekend
        [0, 1, 0, (0.1 - mean) / std, *turn(0.0, 7), *turn(1234, 86_400), *weekday(0), 0],
        # desktop, 0.7, dow 1; Saturday 00:16:39, a weekend
        [1, 0, 0, (0.7 - mean) / std, *turn(1.0, 7), *turn(999, 86_400), *weekday(5), 1],
        # missing device and temp, dow 6.5; Thursday 00:00:07
        [0, 0, 0, 0, *turn(6.5, 7), *turn(7, 86_400), *weekday(3), 0],
        # tv, 2.3, missing dow; time 0 = Thursday 1970-01-01 00:00
        [0, 0, 1, (2.3 - mean) / std, 0, 0, 0, 1, *weekday(3), 0],
    ]
    out = enc.transform(frame, time)
    assert out.dtype == np.float32 and out.shape == (4, 16)
    np.testing.assert_allclose(out, np.array(expected), rtol=1e-6, atol=1e-6)


def test_from_time_needs_time() -> None:
    with pytest.raises(ValueError, match=r"from-time features need the time array \(Unix seconds\)"):
        ContextEncoder.fit(NO_FRAME, [], ["hour"], None)
    with pytest.raises(ValueError, match=r"from-time feature must be one of \('hour', 'weekday', 'weekend'\); got "
                                         r"'minute'"):
        ContextEncoder.fit(NO_FRAME, [], ["minute"], np.array([0]))


def test_no_context_gives_zero_columns() -> None:
    enc = ContextEncoder.fit(pd.DataFrame(index=range(3)), [], [], None)
    out = enc.transform(pd.DataFrame(index=range(3)), None)
    assert enc.dim == 0 and out.shape == (3, 0) and out.dtype == np.float32


def test_a_mapping_of_lists_encodes_as_the_dataframe_does_without_pandas() -> None:
    """A device's query (column -> list of values, read without pandas) encodes exactly as the same rows in a
    DataFrame: categorical (known, unseen, blank, missing), numeric (value, missing), cyclic and time features;
    also past the size where the vocabulary lookup switches from a dict to pandas' index."""
    cols = [ContextColumn("device", "categorical"), ContextColumn("temp", "numeric"),
            ContextColumn("dir", "cyclic", period=360.0)]
    fit = pd.DataFrame({"device": ["tv", "mobile", "tv"], "temp": [10.0, 20.0, 30.0], "dir": [0.0, 90.0, 180.0]})
    enc = ContextEncoder.fit(fit, cols, ["hour", "weekday", "weekend"], np.array([MONDAY] * 3, np.int64))
    rows = {"device": ["mobile", "watch", " ", None, "tv"], "temp": [20.0, None, 35.5, 10, float("inf")],
            "dir": [90.0, None, 45.0, 360, -90.0]}
    t = np.array([MONDAY, SATURDAY + 13 * HOUR, MONDAY + 6 * HOUR, SATURDAY, MONDAY + 1], np.int64)
    got = enc.transform(rows, t)
    np.testing.assert_array_equal(got, enc.transform(pd.DataFrame(rows), t))
    # by hand, row 0: device=mobile, (20 - 20) / std, sin/cos of 90 degrees, Monday 00:00
    np.testing.assert_allclose(got[0, :5], [1, 0, 0, 1, 0], atol=1e-7)
    assert got[1, :5].tolist() == [0, 0, 0, 0, 0]  # unseen device, missing temperature and direction
    many = {k: v * 30 for k, v in rows.items()}  # 150 rows: the lookup through pandas' index
    np.testing.assert_array_equal(enc.transform(many, np.tile(t, 30)), np.tile(got, (30, 1)))
    with pytest.raises(ValueError, match="one length"):
        enc.transform({"device": ["tv"], "temp": [], "dir": [1.0]}, t[:1])
