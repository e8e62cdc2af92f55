"""The dataset directory's description, ``dataset.toml``: its parsed form (:class:`DatasetSpec`), the
declared context columns, and :class:`DataError` (bad input, named by file, row, column, rule, value and fix).

Pure Python (``tomllib``), no pandas or pyarrow: the device commands read a dataset's spec without paying
their import. Reading the files themselves is ``common.data.loader``'s (which re-exports everything here); the format
is defined in ``docs/dataset-format.md``.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from common.errors import FedctxError

__all__ = ["DataError", "ContextColumn", "DatasetSpec", "read_spec", "CONTEXT_KINDS", "FROM_TIME_FEATURES",
           "DEFAULT_HARMONICS", "MAX_HARMONICS", "MAX_TIMESTAMP", "valid_harmonics"]

#: Allowed context column kinds.
CONTEXT_KINDS: tuple[str, ...] = ("categorical", "numeric", "cyclic")
#: Allowed ``from-time`` features, in their canonical order.
FROM_TIME_FEATURES: tuple[str, ...] = ("hour", "weekday", "weekend")
#: Fourier orders of every cycle (hour of day, cyclic columns) unless [context] harmonics says otherwise. One order is
#: a single smooth bump over the cycle and blurs a context that switches at set hours (a night, a commute); 4 is
#: Prophet's default for the daily cycle, and on the seed case as good as 12 (docs/results.md, "Eighth pass").
DEFAULT_HARMONICS: int = 4
#: The most [context] harmonics may ask for.
MAX_HARMONICS: int = 24

#: First Unix second after the year 2100 (2101-01-01T00:00:00Z); timestamps >= this are bad.
MAX_TIMESTAMP: int = 4_133_980_800

_DATASET_KEYS = ("name", "interactions", "items", "time-column", "label-column", "min-label")
_CONTEXT_KEYS = ("columns", "from-time", "harmonics", "fitted-on-private-rows")
_ID_COLUMNS = ("user_id", "item_id")
_FORMAT_DOC = "see docs/dataset-format.md"


def valid_harmonics(harmonics: object) -> bool:
    """An integer (not a bool) from 1 to MAX_HARMONICS: the orders a cycle may have."""
    return isinstance(harmonics, int) and not isinstance(harmonics, bool) and 1 <= harmonics <= MAX_HARMONICS


# --------------------------------------------------------------------------- errors


class _Null:
    """Marker for a null (missing) cell value in error messages."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "null (missing value)"


_NULL = _Null()


def _rebuild_data_error(
    file: str, rule: str, row: int | None, column: str | None, value: object, fix: str
) -> "DataError":
    return DataError(file, rule, row=row, column=column, value=value, fix=fix)


class DataError(FedctxError, ValueError):
    """Bad input: names the file, the row (1-based data row, header excluded) and/or column,
    the rule, the value found, and the fix.

    ``str(err)`` reads e.g.::

        interactions.csv: row 7, column 'user_id': user_id must be non-empty. Found ''.
        Fix: remove the row or fill in the user id.

    ``value=None`` means "no value to show".
    """

    def __init__(
        self,
        file: str | Path,
        rule: str,
        *,
        row: int | None = None,
        column: str | None = None,
        value: object = None,
        fix: str = "",
    ) -> None:
        self.file = str(file)
        self.rule = rule
        self.row = row
        self.column = column
        self.value = value
        self.fix = fix
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        text = f"{self.file}: " + (", ".join(where) + ": " if where else "")
        text += _sentence(self.rule)
        if self.value is not None:
            text += f" Found {self.value!r}."
        if self.fix:
            text += " Fix: " + _sentence(self.fix)
        return text

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_data_error,
            (self.file, self.rule, self.row, self.column, self.value, self.fix),
        )


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class ContextColumn:
    """A declared context column of the interactions file.

    ``kind`` is ``"categorical"``, ``"numeric"`` or ``"cyclic"``; ``period`` (same unit
    as the column values, > 0) is set only for cyclic columns. A public declaration may also
    fix ``values`` (categorical vocabulary) or ``mean``/``std`` (numeric scale); the server's
    schema needs them (see common.data.schema), a simulation derives missing ones from the data.
    """

    name: str
    kind: str
    period: float | None = None
    values: tuple[str, ...] | None = None
    mean: float | None = None
    std: float | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """Parsed ``dataset.toml``; file paths are resolved against ``root``."""

    root: Path
    name: str
    interactions_file: Path
    items_file: Path
    time_column: str | None
    label_column: str | None
    min_label: float | None
    context_columns: tuple[ContextColumn, ...]
    from_time: tuple[str, ...]
    harmonics: int = DEFAULT_HARMONICS  # [context] harmonics: Fourier orders of every cycle
    fitted: bool = False  # [context] fitted-on-private-rows: the values were fitted on interactions, not public


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_spec(root: str | Path, *, catalogue_only: bool = False) -> DatasetSpec:
    """Read and validate ``<root>/dataset.toml`` (``root`` may also be the TOML file itself).

    Raises :class:`DataError` (file = dataset.toml) for a missing/unparsable file,
    unknown keys, missing or mistyped values, bad context kinds, cyclic columns
    without a positive period, ``from-time`` without ``time-column``, and context
    columns that reuse the id/time/label column names.
    """
    toml_path, root, doc = _load_toml(Path(root))

    def err(rule: str, value: object = None, fix: str = "") -> DataError:
        return DataError(toml_path, rule, value=value, fix=fix or _FORMAT_DOC)

    for key in doc:
        if key not in ("dataset", "context"):
            raise err(f"unknown top-level key {key!r}", key,
                      "remove it; allowed tables are [dataset] and [context]")
    files = _dataset_table(doc.get("dataset"), root, catalogue_only, err)
    context = doc.get("context", {})
    fitted, from_time, columns = _context_table(context, files["time_column"], files["label_column"], err)
    harmonics = context.get("harmonics", DEFAULT_HARMONICS)
    if not valid_harmonics(harmonics):
        raise err(f"[context] harmonics must be an integer from 1 to {MAX_HARMONICS}", harmonics,
                  f"remove it for the default ({DEFAULT_HARMONICS}), or write e.g. harmonics = 4")
    return DatasetSpec(root=root, **files, context_columns=columns, from_time=from_time, harmonics=harmonics,
                       fitted=fitted)


def _load_toml(root: Path) -> tuple[Path, Path, dict]:
    """(path of dataset.toml, dataset directory, parsed document) of a directory or a TOML file."""
    if root.suffix == ".toml" and root.is_file():
        toml_path, root = root, root.parent
    else:
        toml_path = root / "dataset.toml"
    if not toml_path.is_file():
        raise DataError(
            toml_path,
            "dataset.toml must exist in the dataset directory",
            fix=f"create {toml_path} with a [dataset] table ({_FORMAT_DOC})",
        )
    try:
        with toml_path.open("rb") as handle:
            return toml_path, root, tomllib.load(handle)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise DataError(
            toml_path, "dataset.toml must be valid TOML", value=str(exc),
            fix="correct the TOML syntax at the reported line",
        ) from None


_Err = Callable[..., DataError]


def _dataset_table(dataset: object, root: Path, catalogue_only: bool, err: _Err) -> dict[str, Any]:
    """The [dataset] table checked: DatasetSpec's name, files, time and label columns and min-label."""
    if not isinstance(dataset, dict):
        raise err("a [dataset] table is required", dataset,
                  'add [dataset] with name, interactions and items')
    for key in dataset:
        if key not in _DATASET_KEYS:
            raise err(f"unknown key {key!r} in [dataset]", key,
                      f"remove it; allowed keys are {', '.join(_DATASET_KEYS)}")

    name = dataset.get("name", root.resolve().name)
    if not isinstance(name, str) or not name.strip():
        raise err("[dataset] name must be a non-empty string", name, 'e.g. name = "my-dataset"')

    def data_file(key: str) -> Path:
        value = dataset.get(key)
        if value is None:
            raise err(f"[dataset] {key} is required", None,
                      f'add {key} = "{key}.parquet" (or .csv), relative to the dataset directory')
        if not isinstance(value, str) or Path(value).suffix.lower() not in (".csv", ".parquet"):
            raise err(f"[dataset] {key} must be a .csv or .parquet file name", value,
                      f'e.g. {key} = "{key}.parquet"')
        return root / value

    # a server's catalogue directory may name no interactions file: the server never opens one
    interactions_file = (root / "(none)" if catalogue_only and dataset.get("interactions") is None
                         else data_file("interactions"))
    items_file = data_file("items")
    time_column = _column_key(dataset, "time-column", err)
    label_column = _column_key(dataset, "label-column", err)
    if time_column is not None and time_column == label_column:
        raise err("time-column and label-column must differ", time_column,
                  "name two different columns")
    min_label = dataset.get("min-label")
    if min_label is not None:
        if not _is_number(min_label) or not math.isfinite(min_label):
            raise err("[dataset] min-label must be a number", min_label, "e.g. min-label = 4.0")
        if label_column is None:
            raise err("min-label needs label-column", min_label,
                      "declare label-column, or remove min-label")
        min_label = float(min_label)
    return dict(name=name, interactions_file=interactions_file, items_file=items_file, time_column=time_column,
                label_column=label_column, min_label=min_label)


def _column_key(dataset: dict, key: str, err: _Err) -> str | None:
    """The column name [dataset] `key` declares (None if absent)."""
    value = dataset.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise err(f"[dataset] {key} must be a non-empty string", value,
                  f"give the column name, or remove {key}")
    if value in _ID_COLUMNS:
        raise err(f"[dataset] {key} must not be user_id or item_id", value,
                  "name the column that holds this value")
    return value


def _context_table(context: object, time_column: str | None, label_column: str | None,
                   err: _Err) -> tuple[bool, tuple[str, ...], tuple[ContextColumn, ...]]:
    """The [context] table checked: (fitted-on-private-rows, from-time features, declared columns)."""
    if not isinstance(context, dict):
        raise err("[context] must be a table", context, "write it as a [context] table")
    for key in context:
        if key not in _CONTEXT_KEYS:
            raise err(f"unknown key {key!r} in [context]", key,
                      f"remove it; allowed keys are {', '.join(_CONTEXT_KEYS)}")

    fitted = context.get("fitted-on-private-rows", False)
    if not isinstance(fitted, bool):
        raise err("[context] fitted-on-private-rows must be true or false", fitted,
                  "remove it once the values come from public knowledge")
    from_time = _from_time(context.get("from-time", []), err)
    if from_time and time_column is None:
        raise err("[context] from-time needs [dataset] time-column", from_time,
                  "declare time-column, or remove from-time")

    columns_raw = context.get("columns", {})
    if not isinstance(columns_raw, dict):
        raise err("[context] columns must be a table of column = kind", columns_raw,
                  'e.g. columns = { device = "categorical" }')
    reserved = {*_ID_COLUMNS, time_column, label_column} - {None}
    columns: list[ContextColumn] = []
    for col_name, decl in columns_raw.items():
        where = f"context column {col_name!r}"
        if col_name in reserved:
            raise err(f"{where} must not be user_id, item_id, the time column or the label column",
                      col_name, "remove it from [context] columns")
        if col_name in from_time:
            raise err(f"{where} clashes with the from-time feature of the same name", col_name,
                      "rename the column, or remove the feature from from-time")
        columns.append(_context_column(col_name, decl, where, err))
    return fitted, tuple(from_time), tuple(columns)


def _from_time(from_time_raw: object, err: _Err) -> list[str]:
    """[context] from-time checked: known features, each once."""
    if not isinstance(from_time_raw, list):
        raise err("[context] from-time must be a list", from_time_raw,
                  'e.g. from-time = ["hour", "weekday", "weekend"]')
    from_time: list[str] = []
    for feature in from_time_raw:
        if feature not in FROM_TIME_FEATURES:
            raise err(f"[context] from-time entries must be one of {', '.join(FROM_TIME_FEATURES)}",
                      feature, "remove or correct the entry")
        if feature in from_time:
            raise err("[context] from-time entries must not repeat", feature, "list it once")
        from_time.append(feature)
    return from_time


def _context_column(col_name: str, decl: object, where: str, err: _Err) -> ContextColumn:
    """One [context] columns entry (a kind, or a table of kind, period, values, mean, std) checked."""
    period: object = None
    extra: dict[str, Any] = {}
    if isinstance(decl, dict):
        for key in decl:
            if key not in ("kind", "period", "values", "mean", "std"):
                raise err(f"unknown key {key!r} in {where}", key,
                          'allowed keys are kind, period (cyclic), values (categorical), mean and std '
                          '(numeric)')
        kind = decl.get("kind")
        period = decl.get("period")
        extra = {k: decl[k] for k in ("values", "mean", "std") if k in decl}
    else:
        kind = decl
    if kind not in CONTEXT_KINDS:
        raise err(f"{where}: kind must be one of {', '.join(CONTEXT_KINDS)}", kind,
                  f'e.g. {col_name} = "categorical", or {col_name} = '
                  '{ kind = "cyclic", period = 24.0 }')
    if kind == "cyclic":
        if period is None:
            raise err(f"{where}: cyclic columns need a period", decl,
                      f'write {col_name} = {{ kind = "cyclic", period = <float> }}')
        if not _is_number(period) or not math.isfinite(period) or period <= 0:
            raise err(f"{where}: period must be a positive number", period,
                      "e.g. period = 24.0")
    elif period is not None:
        raise err(f"{where}: period is only allowed for cyclic columns", period,
                  "remove period, or use kind = \"cyclic\"")
    values = _declared_values(extra.get("values"), kind, where, err)
    for key in ("mean", "std"):
        if key in extra:
            if kind != "numeric":
                raise err(f"{where}: {key} is only allowed for numeric columns", extra[key], f"remove {key}")
            if not _is_number(extra[key]) or not math.isfinite(extra[key]) or (key == "std" and extra[key] <= 0):
                raise err(f"{where}: {key} must be a finite number" + (" > 0" if key == "std" else ""),
                          extra[key], f"e.g. {key} = {'1.0' if key == 'std' else '0.0'}")
    return ContextColumn(col_name, kind, float(period) if kind == "cyclic" else None, values,
                         float(extra["mean"]) if "mean" in extra else None,
                         float(extra["std"]) if "std" in extra else None)


def _declared_values(values: object, kind: str, where: str, err: _Err) -> tuple[str, ...] | None:
    """A categorical column's declared vocabulary checked (None if not declared)."""
    if values is None:
        return None
    if kind != "categorical":
        raise err(f"{where}: values is only allowed for categorical columns", values, "remove values")
    if (not isinstance(values, list) or not values
            or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values)):
        raise err(f"{where}: values must be a non-empty list of strings", values,
                  f'e.g. values = ["phone", "tablet"]')
    values = tuple(str(v) for v in values)
    if len(set(values)) != len(values):
        raise err(f"{where}: values must not repeat", list(values), "list each value once")
    return values
