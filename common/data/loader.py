"""Reading, validating, cleaning and splitting a dataset directory.

A dataset directory holds ``dataset.toml``, an interactions file and an items file
(CSV or Parquet); the format is defined in ``docs/dataset-format.md``.

:func:`load_dataset` turns such a directory into a :class:`PreparedDataset`:

1. structural problems raise :class:`DataError` (file, 1-based data row, column,
   rule, value found, fix);
2. dirty rows are cleaned and counted in ``PreparedDataset.cleaning``, each row
   under the first rule that removes it, in this order: ``bad_timestamps``,
   ``unknown_items``, ``below_min_label``, ``duplicate_rows``; then users with too
   few engagements are removed (``users_too_few_interactions`` counts users);
   item texts that are not valid UTF-8 (``non_utf8_texts``) or missing
   (``missing_texts``) are repaired / set to ``""`` and counted;
3. per user, engagements ordered by (time, file row) are split leave-last-out:
   last -> test, second-to-last -> val, the rest -> train;
4. context columns are encoded with a :class:`common.data.context.ContextEncoder`
   fitted on the train rows only.

All per-row work is vectorised (pyarrow / pandas / numpy). ``dataset.toml``'s parsed form and
:class:`DataError` live in ``common.data.spec`` (no pandas or pyarrow), re-exported here.
"""

from __future__ import annotations

import csv
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from common.data.spec import (  # noqa: F401 - re-exported: the spec is part of this module's interface
    _FORMAT_DOC,
    _ID_COLUMNS,
    _NULL,
    CONTEXT_KINDS,
    FROM_TIME_FEATURES,
    MAX_TIMESTAMP,
    ContextColumn,
    DataError,
    DatasetSpec,
    read_spec,
)

if TYPE_CHECKING:  # pragma: no cover - import cycle guard
    from common.data.context import ContextEncoder
    from common.data.schema import PublicSchema

__all__ = [
    "DataError",
    "ContextColumn",
    "DatasetSpec",
    "Interactions",
    "PreparedDataset",
    "read_spec",
    "load_dataset",
    "load_catalogue",
    "validate_dataset",
    "CONTEXT_KINDS",
    "FROM_TIME_FEATURES",
    "MAX_TIMESTAMP",
]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class Interactions:
    """A set of engagements; arrays are aligned, length ``n``.

    ``user`` int32 [n] dense user index; ``item`` int32 [n] dense item index
    (catalogue order); ``time`` int64 [n] Unix seconds, UTC (0 without a time
    column); ``context`` float32 [n, context_dim] encoded context.
    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    context: np.ndarray

    def __post_init__(self) -> None:
        user = np.asarray(self.user, dtype=np.int32)
        item = np.asarray(self.item, dtype=np.int32)
        time = np.asarray(self.time, dtype=np.int64)
        context = np.asarray(self.context, dtype=np.float32)
        n = user.shape[0]
        if user.ndim != 1 or item.shape != (n,) or time.shape != (n,):
            raise ValueError(
                f"user, item, time must be 1-D of equal length; got shapes "
                f"{user.shape}, {item.shape}, {time.shape}"
            )
        if context.ndim != 2 or context.shape[0] != n:
            raise ValueError(f"context must have shape [{n}, dim]; got {context.shape}")
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "item", item)
        object.__setattr__(self, "time", time)
        object.__setattr__(self, "context", context)

    def __len__(self) -> int:
        return int(self.user.shape[0])

    def select(self, index: np.ndarray) -> "Interactions":
        """Rows picked by a boolean mask [n] or an integer index array (any order)."""
        index = np.asarray(index)
        if index.dtype == bool and index.shape != (len(self),):
            raise ValueError(f"boolean mask must have shape ({len(self)},); got {index.shape}")
        return Interactions(
            user=self.user[index],
            item=self.item[index],
            time=self.time[index],
            context=self.context[index],
        )


@dataclass(frozen=True)
class PreparedDataset:
    """A cleaned, split and context-encoded dataset.

    ``train`` is sorted by (user, time, file row); ``val`` and ``test`` hold exactly
    one row per user, sorted by user. ``context_encoder`` is the encoder fitted on
    the train rows (JSON-able via ``to_dict``), to encode new contexts the same way.
    """

    name: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_texts: tuple[str, ...]
    context_names: tuple[str, ...]
    train: Interactions
    val: Interactions
    test: Interactions
    cleaning: dict[str, int]
    context_encoder: "ContextEncoder | None" = field(default=None, repr=False)

    @property
    def n_users(self) -> int:
        return int(len(self.user_ids))

    @property
    def n_items(self) -> int:
        return int(len(self.item_ids))

    @property
    def context_dim(self) -> int:
        return len(self.context_names)


# --------------------------------------------------------------------------- reading


def _csv_header(path: Path) -> list[str]:
    """Column names of a CSV file (first line, BOM stripped)."""
    try:
        with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as handle:
            return next(csv.reader(handle), [])
    except OSError as exc:
        raise DataError(path, "file must be readable", value=str(exc),
                        fix="check the path and the file permissions") from None


def _read_table(path: Path, role: str, required: list[str], binary: tuple[str, ...] = ()) -> pa.Table:
    """Read ``required`` columns of a CSV/Parquet file into an Arrow table.

    CSV cells are read as strings (empty cell -> ``""``, never null), columns in
    ``binary`` as raw bytes. Raises DataError for a missing/unreadable file or
    missing columns.
    """
    if not path.is_file():
        raise DataError(path, f"the {role} file declared in dataset.toml must exist",
                        fix=f"create {path.name} or correct the file name in dataset.toml")
    is_csv = path.suffix.lower() == ".csv"
    if is_csv:
        names = _csv_header(path)
    else:
        try:
            names = list(pq.read_schema(path).names)
        except Exception as exc:  # noqa: BLE001 - any pyarrow failure means unreadable
            raise DataError(path, "file must be a readable Parquet file", value=str(exc),
                            fix="rewrite the file as Parquet, or declare a .csv file") from None
    for column in required:
        if column not in names:
            raise DataError(path, f"required column {column!r} is missing", column=column,
                            value=names, fix=f"add a {column!r} column ({_FORMAT_DOC})")
    try:
        if not is_csv:
            return pq.read_table(path, columns=required)
        convert = pa_csv.ConvertOptions(
            include_columns=required,
            column_types={c: (pa.binary() if c in binary else pa.string()) for c in required},
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        )
        # Free text may hold quoted newlines: parse it with the (slower) newline-aware reader.
        # Other files try the fast multi-threaded reader first.
        if not binary:
            try:
                return pa_csv.read_csv(
                    path, parse_options=pa_csv.ParseOptions(newlines_in_values=False),
                    convert_options=convert)
            except pa.ArrowInvalid:
                pass
        try:
            return pa_csv.read_csv(path, parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                                   convert_options=convert)
        except pa.ArrowInvalid as exc:
            if "straddl" not in str(exc):
                raise
            # one field longer than Arrow's read block (1 MB by default): read the file as one block
            block = min(max(path.stat().st_size + 1, 1 << 20), 2**31 - 1)
            return pa_csv.read_csv(path, read_options=pa_csv.ReadOptions(block_size=block),
                                   parse_options=pa_csv.ParseOptions(newlines_in_values=True),
                                   convert_options=convert)
    except Exception as exc:  # noqa: BLE001
        kind = "CSV (UTF-8, comma-separated, one header line)" if is_csv else "Parquet"
        if is_csv and "utf8" in str(exc).lower():
            row = _non_utf8_row(path)
            raise DataError(path, "every cell must be UTF-8 text", row=row, value=str(exc),
                            fix="re-export the file as UTF-8 (e.g. iconv -f latin1 -t utf-8), or correct the row"
                            ) from None
        row = _ragged_csv_row(path, len(names)) if is_csv else None
        raise DataError(path, f"file must be a readable {kind} file", row=row, value=str(exc),
                        fix="correct the reported row or re-export the file") from None


def _non_utf8_row(path: Path) -> int | None:
    """1-based data row (after the header) holding bytes that are not UTF-8. Error path only."""
    with path.open("rb") as f:
        for number, line in enumerate(f):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number if number > 0 else None
    return None


def _ragged_csv_row(path: Path, n_columns: int) -> int | None:
    """1-based data row (blank lines not counted) whose field count differs from the header.

    Error path only: scans the file with the ``csv`` module.
    """
    try:
        with path.open("r", encoding="utf-8-sig", errors="replace", newline="") as handle:
            reader = csv.reader(handle)
            next(reader, None)
            row = 0
            for fields in reader:
                if not fields:
                    continue
                row += 1
                if len(fields) != n_columns:
                    return row
    except (OSError, csv.Error):
        return None
    return None


def _first(mask: np.ndarray) -> int:
    """Index of the first True in a boolean array."""
    return int(np.argmax(mask))


def _cell(col: pa.ChunkedArray, index: int) -> object:
    value = col[index].as_py()
    return _NULL if value is None else value


def _as_strings(col: pa.ChunkedArray, path: Path, name: str) -> pa.ChunkedArray:
    """Any Arrow column -> string column (ints as "7", integral floats as "7"), nulls kept."""
    typ = col.type
    if pa.types.is_dictionary(typ):
        col = col.cast(typ.value_type)
        typ = col.type
    if pa.types.is_string(typ):
        return col
    try:
        if pa.types.is_floating(typ):
            values = col.to_numpy(zero_copy_only=False)
            finite = values[np.isfinite(values)]
            if np.array_equal(finite, np.floor(finite)) and np.all(np.abs(finite) < 2**62):
                col = col.cast(pa.int64())
        return col.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataError(path, f"column {name!r} must hold text or integers", column=name,
                        value=str(exc), fix="store the column as strings") from None


def _blank(col: pa.ChunkedArray) -> np.ndarray:
    """bool [n]: cell is null, empty or whitespace only (``col`` is a string column)."""
    trimmed = pc.utf8_trim_whitespace(col.fill_null(""))
    return pc.equal(trimmed, "").to_numpy(zero_copy_only=False)


def _ids(table: pa.Table, path: Path, name: str, what: str) -> pd.Series:
    """Validated, non-empty string ids of column ``name``: pandas str Series [n]."""
    col = _as_strings(table.column(name), path, name)
    blank = _blank(col)
    if blank.any():
        i = _first(blank)
        raise DataError(path, f"{name} must be non-empty", row=i + 1, column=name,
                        value=_cell(col, i), fix=f"remove the row or fill in the {what} id")
    return col.to_pandas()


def _numbers(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Parse a column as float64.

    Returns ``(values [n] float64, unparsable [n] bool)``: values are NaN where the
    cell is missing (null/blank) or unparsable; ``unparsable`` marks non-blank cells
    that are not numbers. Numeric/boolean columns are taken as they are.
    """
    typ = col.type
    if pa.types.is_dictionary(typ):
        col = col.cast(typ.value_type)
        typ = col.type
    n = len(col)
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ) \
            or pa.types.is_decimal(typ):
        values = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        return np.asarray(values, dtype=np.float64), np.zeros(n, dtype=bool)
    if pa.types.is_binary(typ) or pa.types.is_large_binary(typ) or pa.types.is_large_string(typ):
        col = col.cast(pa.string())
    if not pa.types.is_string(col.type):
        return np.full(n, np.nan), ~col.is_null().to_numpy(zero_copy_only=False)
    trimmed = pc.utf8_trim_whitespace(col)
    blank = pc.equal(trimmed.fill_null(""), "").to_numpy(zero_copy_only=False)
    as_null = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)
    try:
        values = as_null.cast(pa.float64()).to_numpy(zero_copy_only=False)
        values = np.asarray(values, dtype=np.float64)
        return values, np.zeros(n, dtype=bool)
    except pa.ArrowInvalid:
        # Slow path, only when some cell is not a plain number: pandas parses with coercion.
        values = pd.to_numeric(as_null.to_pandas(), errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan)
        return values, np.isnan(values) & ~blank


def _timestamps(col: pa.ChunkedArray) -> np.ndarray:
    """Time column -> float64 [n] Unix seconds (NaN where unparsable/missing)."""
    typ = col.type
    if pa.types.is_timestamp(typ):
        per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[typ.unit]
        raw = col.cast(pa.int64()).to_numpy(zero_copy_only=False)
        raw = np.asarray(raw, dtype=np.float64)  # nulls -> NaN
        return np.floor(raw / per_second)
    values, _ = _numbers(col)
    return values


def _read_items(spec: DatasetSpec) -> tuple[np.ndarray, tuple[str, ...], int, int]:
    """Items file -> (item_ids [n_items] str, texts, n_non_utf8_texts, n_missing_texts)."""
    path = spec.items_file
    table = _read_table(path, "items", ["item_id", "text"], binary=("text",))
    ids = _ids(table, path, "item_id", "item")
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any():
        i = _first(dup)
        first = int(np.flatnonzero((ids == ids.iloc[i]).to_numpy())[0])
        raise DataError(path, f"item_id must be unique (row {first + 1} has the same id)",
                        row=i + 1, column="item_id", value=ids.iloc[i],
                        fix="remove or merge the duplicate item")

    col = table.column("text")
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    non_utf8 = 0
    if pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
        try:
            col = col.cast(pa.string())
            texts = col.fill_null("").to_pylist()
        except pa.ArrowInvalid:
            # Slow path, only when some text is not valid UTF-8.
            texts = []
            for raw in col.to_pylist():
                if raw is None:
                    texts.append("")
                    continue
                try:
                    texts.append(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    texts.append(raw.decode("utf-8", errors="replace"))
                    non_utf8 += 1
    elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        texts = col.fill_null("").to_pylist()
    else:
        texts = _as_strings(col, path, "text").fill_null("").to_pylist()
    n_missing = texts.count("")  # nulls were filled with "" above
    item_ids = ids.to_numpy(dtype=str)
    return item_ids, tuple(texts), non_utf8, n_missing


@dataclass
class _RawInteractions:
    """Interactions columns after structural validation (all arrays length n, file order)."""

    user: pd.Series
    item: pd.Series
    time: np.ndarray | None  # float64 Unix seconds, NaN where unparsable
    label: np.ndarray | None  # float64
    context: pd.DataFrame  # parsed context columns


#: the largest magnitude a context number may have (features are float32)
_FLOAT32_MAX = float(np.finfo(np.float32).max)

#: at most this many distinct values in a categorical context column (one-hot features)
MAX_CATEGORIES = 1000


def _read_interactions(spec: DatasetSpec) -> _RawInteractions:
    path = spec.interactions_file
    required = list(_ID_COLUMNS)
    for extra in (spec.time_column, spec.label_column, *(c.name for c in spec.context_columns)):
        if extra is not None and extra not in required:
            required.append(extra)
    table = _read_table(path, "interactions", required)
    user = _ids(table, path, "user_id", "user")
    item = _ids(table, path, "item_id", "item")

    time = _timestamps(table.column(spec.time_column)) if spec.time_column else None

    label = None
    if spec.label_column is not None:
        label, _ = _numbers(table.column(spec.label_column))
        bad = ~np.isfinite(label)
        if bad.any():
            i = _first(bad)
            raise DataError(path, f"label column {spec.label_column!r} must hold finite numbers",
                            row=i + 1, column=spec.label_column,
                            value=_cell(table.column(spec.label_column), i),
                            fix="fill in a numeric label or remove the row")

    context: dict[str, Any] = {}
    for column in spec.context_columns:
        col = table.column(column.name)
        if column.kind == "categorical":
            strings = _as_strings(col, path, column.name)
            values = strings.to_pandas()
            context[column.name] = values.where(~_blank(strings), None)
            continue
        values, unparsable = _numbers(col)
        with np.errstate(invalid="ignore"):
            bad = unparsable | np.isinf(values) | (np.abs(values) > _FLOAT32_MAX)
        if bad.any():
            i = _first(bad)
            raise DataError(path, f"{column.kind} context column {column.name!r} must hold "
                            "finite numbers within +-3.4e38 (or be empty)", row=i + 1, column=column.name,
                            value=_cell(col, i),
                            fix="correct the value, leave it empty, or declare the column "
                                "categorical in dataset.toml")
        if len(values) and np.isnan(values).all():
            raise DataError(path, f"{column.kind} context column {column.name!r} has no value in any row",
                            column=column.name, value="all empty or NaN",
                            fix="fill the column, or remove it from [context] in dataset.toml")
        context[column.name] = values  # NaN (empty or a literal NaN) is a missing value: encoded as 0
    for column in spec.context_columns:
        if column.kind == "categorical" and column.values is None:
            distinct = context[column.name].nunique(dropna=True)
            if distinct > MAX_CATEGORIES:
                raise DataError(path, f"categorical context column {column.name!r} has {distinct:,} distinct "
                                f"values, more than {MAX_CATEGORIES:,} (each becomes a feature of every row)",
                                column=column.name, value=distinct,
                                fix="group rare values (e.g. into 'other'), declare the column numeric if it is "
                                    "a quantity, or leave it out of [context]")
    return _RawInteractions(user, item, time, label, pd.DataFrame(context, index=user.index))


# --------------------------------------------------------------------------- loading


def load_catalogue(root: str | Path) -> tuple[DatasetSpec, np.ndarray, tuple[str, ...]]:
    """What a server may read of a dataset directory: dataset.toml and the items file (never the
    interactions). Returns (spec, item_ids [n_items] str, texts)."""
    spec = read_spec(root, catalogue_only=True)
    item_ids, item_texts, _, _ = _read_items(spec)
    if len(item_ids) == 0:
        raise DataError(spec.items_file, "the item catalogue must hold at least one item", value=0,
                        fix="add item rows (item_id, text) below the header")
    return spec, item_ids, item_texts


def load_dataset(root: str | Path, *, min_user_interactions: int = 3, schema: "PublicSchema | None" = None
                 ) -> PreparedDataset:
    """Read, validate, clean, split and context-encode the dataset at ``root``.

    ``min_user_interactions`` (>= 2): users with fewer engagements after cleaning
    are removed. Raises :class:`DataError` on structural problems (see module doc).
    With ``schema`` (a node's load): the item index is the schema's catalogue (the local items
    file is not read), the context columns are the schema's and are encoded with its encoder
    (nothing is fitted); rows with items outside the catalogue are dropped (``unknown_items``)
    and categorical values outside the vocabulary count in ``unknown_context_values``.
    """
    if isinstance(min_user_interactions, bool) or not isinstance(min_user_interactions, int) \
            or min_user_interactions < 2:
        raise ValueError("min_user_interactions must be an int >= 2 (each user needs a val and "
                         f"a test engagement); got {min_user_interactions!r}")
    spec, item_ids, item_texts, texts = _spec_and_items(root, schema)
    raw = _read_interactions(spec)
    if len(raw.user) == 0:
        raise DataError(spec.interactions_file, "there must be at least one interaction", value=0,
                        fix="add engagement rows below the header")
    keep, time, item_index, cleaning = _clean(raw, spec, item_ids, texts)
    _drop_small_users(raw, keep, cleaning, min_user_interactions, spec.interactions_file)

    rows = np.flatnonzero(keep)
    user_dense, user_index = pd.factorize(raw.user.iloc[rows], sort=True)
    user_dense = user_dense.astype(np.int64)
    order = np.lexsort((rows, time[rows], user_dense))  # by user, then time, then file row
    rows = rows[order]
    user_sorted = user_dense[order]

    per_user = np.bincount(user_sorted, minlength=len(user_index))
    ends = np.cumsum(per_user)
    from_end = ends[user_sorted] - 1 - np.arange(len(rows))
    is_test, is_val, is_train = from_end == 0, from_end == 1, from_end >= 2

    time_sorted = time[rows]
    encoder, encoded = _encode_context(raw.context.iloc[rows].reset_index(drop=True), time_sorted, is_train, spec,
                                       schema, cleaning)
    everything = Interactions(
        user=user_sorted.astype(np.int32),
        item=item_index[rows].astype(np.int32),
        time=time_sorted,
        context=encoded,
    )
    return PreparedDataset(
        name=spec.name,
        user_ids=np.asarray(user_index.to_numpy(dtype=str)),
        item_ids=item_ids,
        item_texts=item_texts,
        context_names=encoder.feature_names,
        train=everything.select(is_train),
        val=everything.select(is_val),
        test=everything.select(is_test),
        cleaning=cleaning,
        context_encoder=encoder,
    )


def _spec_and_items(root: str | Path, schema: "PublicSchema | None"
                    ) -> tuple[DatasetSpec, np.ndarray, tuple[str, ...], dict[str, int]]:
    """(spec, item_ids [n_items], texts, cleaning counts of the items file) of a dataset directory; with a
    schema, its catalogue and context columns replace the local ones."""
    spec = read_spec(root)
    if schema is not None:
        if schema.context.from_time and spec.time_column is None:
            raise DataError(spec.root / "dataset.toml", "the server's schema derives context from the time "
                            "column, so this dataset must declare time-column", value=list(schema.context.from_time),
                            fix="add time-column = \"<column of Unix seconds>\" to [dataset]")
        spec = dataclasses.replace(spec, context_columns=schema.context.columns,
                                   from_time=schema.context.from_time)
        item_ids, item_texts, non_utf8, missing_texts = np.asarray(schema.item_ids, dtype=str), (), 0, 0
    else:
        item_ids, item_texts, non_utf8, missing_texts = _read_items(spec)
        if len(item_ids) == 0:
            raise DataError(spec.items_file, "the item catalogue must hold at least one item", value=0,
                            fix="add item rows (item_id, text) below the header")
    return spec, item_ids, item_texts, {"non_utf8_texts": non_utf8, "missing_texts": missing_texts}


def _clean(raw: _RawInteractions, spec: DatasetSpec, item_ids: np.ndarray, texts: dict[str, int]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Drops bad timestamps, unknown items, labels below min-label and duplicates. texts: the items file's
    counts, for the report. Returns (keep [n] bool, time [n] int64, item_index [n], cleaning report)."""
    n = len(raw.user)
    keep = np.ones(n, dtype=bool)
    cleaning: dict[str, int] = {}

    def drop(rule: str, mask: np.ndarray) -> None:
        cleaning[rule] = int(np.count_nonzero(keep & mask))
        keep[mask] = False

    if raw.time is not None:
        t = raw.time
        with np.errstate(invalid="ignore"):
            bad_time = ~np.isfinite(t) | (t < 0) | (t >= MAX_TIMESTAMP) | (t != np.floor(t))
        drop("bad_timestamps", bad_time)
        time = np.where(bad_time, 0.0, t).astype(np.int64)
    else:
        cleaning["bad_timestamps"] = 0
        time = np.zeros(n, dtype=np.int64)

    item_index = pd.Index(item_ids).get_indexer(raw.item)
    drop("unknown_items", item_index < 0)

    if raw.label is not None and spec.min_label is not None:
        drop("below_min_label", raw.label < spec.min_label)
    else:
        cleaning["below_min_label"] = 0

    user_code, _ = pd.factorize(raw.user)
    rows = np.flatnonzero(keep)
    # a duplicate is the same user, item, time and context (rows that differ in context are distinct engagements)
    key = pd.DataFrame({"u": user_code[rows], "i": item_index[rows], "t": time[rows]})
    for name in raw.context.columns:
        key[f"c:{name}"] = raw.context[name].iloc[rows].to_numpy()
    dup = key.duplicated(keep="first").to_numpy()
    dup_mask = np.zeros(n, dtype=bool)
    dup_mask[rows[dup]] = True
    drop("duplicate_rows", dup_mask)
    cleaning.update(texts)
    cleaning["missing_numeric_context"] = int(sum(  # empty or NaN cells of numeric columns: encoded as missing (0)
        np.isnan(raw.context[c.name].to_numpy(np.float64)[keep]).sum()
        for c in spec.context_columns if c.kind == "numeric" and c.name in raw.context.columns))

    if not keep.any():
        raise DataError(
            spec.interactions_file, "there must be at least one usable interaction after cleaning",
            value=dict(cleaning),
            fix="check the time column holds integer Unix seconds, that item ids match the items "
                "file, and min-label",
        )
    return keep, time, item_index, cleaning


def _drop_small_users(raw: _RawInteractions, keep: np.ndarray, cleaning: dict[str, int], min_user_interactions: int,
                      path: Path) -> None:
    """Clears `keep` for users with fewer than min_user_interactions kept rows (counted in `cleaning`)."""
    user_code, _ = pd.factorize(raw.user)
    counts = np.bincount(user_code[keep], minlength=int(user_code.max()) + 1)
    too_few = (counts > 0) & (counts < min_user_interactions)
    cleaning["users_too_few_interactions"] = int(np.count_nonzero(too_few))
    keep &= ~too_few[user_code]
    if not keep.any():
        raise DataError(
            path, f"at least one user must have {min_user_interactions} or more usable "
                  "interactions after cleaning", value=dict(cleaning),
            fix=f"each user needs {min_user_interactions} engagements (training, validation and test); add "
                "interactions, or check that item ids and timestamps survive the cleaning above",
        )


def _encode_context(context_frame: pd.DataFrame, time_sorted: np.ndarray, is_train: np.ndarray, spec: DatasetSpec,
                    schema: "PublicSchema | None", cleaning: dict[str, int]) -> tuple["ContextEncoder", np.ndarray]:
    """(encoder, encoded context [n, context_dim]) of the sorted rows: the schema's encoder (its unknown
    categorical values counted in `cleaning`), or one fitted on the training rows."""
    from common.data.context import ContextEncoder  # local import: context imports this module

    if schema is not None:
        encoder = schema.context
        cleaning["unknown_context_values"] = encoder.unknown_values(context_frame)
    else:
        encoder = ContextEncoder.fit(
            context_frame.loc[is_train].reset_index(drop=True), spec.context_columns,
            spec.from_time, time_sorted[is_train] if spec.time_column else None, spec.harmonics,
        )
    return encoder, encoder.transform(context_frame, time_sorted if spec.time_column else None)


def validate_dataset(root: str | Path) -> dict:
    """Load the dataset at ``root`` and return a JSON-able report.

    Keys: name, n_users, n_items, n_interactions {train, val, test, total},
    context_names, cleaning. Raises :class:`DataError` on structural problems.
    """
    data = load_dataset(root)
    sizes = {"train": len(data.train), "val": len(data.val), "test": len(data.test)}
    return {
        "name": data.name,
        "n_users": data.n_users,
        "n_items": data.n_items,
        "n_interactions": {**sizes, "total": sum(sizes.values())},
        "context_names": list(data.context_names),
        "cleaning": dict(data.cleaning),
    }
