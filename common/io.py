"""Safe writing of files, dataset directories and tables: the project's one atomic writer per kind.

* :func:`atomic_file` yields a hidden temporary path next to a file's destination; when the
  body returns, the temporary file is fsynced and renamed over the destination (readers see
  the old file or the new one, never half a file); when it raises, the destination is
  untouched and the temporary file is gone. :func:`write_atomic` (text or bytes),
  :func:`savez_atomic` (``np.savez``) and :func:`save_npy_atomic` (``np.save``) are built on it.
* :func:`atomic_output_dir` builds a directory under a hidden temporary name next to
  its destination and moves it into place only when the body succeeds, so a crash
  never leaves a half-written dataset behind.
* :func:`write_table` writes a frame as CSV or Parquet, chosen by the file suffix.
* :func:`write_dataset_toml` writes the ``dataset.toml`` described in
  ``docs/dataset-format.md``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import math
import os
import re
import secrets
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

if TYPE_CHECKING:  # type hints only: importing pandas costs a device command's start ~0.5 s
    import pandas as pd

__all__ = [
    "atomic_file",
    "write_atomic",
    "savez_atomic",
    "save_npy_atomic",
    "write_dataset",
    "TABLE_SUFFIXES",
    "atomic_output_dir",
    "write_table",
    "dataset_toml",
    "write_dataset_toml",
]

#: File suffixes :func:`write_table` understands.
TABLE_SUFFIXES: tuple[str, ...] = (".csv", ".parquet")

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _is_empty_dir(path: Path) -> bool:
    """True when ``path`` is a real (non-symlink) directory with no entries."""
    if path.is_symlink() or not path.is_dir():
        return False
    with os.scandir(path) as entries:
        return next(entries, None) is None


def _check_destination(path: Path, overwrite: bool) -> None:
    """Raise :class:`FileExistsError` if writing ``path`` would clobber data."""
    if overwrite or not os.path.lexists(path):
        return
    if _is_empty_dir(path):
        return
    what = "a directory that is not empty" if path.is_dir() else "not a directory"
    raise FileExistsError(
        f"Output path {str(path)!r} already exists and is {what}; "
        "pass --overwrite (overwrite=True) to replace it, or choose another directory."
    )


def _remove(path: Path) -> None:
    """Delete a file, symlink or directory tree."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def _sibling(path: Path, tag: str) -> Path:
    """A fresh hidden name next to ``path`` (not created): ``.NAME.TAG-HEX`` plus ``path``'s suffix, so that a
    writer that picks its format by suffix (``np.savez``, ``np.save``, ``savefig``) writes the same format."""
    while True:
        candidate = path.parent / f".{path.name}.{tag}-{secrets.token_hex(6)}{path.suffix}"
        if not os.path.lexists(candidate):
            return candidate


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some file systems cannot open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: Path | str, *, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` that replaces ``path`` when the body returns.

    The temporary file exists (empty) on entry, with mode 0600 if ``private`` (the owner only: secrets, a
    device's own data) else 0666 less the umask; writing it by path keeps that mode. The body writes it in
    full; then it is fsynced and renamed onto ``path`` with :func:`os.replace` (parent directories are
    created), so readers see the old file or the new one. When the body raises, ``path`` is untouched and the
    temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666))
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_atomic(path: Path | str, data: str | bytes, *, private: bool = False) -> Path:
    """Write ``data`` (str: UTF-8 text; bytes: as is) to ``path`` through :func:`atomic_file`; returns ``path``."""
    with atomic_file(path, private=private) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return Path(path)


def savez_atomic(path: Path | str, arrays: Mapping[str, np.ndarray], *, private: bool = False) -> Path:
    """``np.savez(path, **arrays)`` (uncompressed, names as given) through :func:`atomic_file`."""
    with atomic_file(path, private=private) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def save_npy_atomic(path: Path | str, array: np.ndarray, *, private: bool = False) -> Path:
    """``np.save(path, array)`` through :func:`atomic_file`."""
    with atomic_file(path, private=private) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
    return Path(path)


@contextmanager
def atomic_output_dir(path: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``path`` on success.

    The temporary directory is a hidden sibling of ``path`` (same parent, so the
    final :func:`os.replace` is an atomic rename on one file system). When the body
    returns, it is moved to ``path``:

    * ``path`` absent, or an empty directory: it is simply replaced;
    * ``path`` exists (anything else) and ``overwrite=True``: the old entry is
      removed after the new directory is in place;
    * ``path`` exists, is not empty, ``overwrite=False``: :class:`FileExistsError`
      (checked on entry, before any work, and again before the move).

    When the body raises, the temporary directory is deleted and ``path`` is left
    untouched.
    """
    path = Path(path).absolute()
    _check_destination(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        _check_destination(path, overwrite)
        if _is_empty_dir(path):
            path.rmdir()
        if os.path.lexists(path):  # only reachable with overwrite=True
            old = _sibling(path, "old")
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                raise
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(path.parent)


def write_table(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` (without its index) to ``path`` as CSV or Parquet by suffix.

    Returns ``path``. Raises :class:`ValueError` for any other suffix.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        raise ValueError(
            f"Cannot write table {str(path)!r}: unknown suffix {path.suffix!r}, "
            f"expected one of {', '.join(TABLE_SUFFIXES)}."
        )
    return path


def _toml_string(value: str) -> str:
    """``value`` as a TOML basic string (double-quoted, escaped)."""
    out = ['"']
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else _toml_string(key)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_key(str(k))} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + inner + " }" if inner else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"Cannot write {value!r} ({type(value).__name__}) as a TOML value.")


def dataset_toml(
    *,
    name: str,
    interactions: str | None,
    items: str,
    time_column: str | None = None,
    label_column: str | None = None,
    min_label: float | None = None,
    context_columns: Mapping[str, object] | None = None,
    from_time: Sequence[str] | None = None,
    harmonics: int | None = None,
    fitted: bool = False,
) -> str:
    """The text of a ``dataset.toml`` (see ``docs/dataset-format.md``).

    ``interactions`` None: a server's catalogue directory (no interactions file).
    ``context_columns`` maps column name to its kind (``"categorical"``,
    ``"numeric"`` or ``{"kind": "cyclic", "period": float}``). The ``[context]``
    table is written only when ``context_columns`` or ``from_time`` is non-empty; ``harmonics`` None: the
    default Fourier orders of every cycle.
    """
    lines = [
        "[dataset]",
        f"name = {_toml_string(name)}",
        *([f"interactions = {_toml_string(interactions)}"] if interactions is not None else []),
        f"items = {_toml_string(items)}",
    ]
    if time_column is not None:
        lines.append(f"time-column = {_toml_string(time_column)}")
    if label_column is not None:
        lines.append(f"label-column = {_toml_string(label_column)}")
    if min_label is not None:
        lines.append(f"min-label = {_toml_value(float(min_label))}")
    if context_columns or from_time:
        lines += ["", "[context]"]
        if context_columns:
            lines.append(f"columns = {_toml_value(dict(context_columns))}")
        if from_time:
            lines.append(f"from-time = {_toml_value(list(from_time))}")
        if harmonics is not None:
            lines.append(f"harmonics = {int(harmonics)}")
        if fitted:  # the declared values were fitted on users' interactions: refused under a privacy mode
            lines.append("fitted-on-private-rows = true")
    return "\n".join(lines) + "\n"


def write_dataset_toml(directory: Path, **fields: object) -> Path:
    """Write ``directory / "dataset.toml"`` from :func:`dataset_toml` keyword fields."""
    target = Path(directory) / "dataset.toml"
    target.write_text(dataset_toml(**fields), encoding="utf-8")  # type: ignore[arg-type]
    return target


def write_dataset(out: Path, produce: "Callable[[], tuple[str, pd.DataFrame, pd.DataFrame]]", *,
                  fmt: str = "parquet", overwrite: bool = False, **toml_fields: object) -> Path:
    """Write a dataset directory atomically: ``produce()`` -> (name, interactions, items).

    ``produce`` runs inside the temporary directory's lifetime, so a failure while reading or
    generating leaves nothing behind. ``toml_fields`` go to :func:`dataset_toml` (besides name and files).
    """
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', got {fmt!r}")
    out = Path(out)
    with atomic_output_dir(out, overwrite=overwrite) as tmp:
        name, interactions, items = produce()
        write_table(interactions, tmp / f"interactions.{fmt}")
        write_table(items, tmp / f"items.{fmt}")
        write_dataset_toml(tmp, name=name, interactions=f"interactions.{fmt}", items=f"items.{fmt}",
                           **toml_fields)
    return out
