"""Import MovieLens ml-100k, ml-1m and ml-latest-small into the dataset format.

The variant is detected from the files in the source directory:

=================  ===========================================  ==========  ========
variant            files                                        separator   encoding
=================  ===========================================  ==========  ========
ml-100k            ``u.data``, ``u.item``, ``u.genre``          tab, ``|``  latin-1
ml-1m              ``ratings.dat``, ``movies.dat``              ``::``      latin-1
ml-latest-small    ``ratings.csv``, ``movies.csv`` [``tags.csv``]  CSV      UTF-8
=================  ===========================================  ==========  ========

Output (see ``docs/dataset-format.md``):

* ``interactions``: ``user_id`` (int64), ``item_id`` (int64), ``timestamp``
  (int64 Unix seconds), ``rating`` (float64), sorted by (user_id, timestamp,
  item_id). Every rating is an engagement (no ``min-label``).
* ``items``: every movie of the movie file, sorted by ``item_id``, with ``text`` =
  title, then genre names as words (``"Children's"``, ``"Sci-Fi"``; the
  placeholders ``"unknown"`` and ``"(no genres listed)"`` are left out), then for
  ml-latest-small the movie's distinct tags in file order, joined by spaces.

Malformed lines raise :class:`ValueError` naming the file and the 1-based line
number (files hold one record per line).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from common.io import write_dataset

__all__ = ["VARIANTS", "detect_variant", "read_movielens", "import_movielens"]

#: Variant name -> files that identify it (all must be present).
VARIANTS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "ml-100k": ("u.data", "u.item", "u.genre"),
        "ml-1m": ("ratings.dat", "movies.dat"),
        "ml-latest-small": ("ratings.csv", "movies.csv"),
    }
)
_OPTIONAL: Mapping[str, tuple[str, ...]] = MappingProxyType({"ml-latest-small": ("tags.csv",)})
_NO_GENRE = frozenset({"unknown", "(no genres listed)"})
_UNIT_SEP = "\x1f"


@dataclass(frozen=True)
class _Table:
    """Raw string fields of a file plus the source line number of each row."""

    path: Path
    frame: pd.DataFrame  # str columns
    line: np.ndarray  # int [rows], 1-based line number in ``path``

    def fail(self, row: int, what: str) -> ValueError:
        return ValueError(f"{self.path}: line {int(self.line[row])}: {what}")

    def _cast(self, column: str, dtype: pa.DataType) -> np.ndarray | None:
        """Fast path: the whole column cast by Arrow, or None if any field fails."""
        try:
            trimmed = pc.utf8_trim_whitespace(pa.array(self.frame[column], type=pa.string()))
            return pc.cast(trimmed, dtype).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            return None

    def integers(self, column: str) -> np.ndarray:
        """Column parsed as int64 [rows]; ValueError at the first non-integer field."""
        fast = self._cast(column, pa.int64())
        if fast is not None:
            return fast.astype(np.int64)
        raw = self.frame[column]
        values = pd.to_numeric(raw.str.strip(), errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(values) | (values % 1 != 0)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise self.fail(row, f"{column} is not an integer: {raw.iloc[row]!r}")
        return values.astype(np.int64)

    def floats(self, column: str) -> np.ndarray:
        """Column parsed as float64 [rows]; ValueError at the first non-finite field."""
        values = self._cast(column, pa.float64())
        if values is None:
            parsed = pd.to_numeric(self.frame[column].str.strip(), errors="coerce")
            values = parsed.to_numpy(dtype=float)
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise self.fail(row, f"{column} is not a number: {self.frame[column].iloc[row]!r}")
        return values.astype(np.float64)


def _read_delimited(path: Path, sep: str, names: list[str], encoding: str) -> _Table:
    """Read an unquoted ``sep``-separated file without header; blank lines skipped.

    Every non-blank line must have exactly ``len(names)`` fields.
    """
    text = path.read_text(encoding=encoding)
    if len(sep) > 1:
        if _UNIT_SEP in text:
            line = text.count("\n", 0, text.index(_UNIT_SEP)) + 1
            raise ValueError(f"{path}: line {line}: unexpected control character \\x1f")
        text = text.replace(sep, _UNIT_SEP)
        sep = _UNIT_SEP
    lines = pd.Series(text.split("\n"), dtype="str")
    keep = (lines.str.strip() != "").to_numpy()
    line_no = np.flatnonzero(keep) + 1
    kept = lines[keep]
    n_fields = kept.str.count(re.escape(sep)).to_numpy() + 1
    bad = n_fields != len(names)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{path}: line {int(line_no[row])}: expected {len(names)} fields separated by "
            f"{'::' if sep == _UNIT_SEP else repr(sep)}, found {int(n_fields[row])}"
        )
    if len(kept) == 0:
        empty = pd.DataFrame({name: pd.Series([], dtype="str") for name in names})
        return _Table(path, empty, line_no)
    frame = pd.read_csv(
        io.StringIO("\n".join(kept.tolist())),
        sep=sep,
        header=None,
        names=names,
        dtype="str",
        quoting=csv.QUOTE_NONE,
        na_filter=False,
        skip_blank_lines=False,
        engine="c",
    )
    return _Table(path, frame, line_no)


def _read_csv(path: Path, names: list[str]) -> _Table:
    """Read a UTF-8 CSV file whose header must be ``names``; blank lines skipped."""
    try:
        frame = pd.read_csv(
            path,
            dtype="str",
            keep_default_na=False,
            na_filter=False,
            skip_blank_lines=False,
            encoding="utf-8",
            engine="c",
        )
    except pd.errors.ParserError as exc:
        detail = " ".join(str(exc).split())
        where = re.search(r"line (\d+)", detail)
        prefix = f"{path}: line {where.group(1)}" if where else str(path)
        raise ValueError(f"{prefix}: malformed CSV ({detail})") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not valid UTF-8 ({exc})") from exc
    except pd.errors.EmptyDataError as exc:
        expected = ",".join(names)
        raise ValueError(f"{path}: line 1: empty file, expected header {expected}") from exc
    if list(frame.columns) != names:
        found = ",".join(map(str, frame.columns))
        raise ValueError(f"{path}: line 1: expected header {','.join(names)}, found {found}")
    line_no = np.arange(len(frame)) + 2  # header is line 1
    blank = (frame == "").all(axis=1).to_numpy()
    return _Table(path, frame[~blank].reset_index(drop=True), line_no[~blank])


def detect_variant(src: Path) -> str:
    """Name of the MovieLens variant laid out in directory ``src``.

    Raises :class:`FileNotFoundError` if ``src`` is not a directory and
    :class:`ValueError` if no (or more than one) known layout matches.
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"MovieLens source {str(src)!r} is not a directory")
    found = sorted(p.name for p in src.iterdir() if p.is_file())
    matches = [v for v, files in VARIANTS.items() if set(files) <= set(found)]
    if len(matches) == 1:
        return matches[0]
    expected = "; ".join(
        f"{v}: {', '.join(files + tuple(f'{o} (optional)' for o in _OPTIONAL.get(v, ())))}"
        for v, files in VARIANTS.items()
    )
    problem = "matches several MovieLens layouts" if matches else "is not a known MovieLens layout"
    raise ValueError(
        f"Directory {str(src)!r} {problem}. Files found: {', '.join(found) or '(none)'}. "
        f"Expected the files of one of: {expected}."
    )


#: MovieLens ratings start in 1995 (GroupLens); an earlier timestamp is a damaged line (e.g. a file cut short)
FIRST_RATING_TIME = 788_918_400  # 1995-01-01 UTC


def _ratings(table: _Table, user: str, item: str, rating: str, time: str) -> pd.DataFrame:
    """The ratings file's columns; an empty file, or a timestamp before 1995, is an error naming the line."""
    if len(table.frame) == 0:
        raise ValueError(f"{table.path}: the ratings file holds no rating; the download may be incomplete. Fix: "
                         f"download and unpack the release again")
    timestamps = table.integers(time)
    early = timestamps < FIRST_RATING_TIME
    if early.any():
        row = int(np.flatnonzero(early)[0])
        raise table.fail(row, f"{time} {int(timestamps[row])} is before 1995, when MovieLens ratings begin; the "
                              f"line is damaged (a file cut short ends like this). Fix: download and unpack the "
                              f"release again")
    return pd.DataFrame(
        {
            "user_id": table.integers(user),
            "item_id": table.integers(item),
            "timestamp": timestamps,
            "rating": table.floats(rating),
        }
    )


def _join_words(*parts: pd.Series) -> pd.Series:
    """Space-join string Series element-wise, skipping empty parts; str."""
    out = parts[0].str.strip()
    for part in parts[1:]:
        part = part.str.strip()
        out = (out + " " + part).where(part != "", out).str.strip()
    return out.str.replace(r"\s+", " ", regex=True)


def _genre_words(genres: pd.Series) -> pd.Series:
    """``"A|B"`` -> ``"A B"`` without placeholder genres; str."""
    tokens = genres.str.split("|", regex=False).explode()
    tokens = tokens.where(~tokens.isin(_NO_GENRE) & tokens.notna(), "")
    tokens = tokens[tokens.str.strip() != ""]
    joined = tokens.groupby(level=0).agg(" ".join)
    return joined.reindex(genres.index, fill_value="").astype("str")


def _items(table: _Table, ids: np.ndarray, text: pd.Series) -> pd.DataFrame:
    duplicated = pd.Series(ids).duplicated().to_numpy()
    if duplicated.any():
        row = int(np.flatnonzero(duplicated)[0])
        raise table.fail(row, f"duplicate movie id {int(ids[row])}")
    items = pd.DataFrame({"item_id": ids, "text": text.to_numpy()})
    items["text"] = items["text"].astype("str")
    return items.sort_values("item_id", kind="stable").reset_index(drop=True)


def _read_100k(src: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    genre = _read_delimited(src / "u.genre", "|", ["name", "index"], "latin-1")
    order = genre.integers("index")
    if sorted(order.tolist()) != list(range(len(order))):
        raise ValueError(
            f"{genre.path}: genre indices must be 0..{len(order) - 1}, found {order.tolist()}"
        )
    names = genre.frame["name"].to_numpy()[np.argsort(order)]

    flags = [f"g{j}" for j in range(len(names))]
    movies = _read_delimited(
        src / "u.item", "|", ["id", "title", "release", "video", "url", *flags], "latin-1"
    )
    genre_text = pd.Series("", index=movies.frame.index, dtype="str")
    for j, name in enumerate(names):
        flag = movies.integers(flags[j])
        bad = (flag != 0) & (flag != 1)
        if bad.any():
            raise movies.fail(int(np.flatnonzero(bad)[0]), f"genre flag {name!r} is not 0 or 1")
        if name not in _NO_GENRE:
            genre_text = genre_text + np.where(flag == 1, " " + name, "")
    items = _items(movies, movies.integers("id"), _join_words(movies.frame["title"], genre_text))

    data = _read_delimited(src / "u.data", "\t", ["user", "item", "rating", "time"], "latin-1")
    return _ratings(data, "user", "item", "rating", "time"), items


def _read_1m(src: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    movies = _read_delimited(src / "movies.dat", "::", ["id", "title", "genres"], "latin-1")
    text = _join_words(movies.frame["title"], _genre_words(movies.frame["genres"]))
    items = _items(movies, movies.integers("id"), text)
    data = _read_delimited(src / "ratings.dat", "::", ["user", "item", "rating", "time"], "latin-1")
    return _ratings(data, "user", "item", "rating", "time"), items


def _read_latest(src: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    movies = _read_csv(src / "movies.csv", ["movieId", "title", "genres"])
    ids = movies.integers("movieId")
    text = _join_words(movies.frame["title"], _genre_words(movies.frame["genres"]))
    if (src / "tags.csv").is_file():
        tags = _read_csv(src / "tags.csv", ["userId", "movieId", "tag", "timestamp"])
        tag_ids = tags.integers("movieId")
        tags.integers("userId")  # validated, not used
        tags.integers("timestamp")
        tag = tags.frame["tag"].str.strip().to_numpy()
        tag_frame = pd.DataFrame({"movie": tag_ids, "tag": tag})
        tag_frame = tag_frame[tag_frame["tag"] != ""].drop_duplicates()
        joined = tag_frame.groupby("movie", sort=False)["tag"].agg(" ".join)
        tag_text = pd.Series(ids).map(joined).fillna("").astype("str")
        tag_text.index = text.index
        text = _join_words(text, tag_text)
    items = _items(movies, ids, text)
    data = _read_csv(src / "ratings.csv", ["userId", "movieId", "rating", "timestamp"])
    return _ratings(data, "userId", "movieId", "rating", "timestamp"), items


_READERS: Mapping[str, Callable[[Path], tuple[pd.DataFrame, pd.DataFrame]]] = MappingProxyType(
    {"ml-100k": _read_100k, "ml-1m": _read_1m, "ml-latest-small": _read_latest}
)


def read_movielens(src: Path) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """Read the MovieLens directory ``src`` in memory.

    Returns ``(variant, interactions, items)`` with the columns and order
    described in the module docstring. Raises :class:`ValueError` for an unknown
    layout, a malformed line, or a rating of a movie missing from the movie file.
    """
    src = Path(src)
    variant = detect_variant(src)
    interactions, items = _READERS[variant](src)
    unknown = ~np.isin(interactions["item_id"].to_numpy(), items["item_id"].to_numpy())
    if unknown.any():
        missing = np.unique(interactions["item_id"].to_numpy()[unknown])
        raise ValueError(
            f"{src}: {int(unknown.sum())} ratings refer to {missing.size} movie id(s) missing "
            f"from the movie file, e.g. {missing[:5].tolist()}"
        )
    # ties in time keep the release file's order (a stable sort): MovieLens users often rate many
    # movies in the same second, and ordering ties by item id would bias the leave-last-out split
    interactions = interactions.sort_values(["user_id", "timestamp"], kind="stable").reset_index(drop=True)
    return variant, interactions, items


def import_movielens(
    src: Path, out: Path, *, fmt: str = "parquet", overwrite: bool = False
) -> Path:
    """Convert the MovieLens directory ``src`` into the dataset directory ``out``.

    Writes ``dataset.toml`` (name = the variant, time-column ``timestamp``,
    label-column ``rating``, from-time hour/weekday/weekend, no context columns),
    ``interactions.<fmt>`` and ``items.<fmt>`` atomically; returns ``out``.
    """
    return write_dataset(out, lambda: read_movielens(src), fmt=fmt, overwrite=overwrite,
                         time_column="timestamp", label_column="rating",
                         from_time=["hour", "weekday", "weekend"])
