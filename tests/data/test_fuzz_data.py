"""Property-based fuzzing of the data loader: any mutation of a valid dataset directory (cells, encodings,
NaN/inf, huge fields, delimiters, quotes, truncation, lines, dataset.toml) either loads or fails with a DataError
that names a file of the dataset; never with another exception.

CI runs FEDCTX_FUZZ_EXAMPLES (default 60) examples with a fixed seed; a long manual run:
    FEDCTX_FUZZ_EXAMPLES=10000 python -m pytest tests/data/test_fuzz_data.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from common.data.loader import DataError, load_dataset

EXAMPLES = int(os.environ.get("FEDCTX_FUZZ_EXAMPLES", "60"))

TOML = b"""[dataset]
name = "fuzz"
interactions = "interactions.csv"
items = "items.csv"
time-column = "ts"
label-column = "rating"

[context]
columns = { device = "categorical", temp = "numeric", hour = { kind = "cyclic", period = 24 } }
"""
ITEMS = b"item_id,text\na,alpha beta\nb,gamma delta\nc,epsilon\nd,zeta eta theta\n"
INTERACTIONS = (b"user_id,item_id,ts,rating,device,temp,hour\n"
                + b"".join(f"u{u},{'abcd'[(u + k) % 4]},{1_000_000 + 60 * k},{1 + (u + k) % 5},"
                           f"{('mobile', 'desktop')[k % 2]},{20 + k % 7},{k % 24}\n".encode()
                           for u in range(4) for k in range(5)))
FILES = {"dataset.toml": TOML, "items.csv": ITEMS, "interactions.csv": INTERACTIONS}

# what a cell may become: the odd values people's files hold
CELLS = st.one_of(
    st.sampled_from([b"", b"NaN", b"nan", b"inf", b"-inf", b"1e309", b"-1", b"0", b"1.5", b"null", b"None",
                     b"\"", b"\"\"", b",", b";", b"\t", b"\n", b"\r\n", b"\\", b"\xff\xfe", b"\xe9", b"\xc3\x28",
                     b"9" * 40, b"x" * 5000, b"\x00", "\u00e9\u4e2d\U0001f600".encode()]),
    st.binary(max_size=30),
    st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")),
)


def _mutate(data: st.DataObject, files: dict[str, bytes]) -> dict[str, bytes]:
    name = data.draw(st.sampled_from(sorted(files)), label="file")
    text = files[name]
    kind = data.draw(st.sampled_from(["cell", "cell", "truncate", "drop-line", "dup-line", "bytes", "encoding"]),
                     label="mutation")
    lines = text.split(b"\n")
    if kind == "cell":
        row = data.draw(st.integers(0, max(len(lines) - 2, 0)), label="row")
        cells = lines[row].split(b",")
        col = data.draw(st.integers(0, len(cells) - 1), label="column")
        cells[col] = data.draw(CELLS, label="value")
        lines[row] = b",".join(cells)
        text = b"\n".join(lines)
    elif kind == "truncate":
        text = text[: data.draw(st.integers(0, len(text)), label="cut")]
    elif kind == "drop-line":
        del lines[data.draw(st.integers(0, len(lines) - 1), label="line")]
        text = b"\n".join(lines)
    elif kind == "dup-line":
        i = data.draw(st.integers(0, len(lines) - 1), label="line")
        lines.insert(i, lines[i])
        text = b"\n".join(lines)
    elif kind == "bytes":
        pos = data.draw(st.integers(0, max(len(text) - 1, 0)), label="at")
        text = text[:pos] + data.draw(st.binary(min_size=1, max_size=8), label="bytes") + text[pos + 1:]
    else:
        encoding = data.draw(st.sampled_from(["latin-1", "utf-16", "utf-8-sig"]), label="encoding")
        text = text.decode("utf-8", "replace").encode(encoding, "replace")
    return {**files, name: text}


@settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 100,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_every_mutated_dataset_loads_or_fails_with_a_data_error_naming_its_file(tmp_path_factory, data):
    files = dict(FILES)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        files = _mutate(data, files)
    root = tmp_path_factory.mktemp("fuzz")
    for name, content in files.items():
        (root / name).write_bytes(content)
    try:
        ds = load_dataset(root)
    except DataError as err:
        named = Path(str(err.file))
        assert named == root or named.parent == root, err  # a file of the dataset (maybe one the toml names)
        assert str(err).strip()
        return
    assert ds.n_users >= 1 and len(ds.train) + len(ds.val) + len(ds.test) >= 1
    for part in (ds.train, ds.val, ds.test):  # what loads is usable: finite float32 features
        assert np.isfinite(part.context).all()


def test_the_unmutated_fixture_loads(tmp_path):
    for name, content in FILES.items():
        (tmp_path / name).write_bytes(content)
    ds = load_dataset(tmp_path)
    assert ds.n_users == 4 and ds.n_items == 4
