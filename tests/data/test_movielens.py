"""Tests for common.data.sources.movielens on tiny hand-written fixtures of each layout.

Expected rows and texts are written out by hand from the fixtures.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from common.data.sources.movielens import detect_variant, import_movielens

# --------------------------------------------------------------------------- fixtures

ML100K_GENRE = "unknown|0\nAction|1\nChildren's|2\nComedy|3\n\n"
ML100K_ITEM = (
    "1|Toy Story (1995)|01-Jan-1995||http://x/1|0|0|1|1\n"
    "2|Café Society (1996)|01-Jan-1996||http://x/2|0|1|0|0\n"
    "3|unknown|||http://x/3|1|0|0|0\n"
)
ML100K_DATA = "2\t1\t4\t881250950\n1\t2\t3\t881250949\n1\t1\t5\t881250949\n2\t2\t1\t881250000\n"

ML1M_MOVIES = (
    "10::GoldenEye (1995)::Action|Adventure|Thriller\n"
    "20::Amélie (2001)::Comedy|Romance\n"
    "30::Star Wars: Episode IV (1977)::Sci-Fi\n"
)
ML1M_RATINGS = "1::20::5::978300760\n1::10::3::978300000\n7::30::4::978000001\n"

LATEST_MOVIES = (
    "movieId,title,genres\n"
    "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
    '5,"American President, The (1995)",Comedy|Drama|Romance\n'
    "9,Ünknown Film (2020),(no genres listed)\n"
)
LATEST_RATINGS = (
    "userId,movieId,rating,timestamp\n"
    "1,5,4.5,964982224\n"
    "1,1,4.0,964981247\n"
    "3,9,0.5,1306463578\n"
)
LATEST_TAGS = (
    "userId,movieId,tag,timestamp\n"
    "2,1,pixar,1445714994\n"
    "3,1,fun,1445714996\n"
    "4,1,pixar,1445715000\n"
    "2,5,politics,1445714990\n"
)


def _write(directory: Path, files: dict[str, str], encoding: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_bytes(text.encode(encoding))
    return directory


def ml100k(tmp_path: Path, **override: str) -> Path:
    files = {"u.genre": ML100K_GENRE, "u.item": ML100K_ITEM, "u.data": ML100K_DATA}
    files.update({k.replace("_", "."): v for k, v in override.items()})
    return _write(tmp_path / "src-100k", files, "latin-1")


def ml1m(tmp_path: Path, **override: str) -> Path:
    files = {"movies.dat": ML1M_MOVIES, "ratings.dat": ML1M_RATINGS}
    files.update({k.replace("_", "."): v for k, v in override.items()})
    return _write(tmp_path / "src-1m", files, "latin-1")


def latest(tmp_path: Path, *, tags: bool = True, **override: str) -> Path:
    files = {"movies.csv": LATEST_MOVIES, "ratings.csv": LATEST_RATINGS}
    if tags:
        files["tags.csv"] = LATEST_TAGS
    files.update({k.replace("_", "."): v for k, v in override.items()})
    return _write(tmp_path / "src-latest", files, "utf-8")


def _interactions(rows: list[tuple[int, int, int, float]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "rating"])
    return frame.astype({"user_id": "int64", "item_id": "int64", "timestamp": "int64", "rating": "float64"})


def _items(rows: list[tuple[int, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["item_id", "text"])
    return frame.astype({"item_id": "int64", "text": "str"})


def _expected_toml(name: str, fmt: str) -> dict:
    return {
        "dataset": {
            "name": name,
            "interactions": f"interactions.{fmt}",
            "items": f"items.{fmt}",
            "time-column": "timestamp",
            "label-column": "rating",
        },
        "context": {"from-time": ["hour", "weekday", "weekend"]},
    }


def _check_output(out: Path, name: str, fmt: str, inter: pd.DataFrame, items: pd.DataFrame) -> None:
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["dataset.toml", f"interactions.{fmt}", f"items.{fmt}"]
    )
    with open(out / "dataset.toml", "rb") as f:
        assert tomllib.load(f) == _expected_toml(name, fmt)
    read = pd.read_parquet if fmt == "parquet" else pd.read_csv
    pd.testing.assert_frame_equal(read(out / f"interactions.{fmt}"), inter)
    pd.testing.assert_frame_equal(read(out / f"items.{fmt}"), items, check_dtype=fmt == "parquet")


# ---------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_ml100k(tmp_path: Path, fmt: str) -> None:
    out = import_movielens(ml100k(tmp_path), tmp_path / "out", fmt=fmt)
    assert out == tmp_path / "out"
    _check_output(
        out,
        "ml-100k",
        fmt,
        _interactions(
            [
                # same second: the file's order is kept (item 2 was rated before item 1)
                (1, 2, 881250949, 3.0),
                (1, 1, 881250949, 5.0),
                (2, 2, 881250000, 1.0),
                (2, 1, 881250950, 4.0),
            ]
        ),
        _items(
            [
                (1, "Toy Story (1995) Children's Comedy"),
                (2, "Café Society (1996) Action"),
                (3, "unknown"),  # title "unknown"; genre "unknown" is left out
            ]
        ),
    )


def test_ml1m(tmp_path: Path) -> None:
    out = import_movielens(ml1m(tmp_path), tmp_path / "out")
    _check_output(
        out,
        "ml-1m",
        "parquet",
        _interactions(
            [
                (1, 10, 978300000, 3.0),
                (1, 20, 978300760, 5.0),
                (7, 30, 978000001, 4.0),
            ]
        ),
        _items(
            [
                (10, "GoldenEye (1995) Action Adventure Thriller"),
                (20, "Amélie (2001) Comedy Romance"),
                (30, "Star Wars: Episode IV (1977) Sci-Fi"),
            ]
        ),
    )


def test_ml_latest_small(tmp_path: Path) -> None:
    out = import_movielens(latest(tmp_path), tmp_path / "out")
    _check_output(
        out,
        "ml-latest-small",
        "parquet",
        _interactions(
            [
                (1, 1, 964981247, 4.0),
                (1, 5, 964982224, 4.5),
                (3, 9, 1306463578, 0.5),
            ]
        ),
        _items(
            [
                (1, "Toy Story (1995) Adventure Animation Children Comedy Fantasy pixar fun"),
                (5, "American President, The (1995) Comedy Drama Romance politics"),
                (9, "Ünknown Film (2020)"),
            ]
        ),
    )


def test_ml_latest_small_without_tags(tmp_path: Path) -> None:
    out = import_movielens(latest(tmp_path, tags=False), tmp_path / "out")
    items = pd.read_parquet(out / "items.parquet")
    assert items["text"].tolist() == [
        "Toy Story (1995) Adventure Animation Children Comedy Fantasy",
        "American President, The (1995) Comedy Drama Romance",
        "Ünknown Film (2020)",
    ]


def test_crlf_and_blank_lines_are_tolerated(tmp_path: Path) -> None:
    src = ml1m(tmp_path, ratings_dat="1::20::5::978300760\r\n\r\n1::10::3::978300000\r\n")
    out = import_movielens(src, tmp_path / "out")
    inter = pd.read_parquet(out / "interactions.parquet")
    assert inter["item_id"].tolist() == [10, 20]


def test_detect_variant(tmp_path: Path) -> None:
    assert detect_variant(ml100k(tmp_path)) == "ml-100k"
    assert detect_variant(ml1m(tmp_path)) == "ml-1m"
    assert detect_variant(latest(tmp_path)) == "ml-latest-small"


def test_existing_output_is_not_clobbered(tmp_path: Path) -> None:
    src = ml1m(tmp_path)
    out = import_movielens(src, tmp_path / "out")
    with pytest.raises(FileExistsError, match="--overwrite"):
        import_movielens(src, out)
    import_movielens(src, out, overwrite=True, fmt="csv")
    assert (out / "items.csv").exists() and not (out / "items.parquet").exists()


# ----------------------------------------------------------------------------- errors


def test_unknown_layout(tmp_path: Path) -> None:
    src = _write(tmp_path / "weird", {"foo.txt": "x", "ratings.txt": "1,2"}, "utf-8")
    with pytest.raises(ValueError, match=rf"Directory '{re.escape(str(src))}' is not a known MovieLens layout\. "
                                         r"Files found: foo\.txt, ratings\.txt\.") as info:
        import_movielens(src, tmp_path / "out")
    msg = str(info.value)
    for expected in ("u.data", "u.item", "u.genre", "ratings.dat", "movies.dat", "ratings.csv", "movies.csv"):
        assert expected in msg
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weird"]


def test_incomplete_layout_is_unknown(tmp_path: Path) -> None:
    src = _write(tmp_path / "half", {"u.data": ML100K_DATA}, "latin-1")
    with pytest.raises(ValueError, match=r"is not a known MovieLens layout\. Files found: u\.data\. Expected the "
                                         r"files of one of: ml-100k: u\.data, u\.item, u\.genre;"):
        detect_variant(src)


def test_ambiguous_layout(tmp_path: Path) -> None:
    src = ml1m(tmp_path)
    _write(src, {"ratings.csv": LATEST_RATINGS, "movies.csv": LATEST_MOVIES}, "utf-8")
    with pytest.raises(ValueError, match=r"matches several MovieLens layouts\. Files found: movies\.csv, "
                                         r"movies\.dat, ratings\.csv, ratings\.dat\."):
        detect_variant(src)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"MovieLens source '.*nope' is not a directory"):
        import_movielens(tmp_path / "nope", tmp_path / "out")


@pytest.mark.parametrize(
    ("make", "override", "file", "line"),
    [
        # u.data line 3 has 3 fields
        (ml100k, {"u_data": "1\t1\t5\t881250949\n1\t2\t3\t881250949\n2\t1\t4\n"}, "u.data", 3),
        # blank line 2 still counts: bad rating on line 3
        (ml100k, {"u_data": "1\t1\t5\t881250949\n\n1\t2\tx\t881250949\n"}, "u.data", 3),
        # u.item line 2 genre flag 2
        (ml100k, {"u_item": "1|A (1995)|||u|0|0|1|1\n2|B (1996)|||u|0|2|0|0\n"}, "u.item", 2),
        # u.item line 1 misses a genre flag
        (ml100k, {"u_item": "1|A (1995)|||u|0|0|1\n"}, "u.item", 1),
        # ratings.dat line 2 has a non-integer user
        (ml1m, {"ratings_dat": "1::20::5::978300760\nabc::10::3::978300000\n"}, "ratings.dat", 2),
        # movies.dat line 3 has an extra field
        (ml1m, {"movies_dat": "10::A::Action\n20::B::Comedy\n30::C::Sci-Fi::extra\n"}, "movies.dat", 3),
        # ratings.csv line 3 has a bad timestamp
        (latest, {"ratings_csv": "userId,movieId,rating,timestamp\n1,5,4.5,1\n1,1,4.0,soon\n"}, "ratings.csv", 3),
        # ratings.csv line 4 has too many fields
        (latest, {"ratings_csv": "userId,movieId,rating,timestamp\n1,5,4.5,1\n1,1,4.0,2\n3,9,0.5,3,7\n"}, "ratings.csv", 4),
        # tags.csv line 2 has a bad movie id
        (latest, {"tags_csv": "userId,movieId,tag,timestamp\n2,x,pixar,1\n"}, "tags.csv", 2),
    ],
)
def test_malformed_line(tmp_path: Path, make, override: dict[str, str], file: str, line: int) -> None:
    src = make(tmp_path, **override)
    with pytest.raises(ValueError, match=f"^{re.escape(str(src / file))}: line {line}: "):
        import_movielens(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_csv_header(tmp_path: Path) -> None:
    src = latest(tmp_path, ratings_csv="user,movie,rating,timestamp\n1,5,4.5,1\n")
    with pytest.raises(ValueError, match=r"ratings\.csv: line 1: expected header"):
        import_movielens(src, tmp_path / "out")


def test_rating_of_unknown_movie(tmp_path: Path) -> None:
    src = ml1m(tmp_path, ratings_dat="1::20::5::978300760\n1::99::3::978300000\n")
    with pytest.raises(ValueError, match=r": 1 ratings refer to 1 movie id\(s\) missing from the movie file, "
                                         r"e\.g\. \[99\]"):
        import_movielens(src, tmp_path / "out")


def test_an_empty_ratings_file_is_an_error(tmp_path: Path) -> None:
    src = ml100k(tmp_path, u_data="")
    with pytest.raises(ValueError, match=r"u\.data: the ratings file holds no rating"):
        import_movielens(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_ratings_file_cut_inside_its_last_timestamp_is_an_error_naming_the_line(tmp_path: Path) -> None:
    whole = "1\t1\t5\t881250949\n1\t2\t3\t881250949\n2\t1\t4\t881250950\n"
    src = ml100k(tmp_path, u_data=whole[:-6])  # "...\t8812" : a 1970 timestamp, no newline
    with pytest.raises(ValueError, match=r"u\.data: line 3: time 8812 is before 1995"):
        import_movielens(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
