"""Tests for common.io: the atomic file and directory writers, table and dataset.toml writing."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.io import (atomic_file, atomic_output_dir, dataset_toml, save_npy_atomic, savez_atomic, write_atomic,
                       write_dataset_toml, write_table)


def _entries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


class _Unwritable:
    """An "array" whose conversion fails: np.savez has already written the arrays before it into the archive."""

    def __array__(self, *args, **kwargs):
        raise OSError("No space left on device")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # np.savez leaves its ZipFile
def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path: Path) -> None:  # unclosed
    path = tmp_path / "global_model.npz"
    savez_atomic(path, {"w": np.arange(3)})
    with pytest.raises(OSError, match="No space left"):
        savez_atomic(path, {"big": np.ones(100_000), "broken": _Unwritable()})  # fails after "big" is written
    with np.load(path) as f:
        assert f.files == ["w"] and f["w"].tolist() == [0, 1, 2]
    assert _entries(tmp_path) == ["global_model.npz"]

    text = tmp_path / "privacy.json"
    write_atomic(text, '{"epsilon": 1.0}')
    with pytest.raises(RuntimeError, match="crash"):
        with atomic_file(text) as tmp:
            tmp.write_text('{"epsil')
            assert text.read_text() == '{"epsilon": 1.0}'  # a reader meanwhile sees the old file whole
            raise RuntimeError("crash")
    assert text.read_text() == '{"epsilon": 1.0}'
    assert _entries(tmp_path) == ["global_model.npz", "privacy.json"]


def test_a_privacy_ledger_that_fails_mid_write_keeps_the_old_ledger(tmp_path: Path, monkeypatch) -> None:
    from common.privacy.ledger import PrivacyLedger

    ledger = PrivacyLedger(delta=1e-5)
    ledger.append(1, 0.1, 1.2, 0.02)
    path = tmp_path / "privacy_ledger.csv"
    ledger.write_csv(path)
    old = path.read_text()
    ledger.append(2, 0.1, 1.2, 0.02)
    monkeypatch.setattr(ledger, "to_rows", lambda: [{"round": 2, "not-a-column": 1}])  # fails after the header
    with pytest.raises(ValueError, match="not-a-column"):
        ledger.write_csv(path)
    assert path.read_text() == old and len(old.splitlines()) == 2
    assert _entries(tmp_path) == ["privacy_ledger.csv"]


def test_atomic_writes_replace_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "vectors.npy"
    save_npy_atomic(path, np.eye(2))
    save_npy_atomic(path, np.arange(4.0))
    np.testing.assert_array_equal(np.load(path), np.arange(4.0))
    write_atomic(tmp_path / "model.tflite", b"\x00\x01")
    assert (tmp_path / "model.tflite").read_bytes() == b"\x00\x01"
    assert _entries(tmp_path / "sub") == ["vectors.npy"]


def test_the_temporary_file_is_hidden_beside_its_destination_with_its_suffix(tmp_path: Path) -> None:
    """Writers that pick the format by suffix (savefig, np.save) write the destination's format."""
    with atomic_file(tmp_path / "rounds.png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".rounds.png.") and tmp.suffix == ".png"
        assert tmp.is_file()


def test_private_files_are_owner_only_and_others_follow_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "checkpoint.npz", b"secret", private=True)
        write_atomic(tmp_path / "schema.json", "{}")
        with atomic_file(tmp_path / "node-state.npz", private=True) as tmp:
            with open(tmp, "w") as f:  # writing the temporary file by path keeps its mode
                f.write("theta")
    finally:
        os.umask(umask)
    assert (tmp_path / "checkpoint.npz").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "node-state.npz").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "schema.json").stat().st_mode & 0o777 == 0o644


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
