"""Tests for common.data.loader: dataset.toml parsing, structural errors, cleaning, split.

Every fixture is a tiny dataset written into ``tmp_path``; expected values are
worked out by hand in the comments next to them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.data.spec import DEFAULT_HARMONICS
from common.data.loader import (
    ContextColumn,
    DataError,
    Interactions,
    PreparedDataset,
    load_dataset,
    read_spec,
    validate_dataset,
)

# --------------------------------------------------------------------------- helpers


def write_toml(root: Path, body: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.toml").write_text(body, encoding="utf-8")


def write_csv(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")


def triples(data: PreparedDataset, part: Interactions) -> list[tuple[str, str, int]]:
    """(user id, item id, time) per row, in stored order."""
    return [
        (str(data.user_ids[u]), str(data.item_ids[i]), int(t))
        for u, i, t in zip(part.user, part.item, part.time)
    ]


BASIC_TOML = """
[dataset]
name = "basic"
interactions = "interactions.csv"
items = "items.csv"
time-column = "ts"
"""

# Items file order i2, i1, i4, i3, i5 is the catalogue order (i5 has no engagements).
ITEMS_ROWS = ["i2,two", "i1,one", "i4,four", "i3,three", "i5,five"]

# Rows interleave users; times chosen so the file order differs from the time order.
SPLIT_ROWS = [
    "alice,i1,100",  # row 1
    "bob,i1,50",     # row 2  (ties with row 4 -> comes first)
    "carol,i4,5",    # row 3
    "bob,i2,50",     # row 4
    "alice,i2,300",  # row 5
    "carol,i3,7",    # row 6
    "alice,i3,200",  # row 7
    "bob,i3,10",     # row 8
    "carol,i2,6",    # row 9
    "alice,i4,400",  # row 10
    "carol,i1,8",    # row 11
]


def split_dataset(root: Path) -> Path:
    write_toml(root, BASIC_TOML)
    write_csv(root / "interactions.csv", "user_id,item_id,ts", SPLIT_ROWS)
    write_csv(root / "items.csv", "item_id,text", ITEMS_ROWS)
    return root


# --------------------------------------------------------------------------- split


def test_split_exact_items_per_user(tmp_path: Path) -> None:
    data = load_dataset(split_dataset(tmp_path / "ds"))

    assert data.name == "basic"
    assert list(data.user_ids) == ["alice", "bob", "carol"]
    assert list(data.item_ids) == ["i2", "i1", "i4", "i3", "i5"]
    assert data.item_texts == ("two", "one", "four", "three", "five")
    assert (data.n_users, data.n_items, data.context_dim) == (3, 5, 0)

    # alice by time: i1@100, i3@200, i2@300, i4@400
    # bob   by time: i3@10, i1@50 (row 2), i2@50 (row 4)
    # carol by time: i4@5, i2@6, i3@7, i1@8
    assert triples(data, data.train) == [
        ("alice", "i1", 100), ("alice", "i3", 200),
        ("bob", "i3", 10),
        ("carol", "i4", 5), ("carol", "i2", 6),
    ]
    assert triples(data, data.val) == [("alice", "i2", 300), ("bob", "i1", 50), ("carol", "i3", 7)]
    assert triples(data, data.test) == [("alice", "i4", 400), ("bob", "i2", 50), ("carol", "i1", 8)]

    # dense indices: users sorted, items in file order
    assert data.val.user.tolist() == [0, 1, 2]
    assert data.test.item.tolist() == [2, 0, 1]  # i4, i2, i1
    assert data.train.user.dtype == np.int32 and data.train.item.dtype == np.int32
    assert data.train.time.dtype == np.int64
    assert data.train.context.dtype == np.float32 and data.train.context.shape == (5, 0)
    assert all(v == 0 for v in data.cleaning.values())


def test_split_tie_broken_by_file_row(tmp_path: Path) -> None:
    # Same times for everything: order is file order.
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML)
    write_csv(root / "interactions.csv", "user_id,item_id,ts",
              ["u,i3,9", "u,i1,9", "u,i4,9", "u,i2,9"])
    write_csv(root / "items.csv", "item_id,text", ITEMS_ROWS)
    data = load_dataset(root)
    assert [i for _, i, _ in triples(data, data.train)] == ["i3", "i1"]
    assert [i for _, i, _ in triples(data, data.val)] == ["i4"]
    assert [i for _, i, _ in triples(data, data.test)] == ["i2"]


def test_split_without_time_column_uses_file_order(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, '[dataset]\ninteractions = "interactions.csv"\nitems = "items.csv"\n')
    write_csv(root / "interactions.csv", "user_id,item_id", ["u,i4", "v,i1", "u,i1", "v,i2", "u,i3", "v,i3"])
    write_csv(root / "items.csv", "item_id,text", ITEMS_ROWS)
    data = load_dataset(root)
    assert data.name == "ds"  # defaults to the directory name
    assert triples(data, data.train) == [("u", "i4", 0), ("v", "i1", 0)]
    assert triples(data, data.val) == [("u", "i1", 0), ("v", "i2", 0)]
    assert triples(data, data.test) == [("u", "i3", 0), ("v", "i3", 0)]


def test_ids_are_strings(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML)
    write_csv(root / "interactions.csv", "user_id,item_id,ts",
              ["007,01,1", "007,1,2", "007,01,3", "7,1,1", "7,01,2", "7,1,3"])
    write_csv(root / "items.csv", "item_id,text", ["01,zero-one", "1,one"])
    data = load_dataset(root)
    assert list(data.user_ids) == ["007", "7"]
    assert list(data.item_ids) == ["01", "1"]
    assert triples(data, data.test) == [("007", "01", 3), ("7", "1", 3)]


def test_select_mask_and_index(tmp_path: Path) -> None:
    data = load_dataset(split_dataset(tmp_path / "ds"))
    train = data.train
    picked = train.select(np.array([True, False, False, True, False]))
    assert len(picked) == 2 and picked.time.tolist() == [100, 5]
    picked = train.select(np.array([4, 0]))
    assert picked.time.tolist() == [6, 100]
    assert picked.context.shape == (2, 0)


# --------------------------------------------------------------------------- cleaning


CLEAN_TOML = """
[dataset]
name = "dirty"
interactions = "interactions.csv"
items = "items.csv"
time-column = "ts"
label-column = "rating"
min-label = 3
"""


def test_cleaning_counts_and_rows_removed(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, CLEAN_TOML)
    write_csv(root / "interactions.csv", "user_id,item_id,ts,rating", [
        "ann,a,10,5",
        "ann,b,20,5",
        "ann,b,20,4",     # duplicate of the row above (same user, item, time): dropped
        "ann,zzz,25,5",   # unknown item: dropped
        "ann,c,30,5",
        "ann,a,soon,5",   # bad timestamp (not a number): dropped
        "ann,c,40,2",     # rating 2 < min-label 3: dropped
        "ben,a,1,5",
        "ben,b,2,5",
        "ben,c,3,5",
        "dan,a,1,5",      # dan has only 2 engagements: user removed
        "dan,b,2,5",
    ])
    (root / "items.csv").write_bytes(b"item_id,text\na,apple\nb,caf\xe9\nc,\n")

    data = load_dataset(root)
    assert data.cleaning == {
        "bad_timestamps": 1,
        "unknown_items": 1,
        "below_min_label": 1,
        "duplicate_rows": 1,
        "non_utf8_texts": 1,
        "missing_texts": 1,
        "missing_numeric_context": 0,
        "users_too_few_interactions": 1,
    }
    assert list(data.user_ids) == ["ann", "ben"]
    assert data.item_texts == ("apple", "caf\ufffd", "")
    rows = sorted(triples(data, data.train) + triples(data, data.val) + triples(data, data.test))
    assert rows == [
        ("ann", "a", 10), ("ann", "b", 20), ("ann", "c", 30),
        ("ben", "a", 1), ("ben", "b", 2), ("ben", "c", 3),
    ]


@pytest.mark.parametrize("ts", ["-5", "1.5", "", "4133980800", "99999999999999"])
def test_bad_timestamps_are_dropped(tmp_path: Path, ts: str) -> None:
    # negative, fractional, missing, first second of 2101, far future
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML)
    write_csv(root / "interactions.csv", "user_id,item_id,ts",
              ["u,i1,1", "u,i2,2", f"u,i3,{ts}", "u,i4,4133980799"])  # last: 2100-12-31T23:59:59Z
    write_csv(root / "items.csv", "item_id,text", ITEMS_ROWS)
    data = load_dataset(root, min_user_interactions=2)
    assert data.cleaning["bad_timestamps"] == 1
    assert triples(data, data.test) == [("u", "i4", 4133980799)]
    assert triples(data, data.val) == [("u", "i2", 2)]


def test_min_user_interactions_parameter(tmp_path: Path) -> None:
    root = split_dataset(tmp_path / "ds")  # alice 4, bob 3, carol 4 engagements
    data = load_dataset(root, min_user_interactions=4)
    assert list(data.user_ids) == ["alice", "carol"]
    assert data.cleaning["users_too_few_interactions"] == 1
    with pytest.raises(ValueError, match=r"min_user_interactions must be an int >= 2 \(each user needs a val and a "
                                         r"test engagement\); got 1"):
        load_dataset(root, min_user_interactions=1)


# --------------------------------------------------------------------------- errors


def test_error_missing_user_id_column(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML)
    write_csv(root / "interactions.csv", "uid,item_id,ts", ["u,i1,1"])
    write_csv(root / "items.csv", "item_id,text", ITEMS_ROWS)
    with pytest.raises(DataError, match=r"interactions\.csv: column 'user_id': required column 'user_id' is missing\. "
                                        r"Found \['uid', 'item_id', 'ts'\]") as info:
        load_dataset(root)
    assert info.value.column == "user_id"


def test_error_empty_item_id_names_row_column_value(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML)
    write_csv(root / "interactions.csv", "user_id,item_id,ts", ["u,i1,1", "u,i2,2", "u,,3", "u,i4,4"])
    write_csv(root / "items.csv", "item_id,text", ITEMS_ROWS)
    with pytest.raises(DataError, match=r"interactions\.csv: row 3, column 'item_id': item_id must be non-empty\. "
                                        r"Found ''\. Fix: remove the row or fill in the item id\.") as info:
        load_dataset(root)
    assert (info.value.row, info.value.column, info.value.value) == (3, "item_id", "")


def test_error_bad_context_kind_in_toml(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML + '\n[context]\ncolumns = { device = "colour" }\n')
    with pytest.raises(DataError, match=r"dataset\.toml: context column 'device': kind must be one of categorical, "
                                        r"numeric, cyclic\. Found 'colour'") as info:
        read_spec(root)
    assert info.value.value == "colour"


def test_error_cyclic_without_period(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML + '\n[context]\ncolumns = { dow = { kind = "cyclic" } }\n')
    with pytest.raises(DataError, match=r"dataset\.toml: context column 'dow': cyclic columns need a period") as info:
        read_spec(root)
    assert info.value.fix.startswith('write dow = { kind = "cyclic", period = <float> }')


def test_error_from_time_without_time_column(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, '[dataset]\ninteractions = "a.csv"\nitems = "b.csv"\n'
                     '[context]\nfrom-time = ["hour"]\n')
    with pytest.raises(DataError, match="time-column"):
        read_spec(root)


def test_error_unknown_key(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML + 'time-zone = "UTC"\n')
    with pytest.raises(DataError, match="unknown key 'time-zone'"):
        read_spec(root)


def test_error_missing_toml(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset.toml"):
        read_spec(tmp_path)


def test_error_missing_interactions_file(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML)
    write_csv(root / "items.csv", "item_id,text", ITEMS_ROWS)
    with pytest.raises(DataError, match="interactions.csv"):
        load_dataset(root)


def test_error_non_numeric_label(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, CLEAN_TOML)
    write_csv(root / "interactions.csv", "user_id,item_id,ts,rating", ["u,a,1,5", "u,b,2,good"])
    write_csv(root / "items.csv", "item_id,text", ["a,x", "b,y"])
    with pytest.raises(DataError, match=r"interactions\.csv: row 2, column 'rating': label column 'rating' must hold "
                                        r"finite numbers\. Found 'good'") as info:
        load_dataset(root)
    assert (info.value.row, info.value.column, info.value.value) == (2, "rating", "good")


def test_error_non_numeric_context_value(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML + '\n[context]\ncolumns = { temp = "numeric" }\n')
    write_csv(root / "interactions.csv", "user_id,item_id,ts,temp", ["u,i1,1,2.5", "u,i2,2,", "u,i3,3,warm"])
    write_csv(root / "items.csv", "item_id,text", ITEMS_ROWS)
    with pytest.raises(DataError, match=r"interactions\.csv: row 3, column 'temp': numeric context column 'temp' must "
                                        r"hold finite numbers .*Found 'warm'") as info:
        load_dataset(root)
    assert (info.value.row, info.value.column, info.value.value) == (3, "temp", "warm")


def test_error_duplicate_item_id(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML)
    write_csv(root / "interactions.csv", "user_id,item_id,ts", ["u,i1,1"])
    write_csv(root / "items.csv", "item_id,text", ["i1,a", "i2,b", "i1,c"])
    with pytest.raises(DataError, match=r"items\.csv: row 3, column 'item_id': item_id must be unique \(row 1 has the "
                                        r"same id\)\. Found 'i1'") as info:
        load_dataset(root)
    assert (info.value.row, info.value.column, info.value.value) == (3, "item_id", "i1")


def test_error_ragged_csv_row(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML)
    write_csv(root / "interactions.csv", "user_id,item_id,ts", ["u,i1,1", "u,i2"])
    write_csv(root / "items.csv", "item_id,text", ITEMS_ROWS)
    with pytest.raises(DataError, match=r"interactions\.csv: row 2: file must be a readable CSV") as info:
        load_dataset(root)
    assert info.value.row == 2


def test_error_no_usable_interactions(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML)
    write_csv(root / "interactions.csv", "user_id,item_id,ts", ["u,nope,1", "u,i1,-1"])
    write_csv(root / "items.csv", "item_id,text", ITEMS_ROWS)
    with pytest.raises(DataError, match="usable"):
        load_dataset(root)


def test_error_null_user_id_in_parquet(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML.replace("interactions.csv", "interactions.parquet"))
    pq.write_table(pa.table({"user_id": ["u", None], "item_id": ["i1", "i2"], "ts": [1, 2]}),
                   root / "interactions.parquet")
    write_csv(root / "items.csv", "item_id,text", ITEMS_ROWS)
    with pytest.raises(DataError, match=r"interactions\.parquet: row 2, column 'user_id': user_id must be non-empty\. "
                                        r"Found null") as info:
        load_dataset(root)
    assert (info.value.row, info.value.column) == (2, "user_id")


def test_data_error_message_format() -> None:
    err = DataError("interactions.csv", "user_id must be non-empty", row=7, column="user_id",
                    value="", fix="remove the row or fill in the user id.")
    assert str(err) == ("interactions.csv: row 7, column 'user_id': user_id must be non-empty. "
                        "Found ''. Fix: remove the row or fill in the user id.")
    assert isinstance(err, ValueError)


# --------------------------------------------------------------------------- spec, formats


CONTEXT_TOML = """
[dataset]
name = "ctx"
interactions = "interactions.{fmt}"
items = "items.{fmt}"
time-column = "ts"
label-column = "rating"

[context]
columns = {{ device = "categorical", temp = "numeric", dow = {{ kind = "cyclic", period = 7.0 }} }}
from-time = ["hour", "weekend"]
harmonics = 1
"""


def test_read_spec_fields(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, CONTEXT_TOML.format(fmt="csv"))
    spec = read_spec(root)
    assert spec.root == root and spec.name == "ctx"
    assert spec.interactions_file == root / "interactions.csv"
    assert spec.items_file == root / "items.csv"
    assert (spec.time_column, spec.label_column, spec.min_label) == ("ts", "rating", None)
    assert spec.context_columns == (
        ContextColumn("device", "categorical"),
        ContextColumn("temp", "numeric"),
        ContextColumn("dow", "cyclic", 7.0),
    )
    assert spec.from_time == ("hour", "weekend") and spec.harmonics == 1


@pytest.mark.parametrize("value", ["0", "25", "2.5", "true", '"12"'])
def test_bad_harmonics_name_the_file_the_rule_and_the_fix(tmp_path: Path, value: str) -> None:
    root = tmp_path / "ds"
    write_toml(root, CONTEXT_TOML.format(fmt="csv").replace("harmonics = 1", f"harmonics = {value}"))
    with pytest.raises(DataError, match=r"\[context\] harmonics must be an integer from 1 to 24") as err:
        read_spec(root)
    assert "dataset.toml" in str(err.value) and "harmonics = 4" in str(err.value)
    write_toml(root, CONTEXT_TOML.format(fmt="csv").replace("harmonics = 1\n", ""))
    assert read_spec(root).harmonics == DEFAULT_HARMONICS


def _context_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    interactions = pd.DataFrame({
        "user_id": ["007", "b", "007", "b", "007", "b", "b"],
        "item_id": ["x", "y", "y", "z", "z", "x", "x"],
        "ts": [3600 * 6, 100, 86400 * 2 + 60, 200, 86400 * 3, 300, 300],
        "rating": [1.0, 2.0, 3.5, 4.0, 5.0, 1.0, 1.0],
        "device": ["mobile", "desktop", None, "mobile", "tv", "desktop", "desktop"],
        "temp": [1.0, 3.0, None, 5.0, 9.0, 2.0, 2.0],
        "dow": [1.0, 2.0, 3.5, 4.0, 5.0, 6.0, 6.0],
    })
    items = pd.DataFrame({"item_id": ["z", "x", "y"], "text": ["zed", "ex", None]})
    return interactions, items


def _write_context_dataset(root: Path, fmt: str) -> Path:
    interactions, items = _context_frames()
    write_toml(root, CONTEXT_TOML.format(fmt=fmt))
    if fmt == "csv":
        interactions.to_csv(root / "interactions.csv", index=False)
        items.to_csv(root / "items.csv", index=False)
    else:
        pq.write_table(pa.Table.from_pandas(interactions, preserve_index=False),
                       root / "interactions.parquet")
        pq.write_table(pa.Table.from_pandas(items, preserve_index=False), root / "items.parquet")
    return root


def test_csv_and_parquet_give_the_same_dataset(tmp_path: Path) -> None:
    a = load_dataset(_write_context_dataset(tmp_path / "csv", "csv"))
    b = load_dataset(_write_context_dataset(tmp_path / "pq", "parquet"))
    assert a.name == b.name == "ctx"
    assert a.user_ids.tolist() == b.user_ids.tolist() == ["007", "b"]
    assert a.item_ids.tolist() == b.item_ids.tolist() == ["z", "x", "y"]
    assert a.item_texts == b.item_texts == ("zed", "ex", "")
    assert a.context_names == b.context_names
    assert a.cleaning == b.cleaning
    assert a.cleaning["duplicate_rows"] == 1 and a.cleaning["missing_texts"] == 1
    for part in ("train", "val", "test"):
        x, y = getattr(a, part), getattr(b, part)
        for field in ("user", "item", "time", "context"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))


def test_context_encoder_fitted_on_train_only(tmp_path: Path) -> None:
    data = load_dataset(_write_context_dataset(tmp_path / "ds", "csv"))
    # 007 by time: x@21600 (mobile), y@172860 (missing), z@259200 (tv)
    # b   by time: y@100 (desktop), z@200 (mobile), x@300 (desktop; duplicate dropped)
    # train = 007:x and b:y -> device vocabulary {desktop, mobile}; "tv" is test-only.
    assert data.context_names == (
        "device=desktop", "device=mobile", "temp", "dow_sin", "dow_cos",
        "hour_sin", "hour_cos", "weekend",
    )
    train, test = data.train.context, data.test.context
    # train temp 1 and 3 -> mean 2, std 1
    np.testing.assert_allclose(train[:, 2], [-1.0, 1.0])
    # test rows: 007:z (tv, temp 9, dow 5, Sunday 1970-01-04 00:00), b:x (desktop, temp 2, dow 6)
    np.testing.assert_allclose(test[0, :2], [0.0, 0.0])  # unseen "tv" -> zeros
    np.testing.assert_allclose(test[1, :2], [1.0, 0.0])
    np.testing.assert_allclose(test[:, 2], [7.0, 0.0])
    np.testing.assert_allclose(test[0, 5:], [0.0, 1.0, 1.0], atol=1e-6)  # midnight, Sunday
    # val row of 007: device missing, temp missing -> zeros
    np.testing.assert_allclose(data.val.context[0, :3], [0.0, 0.0, 0.0])
    assert data.context_encoder is not None
    assert data.context_encoder.feature_names == data.context_names


def test_validate_dataset_report(tmp_path: Path) -> None:
    report = validate_dataset(split_dataset(tmp_path / "ds"))
    assert json.loads(json.dumps(report)) == report
    assert report["name"] == "basic"
    assert (report["n_users"], report["n_items"]) == (3, 5)
    assert report["n_interactions"] == {"train": 5, "val": 3, "test": 3, "total": 11}
    assert report["context_names"] == []
    assert report["cleaning"]["duplicate_rows"] == 0


def test_item_text_with_quoted_newline_and_comma(tmp_path: Path) -> None:
    root = split_dataset(tmp_path / "ds")
    (root / "items.csv").write_text(
        'item_id,text\ni2,"two, lines\nhere"\ni1,one\ni4,four\ni3,three\n', encoding="utf-8")
    data = load_dataset(root)
    assert data.item_texts == ("two, lines\nhere", "one", "four", "three")


def test_parquet_integer_ids_become_strings(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    write_toml(root, BASIC_TOML.replace("interactions.csv", "interactions.parquet"))
    pq.write_table(pa.table({"user_id": [7, 7, 7], "item_id": [10, 20, 10], "ts": [1, 2, 3]}),
                   root / "interactions.parquet")
    write_csv(root / "items.csv", "item_id,text", ["20,b", "10,a"])
    data = load_dataset(root)
    assert data.user_ids.tolist() == ["7"]
    assert triples(data, data.train) == [("7", "10", 1)]
    assert triples(data, data.val) == [("7", "20", 2)]
    assert triples(data, data.test) == [("7", "10", 3)]


# --------------------------------------------------------------------------- loader gaps (issue: one clear message)

CTX_TOML = """
[dataset]
interactions = "interactions.csv"
items = "items.csv"
time-column = "ts"

[context]
columns = { device = "categorical", temp = "numeric" }
"""


def _ctx_dataset(root: Path, rows: list[str], items: list[str] | None = None) -> Path:
    write_toml(root, CTX_TOML)
    write_csv(root / "items.csv", "item_id,text", ["a,alpha", "b,beta", "c,gamma"] if items is None else items)
    write_csv(root / "interactions.csv", "user_id,item_id,ts,device,temp", rows)
    return root


def test_an_items_file_with_only_a_header_is_blamed_on_the_items_file(tmp_path):
    root = _ctx_dataset(tmp_path / "d", ["u,a,1,m,1", "u,b,2,m,1", "u,c,3,m,1"], items=[])
    with pytest.raises(DataError, match=r"items\.csv: the item catalogue must hold at least one item\. Found 0\.") as e:
        load_dataset(root)
    assert Path(e.value.file).name == "items.csv" and "at least one item" in str(e.value)


def test_nan_in_a_numeric_context_column_is_a_counted_missing_value_and_an_all_missing_column_an_error(tmp_path):
    rows = ["u,a,1,m,NaN", "u,b,2,m,", "u,c,3,m,2.5", "v,a,1,d,1", "v,b,2,d,nan", "v,c,3,d,3"]
    data = load_dataset(_ctx_dataset(tmp_path / "ok", rows))
    assert data.cleaning["missing_numeric_context"] == 3
    rows = ["u,a,1,m,NaN", "u,b,2,m,", "u,c,3,m,nan"]
    with pytest.raises(DataError, match=r"interactions\.csv: column 'temp': numeric context column 'temp' has no value "
                                        r"in any row\.") as e:
        load_dataset(_ctx_dataset(tmp_path / "bad", rows))
    assert e.value.column == "temp" and "no value in any row" in str(e.value)


def test_a_categorical_context_column_with_too_many_values_is_refused(tmp_path):
    from common.data.loader import MAX_CATEGORIES

    rows = [f"u{k // 3},{'abc'[k % 3]},{k},dev{k},1" for k in range(3 * (MAX_CATEGORIES // 3 + 2))]
    with pytest.raises(DataError, match=rf"interactions\.csv: column 'device': categorical context column 'device' has "
                                        rf"{len(rows):,} distinct values, more than {MAX_CATEGORIES:,}") as e:
        load_dataset(_ctx_dataset(tmp_path / "d", rows))
    assert e.value.column == "device" and "distinct values" in str(e.value) and "group rare values" in str(e.value)


def test_rows_that_differ_only_in_context_are_not_duplicates(tmp_path):
    # u: (a, t=1) on mobile and on desktop are two engagements; the exact repeat (a, 1, m, 1) is one duplicate
    rows = ["u,a,1,m,1", "u,a,1,d,1", "u,a,1,m,1", "u,b,2,m,1", "u,c,3,m,1"]
    data = load_dataset(_ctx_dataset(tmp_path / "d", rows))
    assert data.cleaning["duplicate_rows"] == 1
    assert len(data.train) + len(data.val) + len(data.test) == 4


def test_too_few_engagements_names_a_fix_the_user_can_apply(tmp_path):
    with pytest.raises(DataError, match=r"interactions\.csv: at least one user must have 3 or more usable interactions "
                                        r"after cleaning") as e:
        load_dataset(_ctx_dataset(tmp_path / "d", ["u,a,1,m,1", "u,b,2,m,1"]))
    assert "min_user_interactions" not in str(e.value) and "each user needs 3 engagements" in str(e.value)


def test_an_item_text_longer_than_arrows_read_block_loads(tmp_path):
    root = tmp_path / "d"
    write_toml(root, '[dataset]\ninteractions = "i.csv"\nitems = "items.csv"\n')
    (root / "items.csv").write_text("item_id,text\na," + "word " * 700_000 + "\nb,short\nc,x\n")  # 3.5 MB
    write_csv(root / "i.csv", "user_id,item_id", ["u,a", "u,b", "u,c"])
    data = load_dataset(root)
    assert len(data.item_texts[0]) > 3_000_000


def test_invalid_utf8_in_an_id_column_names_the_row(tmp_path):
    root = tmp_path / "d"
    write_toml(root, '[dataset]\ninteractions = "i.csv"\nitems = "items.csv"\n')
    write_csv(root / "items.csv", "item_id,text", ["a,x", "b,y", "c,z"])
    (root / "i.csv").write_bytes(b"user_id,item_id\nu,a\nu,b\nu,c\n\xff\xfe,a\n")
    with pytest.raises(DataError, match=r"i\.csv: row 4: every cell must be UTF-8 text") as e:
        load_dataset(root)
    assert e.value.row == 4 and "UTF-8" in str(e.value) and Path(e.value.file).name == "i.csv"


def test_a_numeric_context_value_beyond_float32_is_an_error_naming_its_row(tmp_path):
    rows = ["u,a,1,m,1", "u,b,2,m,1e39", "u,c,3,m,1"]
    with pytest.raises(DataError, match=r"interactions\.csv: row 2, column 'temp': numeric context column 'temp' must "
                                        r"hold finite numbers within \+-3\.4e38 \(or be empty\)\. Found '1e39'") as e:
        load_dataset(_ctx_dataset(tmp_path / "d", rows))
    assert e.value.row == 2 and e.value.column == "temp" and "3.4e38" in str(e.value)
