"""Tests for common.io: atomic directory output, table and dataset.toml writing."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pandas as pd
import pytest

from common.io import atomic_output_dir, dataset_toml, write_dataset_toml, write_table


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_success_moves_directory_into_place(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with atomic_output_dir(out) as tmp:
        assert tmp.parent == out.parent
        assert tmp.name.startswith(".")
        assert not out.exists()
        (tmp / "a.txt").write_text("hello")
    assert (out / "a.txt").read_text() == "hello"
    assert _entries(tmp_path) == ["ds"]


def test_creates_missing_parents(tmp_path: Path) -> None:
    out = tmp_path / "x" / "y" / "ds"
    with atomic_output_dir(out) as tmp:
        (tmp / "f").write_text("1")
    assert (out / "f").read_text() == "1"


def test_body_raising_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.parquet").write_text("partial")
            (tmp / "sub").mkdir()
            (tmp / "sub" / "deep").write_text("x")
            raise RuntimeError("boom")
    assert _entries(tmp_path) == []


def test_body_raising_keeps_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyError, match="the body's own error"):
        with atomic_output_dir(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise KeyError("the body's own error")
    assert _entries(out) == ["old.txt"]
    assert _entries(tmp_path) == ["ds"]


def test_existing_non_empty_without_overwrite_raises(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    body_ran = False
    with pytest.raises(FileExistsError, match="--overwrite") as info:
        with atomic_output_dir(out):
            body_ran = True
    assert "another directory" in str(info.value)
    assert str(out) in str(info.value)
    assert not body_ran  # refused before doing any work
    assert _entries(out) == ["keep.txt"]
    assert _entries(tmp_path) == ["ds"]


def test_existing_file_without_overwrite_raises(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.write_text("a file")
    with pytest.raises(FileExistsError, match=r"already exists and is not a directory; pass --overwrite "
                                              r"\(overwrite=True\) to replace it, or choose another directory\."):
        with atomic_output_dir(out):
            pass
    assert out.read_text() == "a file"


def test_existing_empty_dir_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    with atomic_output_dir(out) as tmp:
        (tmp / "f").write_text("1")
    assert _entries(out) == ["f"]
    assert _entries(tmp_path) == ["ds"]


def test_overwrite_replaces_existing(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.mkdir()
    (out / "old.txt").write_text("old")
    (out / "sub").mkdir()
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _entries(out) == ["new.txt"]
    assert _entries(tmp_path) == ["ds"]


def test_overwrite_replaces_a_file(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    out.write_text("a file")
    with atomic_output_dir(out, overwrite=True) as tmp:
        (tmp / "f").write_text("1")
    assert out.is_dir() and _entries(out) == ["f"]


def test_write_table_by_suffix(tmp_path: Path) -> None:
    frame = pd.DataFrame({"item_id": ["a", "b"], "n": [1, 2], "text": ["x, y", 'say "hi"']})
    csv_path = write_table(frame, tmp_path / "t.csv")
    pq_path = write_table(frame, tmp_path / "t.parquet")
    assert csv_path == tmp_path / "t.csv"
    assert csv_path.read_text().splitlines()[0] == "item_id,n,text"
    pd.testing.assert_frame_equal(pd.read_csv(csv_path), frame, check_dtype=False)
    pd.testing.assert_frame_equal(pd.read_parquet(pq_path), frame, check_dtype=False)
    with pytest.raises(ValueError, match=r"unknown suffix '\.json', expected one of \.csv, \.parquet"):
        write_table(frame, tmp_path / "t.json")


def test_dataset_toml_round_trip(tmp_path: Path) -> None:
    path = write_dataset_toml(
        tmp_path,
        name='we"ird\\name',
        interactions="interactions.csv",
        items="items.csv",
        time_column="timestamp",
        label_column="rating",
        min_label=4,
        context_columns={"device": "categorical", "odd col": {"kind": "cyclic", "period": 7.0}},
        from_time=["hour", "weekend"],
    )
    assert path == tmp_path / "dataset.toml"
    assert tomllib.loads(path.read_text()) == {
        "dataset": {
            "name": 'we"ird\\name',
            "interactions": "interactions.csv",
            "items": "items.csv",
            "time-column": "timestamp",
            "label-column": "rating",
            "min-label": 4.0,
        },
        "context": {
            "columns": {"device": "categorical", "odd col": {"kind": "cyclic", "period": 7.0}},
            "from-time": ["hour", "weekend"],
        },
    }


def test_dataset_toml_without_context() -> None:
    text = dataset_toml(name="n", interactions="i.parquet", items="t.parquet")
    assert tomllib.loads(text) == {
        "dataset": {"name": "n", "interactions": "i.parquet", "items": "t.parquet"}
    }
