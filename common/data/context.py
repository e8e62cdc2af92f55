"""Encoding context columns (and features derived from the time column) into floats.

Encoding rules (the encoder is fitted on the training split only; deterministic):

* categorical ``c`` -> one-hot over the training vocabulary (values as strings,
  sorted); names ``"c=value"``; unseen or missing value -> all zeros.
* numeric ``c`` -> ``(v - mean) / std`` with training mean and population std
  (ddof=0, missing values ignored; std 0 -> 1); missing -> 0; name ``"c"``.
* cyclic ``c`` with period ``P`` -> a Fourier series of ``harmonics`` orders:
  ``sin(2*pi*k*v/P), cos(2*pi*k*v/P)`` for k = 1..harmonics; names ``"c_sin", "c_cos"``
  (k = 1), ``"c_sin2", "c_cos2"``, ...; missing -> zeros. One harmonic can only
  express a single smooth bump over the cycle; a context that switches at set
  hours (a night, a commute) needs more (:data:`DEFAULT_HARMONICS`).
* from-time ``"hour"`` -> hour of day (UTC, fractional) as a cycle of 24, the same
  series; names ``"hour_sin", "hour_cos"``, ``"hour_sin2"``, ...
* from-time ``"weekday"`` -> one-hot of the 7 days, ``"weekday=0"`` (Monday) ..
  ``"weekday=6"`` (Sunday), always 7 columns.
* from-time ``"weekend"`` -> 1.0 on Saturday/Sunday (UTC) else 0.0; name ``"weekend"``.

Features are laid out in declaration order of the context columns, then the
from-time features in the order given.

``transform`` takes a DataFrame, or a mapping of column -> list of values (a device's
query: one row, read without importing pandas; the same encoding, a test holds them equal).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from common.data.spec import (CONTEXT_KINDS, DEFAULT_HARMONICS, FROM_TIME_FEATURES, MAX_HARMONICS, ContextColumn,
                               valid_harmonics)

if TYPE_CHECKING:  # pragma: no cover - pandas is imported where a frame is read (not for a device's query)
    import pandas as pd

__all__ = ["DEFAULT_HARMONICS", "MAX_HARMONICS", "ContextEncoder", "cycle_names"]

_SECONDS_PER_DAY = 86_400
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (0 = Monday)
_FORMAT = "fedctx.context-encoder"
_VERSION = 2  # 2 adds "harmonics"; a version-1 document was written with one harmonic and reads as such


def cycle_names(name: str, harmonics: int) -> tuple[str, ...]:
    """Feature names of a cycle: ``name_sin, name_cos`` (order 1), ``name_sin2, name_cos2``, ..."""
    names: list[str] = []
    for k in range(1, harmonics + 1):
        suffix = "" if k == 1 else str(k)
        names.extend((f"{name}_sin{suffix}", f"{name}_cos{suffix}"))
    return tuple(names)


def _cycle(out: np.ndarray, offset: int, angle: np.ndarray, harmonics: int) -> None:
    """Write the Fourier series of ``angle`` (radians, [n], NaN where missing -> 0) into out[:, offset:offset + 2h]."""
    for k in range(1, harmonics + 1):
        out[:, offset + 2 * k - 2] = np.nan_to_num(np.sin(k * angle), nan=0.0)
        out[:, offset + 2 * k - 1] = np.nan_to_num(np.cos(k * angle), nan=0.0)


@dataclass(frozen=True)
class _Fitted:
    """State of one fitted context column."""

    name: str
    kind: str
    vocabulary: tuple[str, ...] = ()  # categorical
    mean: float = 0.0  # numeric
    std: float = 1.0  # numeric
    period: float | None = None  # cyclic

    def feature_names(self, harmonics: int) -> tuple[str, ...]:
        if self.kind == "categorical":
            return tuple(f"{self.name}={value}" for value in self.vocabulary)
        if self.kind == "numeric":
            return (self.name,)
        return cycle_names(self.name, harmonics)


#: at most this many values are looked up in a vocabulary with a dict (a query); more with pandas' index
_SMALL = 64


def _plain(values: Any, types: tuple[type, ...]) -> bool:
    """values is a list or tuple of None and `types` only (bool excluded): read without pandas."""
    return isinstance(values, (list, tuple)) and all(
        v is None or (isinstance(v, types) and not isinstance(v, bool)) for v in values)


def _category_strings(values: pd.Series | np.ndarray | Sequence[Any]) -> np.ndarray:
    """Values as strings: object array [n], None where missing (null/NaN/blank)."""
    if _plain(values, (str,)):
        out = np.full(len(values), None, dtype=object)
        out[:] = [v if v is not None and v.strip() != "" else None for v in values]
        return out
    import pandas as pd

    series = pd.Series(values).reset_index(drop=True)
    out = np.full(len(series), None, dtype=object)
    present = series.notna().to_numpy(dtype=bool)
    if present.any():
        strings = series[present].astype(str)
        filled = (strings.str.strip() != "").to_numpy(dtype=bool)
        out[np.flatnonzero(present)[filled]] = strings.to_numpy(dtype=object)[filled]
    return out


def _floats(values: pd.Series | np.ndarray | Sequence[Any]) -> np.ndarray:
    """float64 [n]; NaN where missing, non-numeric or non-finite."""
    if _plain(values, (int, float)):
        out = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64).reshape(-1)
        out[~np.isfinite(out)] = np.nan
        return out
    import pandas as pd

    series = pd.Series(values, copy=False)
    if not pd.api.types.is_numeric_dtype(series.dtype) or pd.api.types.is_bool_dtype(series.dtype):
        series = pd.to_numeric(series.astype(object), errors="coerce")
    out = np.array(series.to_numpy(dtype=np.float64, na_value=np.nan), dtype=np.float64, copy=True)
    out[~np.isfinite(out)] = np.nan
    return out


def _check_from_time(from_time: Sequence[str]) -> tuple[str, ...]:
    out = tuple(from_time)
    for feature in out:
        if feature not in FROM_TIME_FEATURES:
            raise ValueError(f"from-time feature must be one of {FROM_TIME_FEATURES}; got {feature!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"from-time features must not repeat; got {out}")
    return out


def _check_harmonics(harmonics: object) -> int:
    if not valid_harmonics(harmonics):
        raise ValueError(f"harmonics must be an integer in [1, {MAX_HARMONICS}]; got {harmonics!r}")
    return harmonics  # type: ignore[return-value]


def _columns(frame: pd.DataFrame | Mapping[str, Sequence[Any]]) -> Sequence[str]:
    """The column names of a DataFrame, or of a mapping column -> values."""
    return list(frame) if isinstance(frame, Mapping) else frame.columns


def _n_rows(frame: pd.DataFrame | Mapping[str, Sequence[Any]], time: np.ndarray | None) -> int:
    """Row count: the frame's, or the time array's when the frame is empty and column-less. A mapping's
    columns must all have one length."""
    if isinstance(frame, Mapping):
        lengths = {len(v) for v in frame.values()}
        if len(lengths) > 1:
            raise ValueError(f"context columns must have one length; got lengths {sorted(lengths)}")
        n = lengths.pop() if lengths else 0
    else:
        n = len(frame)
    if n == 0 and len(_columns(frame)) == 0 and time is not None:
        return int(np.shape(time)[0])
    return n


def _codes(vocabulary: tuple[str, ...], strings: np.ndarray) -> np.ndarray:
    """Position of each string in vocabulary (unique), -1 for None or a value outside it: int64 [n]."""
    if len(strings) <= _SMALL:
        lookup = {v: i for i, v in enumerate(vocabulary)}
        return np.array([lookup.get(s, -1) for s in strings], dtype=np.int64).reshape(-1)
    import pandas as pd

    return pd.Index(vocabulary, dtype=object).get_indexer(strings)


def _time_seconds(time: np.ndarray | None, n: int | None) -> np.ndarray:
    if time is None:
        raise ValueError("from-time features need the time array (Unix seconds)")
    seconds = np.asarray(time, dtype=np.int64)
    if seconds.ndim != 1 or (n is not None and seconds.shape[0] != n):
        raise ValueError(f"time must have shape ({n},); got {seconds.shape}")
    return seconds


class ContextEncoder:
    """Context columns -> float32 features. Fitted on the training split only; deterministic.

    Build with :meth:`fit` or :meth:`from_dict`; ``feature_names`` [dim] name the
    output columns of :meth:`transform`.
    """

    feature_names: tuple[str, ...]
    dim: int

    def __init__(self, fitted: Sequence[_Fitted], from_time: Sequence[str],
                 harmonics: int = DEFAULT_HARMONICS) -> None:
        self._fitted = tuple(fitted)
        self._from_time = _check_from_time(from_time)
        self.harmonics = _check_harmonics(harmonics)
        names: list[str] = []
        for column in self._fitted:
            names.extend(column.feature_names(self.harmonics))
        for feature in self._from_time:
            if feature == "hour":
                names.extend(cycle_names("hour", self.harmonics))
            elif feature == "weekday":
                names.extend(f"weekday={d}" for d in range(7))
            else:
                names.append("weekend")
        if len(set(names)) != len(names):
            dupes = sorted({x for x in names if names.count(x) > 1})
            raise ValueError(f"context feature names must be unique; repeated: {dupes}")
        self.feature_names = tuple(names)
        self.dim = len(names)

    # ------------------------------------------------------------------ fitting

    @classmethod
    def fit(
        cls,
        frame: pd.DataFrame | Mapping[str, Sequence[Any]],
        columns: Sequence[ContextColumn],
        from_time: Sequence[str],
        time: np.ndarray | None,
        harmonics: int = DEFAULT_HARMONICS,
    ) -> "ContextEncoder":
        """Fit on the training rows.

        ``frame`` [n rows] holds one column per context column (raw or parsed values);
        ``time`` int64 [n] Unix seconds (needed only with ``from_time``); ``harmonics``: Fourier orders of
        every cycle.
        """
        fitted: list[_Fitted] = []
        for column in columns:
            if column.kind not in CONTEXT_KINDS:
                raise ValueError(f"context column {column.name!r}: kind must be one of "
                                 f"{CONTEXT_KINDS}; got {column.kind!r}")
            if column.name not in _columns(frame):
                raise ValueError(f"context column {column.name!r} is not in the frame")
            values = frame[column.name]
            if column.kind == "categorical":
                if column.values is not None:  # declared: the public vocabulary, in declaration order
                    vocabulary = tuple(column.values)
                else:
                    strings = _category_strings(values)
                    vocabulary = tuple(sorted(set(strings[strings != None].tolist())))  # noqa: E711
                fitted.append(_Fitted(column.name, "categorical", vocabulary=vocabulary))
            elif column.kind == "numeric":
                numbers = _floats(values)
                numbers = numbers[~np.isnan(numbers)]
                mean = float(numbers.mean()) if numbers.size else 0.0
                std = float(numbers.std()) if numbers.size else 1.0
                if not math.isfinite(std) or std == 0.0:
                    std = 1.0
                mean = column.mean if column.mean is not None else mean
                std = column.std if column.std is not None else std
                fitted.append(_Fitted(column.name, "numeric", mean=mean, std=std))
            else:
                period = column.period
                if period is None or not math.isfinite(period) or period <= 0:
                    raise ValueError(f"cyclic context column {column.name!r} needs a positive "
                                     f"period; got {period!r}")
                fitted.append(_Fitted(column.name, "cyclic", period=float(period)))
        from_time = _check_from_time(from_time)
        if from_time:
            _time_seconds(time, _n_rows(frame, time))
        return cls(fitted, from_time, harmonics)

    @classmethod
    def declared(cls, columns: Sequence[ContextColumn], from_time: Sequence[str],
                 harmonics: int = DEFAULT_HARMONICS) -> "ContextEncoder":
        """The encoder a public declaration fixes, without any data: every categorical column needs its
        `values`, every numeric column its `mean` and `std`. Raises ValueError naming what is missing."""
        missing = [f"{c.name}: values" for c in columns if c.kind == "categorical" and c.values is None]
        missing += [f"{c.name}: mean, std" for c in columns
                    if c.kind == "numeric" and (c.mean is None or c.std is None)]
        if missing:
            raise ValueError("the context declaration is incomplete (" + "; ".join(missing) + ")")
        return cls.fit({c.name: [] for c in columns}, columns, from_time,
                       np.zeros(0, np.int64) if from_time else None, harmonics)

    def column_declarations(self) -> list[ContextColumn]:
        """This encoder as a complete declaration (values, mean/std, period fixed)."""
        return [ContextColumn(c.name, c.kind, c.period,
                              tuple(c.vocabulary) if c.kind == "categorical" else None,
                              c.mean if c.kind == "numeric" else None, c.std if c.kind == "numeric" else None)
                for c in self._fitted]

    def unknown_values(self, frame: pd.DataFrame) -> int:
        """Number of non-missing categorical cells of `frame` outside the vocabulary (encoded as zeros)."""
        n = 0
        for column in self._fitted:
            if column.kind == "categorical" and column.name in frame.columns:
                strings = _category_strings(frame[column.name])
                present = strings != None  # noqa: E711
                n += int((_codes(column.vocabulary, strings[present]) < 0).sum())
        return n

    # ------------------------------------------------------------------ transforming

    def transform(self, frame: pd.DataFrame | Mapping[str, Sequence[Any]], time: np.ndarray | None) -> np.ndarray:
        """Encode ``frame`` [n rows] (a DataFrame, or a mapping column -> list of n values) and ``time`` int64 [n]
        Unix seconds -> float32 [n, dim]."""
        n = _n_rows(frame, time)
        out = np.zeros((n, self.dim), dtype=np.float32)
        offset = 0
        for column in self._fitted:
            if column.name not in _columns(frame):
                raise ValueError(f"context column {column.name!r} is not in the frame")
            values = frame[column.name]
            width = len(column.feature_names(self.harmonics))
            if column.kind == "categorical":
                if width:
                    codes = _codes(column.vocabulary, _category_strings(values))
                    hit = np.flatnonzero(codes >= 0)
                    out[hit, offset + codes[hit]] = 1.0
            elif column.kind == "numeric":
                numbers = (_floats(values) - column.mean) / column.std
                out[:, offset] = np.nan_to_num(numbers, nan=0.0)
            else:
                _cycle(out, offset, 2.0 * np.pi * _floats(values) / column.period, self.harmonics)
            offset += width
        if self._from_time:
            seconds = _time_seconds(time, n)
            days = np.floor_divide(seconds, _SECONDS_PER_DAY)
            weekday = (days + _EPOCH_WEEKDAY) % 7
            for feature in self._from_time:
                if feature == "hour":
                    hours = np.mod(seconds, _SECONDS_PER_DAY) / 3600.0
                    _cycle(out, offset, 2.0 * np.pi * hours / 24.0, self.harmonics)
                    offset += 2 * self.harmonics
                elif feature == "weekday":
                    out[np.arange(n), offset + weekday] = 1.0
                    offset += 7
                else:
                    out[:, offset] = (weekday >= 5).astype(np.float32)
                    offset += 1
        return out

    # ------------------------------------------------------------------ (de)serialising

    @property
    def columns(self) -> tuple[ContextColumn, ...]:
        """The context columns this encoder reads, in feature order."""
        return tuple(ContextColumn(c.name, c.kind, c.period) for c in self._fitted)  # kinds only

    @property
    def from_time(self) -> tuple[str, ...]:
        """The time-derived features, in feature order."""
        return self._from_time

    def to_dict(self) -> dict:
        """JSON-able state (plain dicts, lists, strings and floats)."""
        columns: list[dict[str, Any]] = []
        for c in self._fitted:
            entry: dict[str, Any] = {"name": c.name, "kind": c.kind}
            if c.kind == "categorical":
                entry["vocabulary"] = list(c.vocabulary)
            elif c.kind == "numeric":
                entry["mean"] = float(c.mean)
                entry["std"] = float(c.std)
            else:
                entry["period"] = float(c.period)  # type: ignore[arg-type]
            columns.append(entry)
        return {"format": _FORMAT, "version": _VERSION, "columns": columns,
                "from_time": list(self._from_time), "harmonics": self.harmonics}

    @classmethod
    def from_dict(cls, d: dict) -> "ContextEncoder":
        """Inverse of :meth:`to_dict`; a version-1 document (written before the harmonics) has one harmonic."""
        if d.get("format") != _FORMAT or d.get("version") not in (1, _VERSION):
            raise ValueError(f"not a {_FORMAT} v1 or v{_VERSION} dict: "
                             f"format={d.get('format')!r}, version={d.get('version')!r}")
        fitted = []
        for entry in d["columns"]:
            kind = entry["kind"]
            if kind == "categorical":
                fitted.append(_Fitted(entry["name"], kind,
                                      vocabulary=tuple(str(v) for v in entry["vocabulary"])))
            elif kind == "numeric":
                fitted.append(_Fitted(entry["name"], kind, mean=float(entry["mean"]),
                                      std=float(entry["std"])))
            elif kind == "cyclic":
                fitted.append(_Fitted(entry["name"], kind, period=float(entry["period"])))
            else:
                raise ValueError(f"unknown context kind {kind!r}")
        return cls(fitted, d["from_time"], 1 if d["version"] == 1 else d["harmonics"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContextEncoder):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash((self._fitted, self._from_time, self.harmonics))

    def __repr__(self) -> str:
        return f"ContextEncoder(dim={self.dim}, features={list(self.feature_names)!r})"
