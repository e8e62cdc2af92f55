"""`fedctx device recommend / record` and `fedctx export tflite` on a device's state directory, offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from flwr.app import ConfigRecord, Context, RecordDict
from typer.testing import CliRunner

from client.app import train_reply
from client.device_state import DeviceState
from client.node import NODE_STATE_FILE, STORE_FILE, node_for
from client.state_files import DATA_INDEX_FILE
from common.config import Config
from common.data.loader import load_dataset
from common.model.scoring import DENSE_NAMES, ials_solve
from common.model.formula import ModelShape, init_shared, score_items
from common.federation.params import to_record
from common.data.schema import build_schema
from server.content import ContentEncoder
from simulations.cli.app import cli


@pytest.fixture()
def device(small_synthetic, tmp_path, request):
    """A device that took part in one round: its own copy of the data (to record into) and its state-dir.
    Indirect parameters: Config settings (e.g. {"loss": "ials"})."""
    data = tmp_path / "data"
    shutil.copytree(small_synthetic, data)
    cfg = Config(data=str(data), dim=4, text_dim=8, text_epochs=2, negatives=3, local_steps=1,
                 **getattr(request, "param", {}))
    ds, ctx, content = _one_round(cfg, {"data-dir": str(data), "state-dir": str(tmp_path / "state")})
    return tmp_path / "state", data, ds, ctx, content


def _one_round(cfg: Config, node_config: dict):
    """A node of cfg's dataset (node_config: a device's data-dir and state-dir, or a simulated partition) after
    one training round, its state saved: (the prepared dataset, its Flower Context, the round's message)."""
    ds = load_dataset(cfg.data)
    item_h = ContentEncoder(cfg.text_dim, cfg.text_epochs, seed=0).item_vectors(ds.item_texts)
    schema = build_schema(ds.item_ids, ds.context_encoder, {"encoder": "test"}, item_h)
    params = init_shared(ModelShape(ds.n_items, cfg.text_dim, cfg.dim, ds.context_dim, True), seed=0)
    content = RecordDict({"arrays": to_record(params), "content": to_record({"item-vectors": item_h}),
                          "schema": ConfigRecord({"json": schema.to_json()}),
                          "config": ConfigRecord({"server-round": 1, "sample-rate": 1.0, "sampling-seed": 7,
                                                  "schema-hash": schema.hash})})
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config=cfg.to_flwr(), node_config=node_config)
    node = node_for(ctx, content, training=True)
    train_reply(node, content)
    node.save(ctx)
    return ds, ctx, content


def _run(*args):
    res = CliRunner().invoke(cli, [str(a) for a in args])
    return res.exit_code, res.output


def test_recommend_excludes_history_and_explains_each_score(device):
    state, _, ds, _, _ = device
    user = str(ds.user_ids[0])
    code, out = _run("device", "recommend", "--state", state, "--user", user, "--context", "device=mobile",
                     "-k", "5", "--json")
    assert code == 0, out
    doc = json.loads(out)
    recs = doc["recommendations"]
    assert len(recs) == 5 and doc["theta"].startswith("trained")
    dev = DeviceState.load(state)
    history = set(dev.history(user)[0].tolist())
    assert len(history) >= 3 and not history & {r["item"] for r in recs}
    for r in recs:
        assert r["score"] == pytest.approx(r["user"] + r["context_interaction"] + r["context_shift"] + r["item_bias"])
        assert {s["item"] for s in r["similar_history"]} <= history
    assert [r["score"] for r in recs] == sorted((r["score"] for r in recs), reverse=True)
    code, table = _run("device", "recommend", "--state", state, "--user", user)
    assert code == 0 and "no-ctx" in table


def test_record_appends_one_row_refreshes_theta_and_leaves_other_users_alone(device):
    state, data, ds, ctx, content = device
    before = DeviceState.load(state)
    user, other = str(ds.user_ids[0]), str(ds.user_ids[1])
    rows = pd.read_parquet(data / "interactions.parquet")
    item = str(ds.item_ids[7])
    code, out = _run("device", "record", "--state", state, "--user", user, "--item", item, "--context",
                     "device=tablet", "--time", "1700000000")
    assert code == 0, out
    after_rows = pd.read_parquet(data / "interactions.parquet")
    assert len(after_rows) == len(rows) + 1
    pd.testing.assert_frame_equal(after_rows.iloc[: len(rows)], rows)  # every earlier row as it was
    assert after_rows.iloc[-1]["user_id"] == user and after_rows.iloc[-1]["item_id"] == item
    after = DeviceState.load(state)
    i, j = list(before.user_keys).index(user), list(before.user_keys).index(other)
    assert not np.allclose(after.theta[i], before.theta[i])  # refreshed at once
    np.testing.assert_array_equal(after.theta[j], before.theta[j])
    # a new user joins the device's data; the next round's store holds it, and everyone else keeps theta_u
    code, out = _run("device", "record", "--state", state, "--user", "newcomer", "--item", item)
    assert code == 2 and "'newcomer': not on this device" in out  # a typo must not add a user
    code, out = _run("device", "record", "--state", state, "--user", "newcomer", "--item", item, "--new-user")
    assert code == 0, out
    content["config"]["server-round"] = 2
    node = node_for(ctx, content, training=True)  # the next round
    assert "newcomer" in set(DeviceState.load(state).user_keys)
    k = list(node.store.user_keys).index(other)
    np.testing.assert_array_equal(node.theta[k], before.theta[j])
    assert (state / STORE_FILE).is_file() and (state / NODE_STATE_FILE).is_file()


def test_record_refuses_what_does_not_fit_the_schema(device):
    state, data, ds, _, _ = device
    before = (data / "interactions.parquet").read_bytes()
    user = str(ds.user_ids[0])
    code, out = _run("device", "record", "--state", state, "--user", user, "--item", "no-such-item")
    assert code == 2 and "not in the catalogue" in out
    code, out = _run("device", "record", "--state", state, "--user", user, "--item", str(ds.item_ids[0]),
                     "--context", "weather=rain")
    assert code == 2 and "weather" in out and "device" in out
    assert (data / "interactions.parquet").read_bytes() == before  # nothing half-written
    code, out = _run("device", "recommend", "--state", data / "nothing-here", "--user", "u")
    assert code == 2 and "state-dir" in out


def test_export_tflite_writes_the_scorer(device, tmp_path):
    state, _, _, _, _ = device
    code, out = _run("export", "tflite", "--state", state, "--out", tmp_path / "scorer.tflite")
    assert code == 0, out
    assert (tmp_path / "scorer.tflite").stat().st_size > 1000


#: modules whose import a device command's start should not pay (TensorFlow and Flower: seconds; pandas,
#: pyarrow and rich: ~0.8 s together)
HEAVY = ("tensorflow", "flwr", "pandas", "pyarrow", "rich")


def _fedctx(*args, tmp_path) -> tuple[int, str, str, list[str]]:
    """The real command line in a fresh interpreter (as the `fedctx` console script runs it: sys.argv is set
    before the import): rc, stdout, stderr, and which of HEAVY the process had imported when it exited."""
    seen = tmp_path / "modules.json"
    code = ("import atexit, json, sys\n"
            f"atexit.register(lambda: open({str(seen)!r}, 'w').write(json.dumps("
            f"[m for m in {HEAVY!r} if sys.modules.get(m) is not None])))\n"
            f"sys.argv = ['fedctx', *{[str(a) for a in args]!r}]\n"
            "from simulations.cli import main\n"
            "main()\n")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    return done.returncode, done.stdout, done.stderr, json.loads(seen.read_text())


def test_device_commands_run_without_importing_tensorflow(device, tmp_path):
    """The device's answer is numpy only: a fresh `fedctx device recommend` (and `record`) never imports
    TensorFlow (nor Flower, which imports it), and its scores are the model's (common.model.formula.score_items, here)."""
    state, _, ds, _, _ = device
    user = str(ds.user_ids[0])
    code, out, err, modules = _fedctx("device", "recommend", "--state", state, "--user", user, "--context",
                                      "device=mobile", "--time", "1700000000", "-k", "4", "--json", tmp_path=tmp_path)
    assert code == 0, err
    assert modules == []  # the node left a fresh data index: no pandas, pyarrow (nor rich) either
    doc = json.loads(out)
    dev = DeviceState.load(state)
    theta, _ = dev.theta_for(user)
    x = dev.context_vector({"device": "mobile"}, 1700000000)
    dense = {k: dev.params[k] for k in DENSE_NAMES}
    ref = score_items(dense, theta[None], x[None], dev.item_h, dev.params.get("items/embedding"),
                      dev.params.get("items/bias"))[0].astype(np.float64)
    ref[dev.history(user)[0]] = -np.inf
    assert [r["item"] for r in doc["recommendations"]] == np.argsort(-ref, kind="stable")[:4].tolist()
    np.testing.assert_allclose([r["score"] for r in doc["recommendations"]], np.sort(ref)[::-1][:4], rtol=1e-5)
    # feedback too: the refresh's gradient steps are numpy (tests/client/test_device.py holds them equal to local_train)
    code, out, err, modules = _fedctx("device", "record", "--state", state, "--user", user, "--item",
                                      str(ds.item_ids[7]), tmp_path=tmp_path)
    assert code == 0 and "refreshed" in out, err
    assert "tensorflow" not in modules and "flwr" not in modules  # pandas: it reads the data to index it again
    assert not np.allclose(DeviceState.load(state).theta_for(user)[0], theta)


def test_an_unknown_user_is_an_error_unless_new_user(device):
    """A misspelt id must not read as a cold start: the error says how many users the device holds and shows
    one of their ids; --new-user asks for the cold start on purpose, and is refused for an id the device holds."""
    state, _, ds, _, _ = device
    held = sorted(set(DeviceState.load(state).user_keys.tolist()))
    typo = str(ds.user_ids[0]) + "x"
    code, out = _run("device", "recommend", "--state", state, "--user", typo)
    assert code == 2
    assert out.startswith(f"error: user '{typo}': not on this device (it holds {len(held)} users, e.g. "
                          f"'{held[0]}'") and "--new-user" in out and len(out.strip().splitlines()) == 1
    code, out = _run("device", "recommend", "--state", state, "--user", typo, "--new-user", "--json")
    assert code == 0, out
    assert json.loads(out)["theta"].startswith("new user without history")
    code, out = _run("device", "recommend", "--state", state, "--user", held[0], "--new-user")
    assert code == 2 and "leave out --new-user" in out


@pytest.mark.parametrize("damaged", ["schema.json", "content.npz", "global_model.npz", "node-state.npz",
                                     "device.json"])
def test_a_damaged_state_file_is_one_line_and_rc_2(device, tmp_path, damaged):
    """Through the real command line: a state file cut short is one line naming the file and the fix, rc 2 (no
    "unexpected ... bug" and no trace)."""
    state, _, ds, _, _ = device
    path = state / damaged
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    code, out, err, _ = _fedctx("device", "recommend", "--state", state, "--user", str(ds.user_ids[0]),
                                tmp_path=tmp_path)
    assert code == 2 and out == ""
    assert err.startswith(f"error: {path}: damaged") and "Fix:" in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("device", [{"loss": "ials", "l2": 0.01}], indirect=True)
def test_under_ials_the_device_solves_theta_from_the_history_and_the_global_model(device):
    """loss=ials: recommend uses theta_u solved from the user's whole history under the stored global model, and
    a recorded engagement is in the next solve at once."""
    state, _, ds, _, _ = device
    user = str(ds.user_ids[0])
    dev = DeviceState.load(state)
    items, ctx, _ = dev.history(user)
    theta, source = dev.theta_for(user)
    assert source.startswith("solved")
    np.testing.assert_allclose(theta, ials_solve(dev.params, dev.item_h, np.array([0, len(items)]), items, ctx,
                                                 dev.cfg.unobserved_weight, 0.01)[0], rtol=1e-6)
    code, out = _run("device", "recommend", "--state", state, "--user", user, "-k", "3", "--json")
    assert code == 0 and json.loads(out)["theta"].startswith("solved"), out
    code, out = _run("device", "record", "--state", state, "--user", user, "--item", str(ds.item_ids[7]))
    assert code == 0, out
    again, _ = DeviceState.load(state).theta_for(user)
    assert len(DeviceState.load(state).history(user)[0]) == len(items) + 1 and not np.allclose(again, theta)


def test_export_tflite_prints_only_its_result_and_runs_without_tensorflow(device, tmp_path):
    """A fresh `fedctx export tflite` never imports TensorFlow (nor Flower), prints its one result line and
    nothing on stderr; the file it writes ranks the catalogue as the model does (`score_items`) for several of
    the device's users and contexts, run through TensorFlow's TFLite interpreter (here, in the test)."""
    from client.tflite import TFLiteScorer

    state, _, ds, _, _ = device
    code, out, err, modules = _fedctx("export", "tflite", "--state", state, "--out", tmp_path / "s.tflite", "-k", "6",
                                      tmp_path=tmp_path)
    assert code == 0, err
    assert out.splitlines() == [out.strip()] and out.startswith(f"tflite: {tmp_path / 's.tflite'} (")
    assert err == ""
    assert modules == []
    dev = DeviceState.load(state)
    dense = {k: dev.params[k] for k in DENSE_NAMES}
    scorer = TFLiteScorer(tmp_path / "s.tflite")
    for user, pairs, t in ((ds.user_ids[0], {"device": "mobile"}, 1700000000),
                           (ds.user_ids[1], {"device": "desktop"}, 1700050000),
                           (ds.user_ids[2], {}, 1690000000)):
        theta, _ = dev.theta_for(str(user))
        x = dev.context_vector(pairs, t)
        ref = score_items(dense, theta[None], x[None], dev.item_h, dev.params.get("items/embedding"),
                          dev.params.get("items/bias"))[0]
        got = scorer(theta, x)
        np.testing.assert_allclose(got["scores"], ref, rtol=1e-5, atol=1e-6)
        assert got["top_indices"].tolist() == np.argsort(-ref, kind="stable")[:6].tolist()
        np.testing.assert_allclose(got["top_values"], ref[got["top_indices"]], rtol=1e-5, atol=1e-6)


def _history_from_the_files(data, schema, user: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference: the user's rows read straight from the interactions file with pandas, in file order, rows
    of items outside the catalogue left out; (item indices, contexts encoded with the schema, times)."""
    rows = pd.read_parquet(data / "interactions.parquet")
    mine = rows[rows["user_id"].astype(str) == user].reset_index(drop=True)
    position = {item: i for i, item in enumerate(schema.item_ids)}
    items = np.array([position.get(str(i), -1) for i in mine["item_id"]], np.int64)
    time = mine["timestamp"].to_numpy(np.int64)
    ctx = schema.context.transform(mine[["device"]], time)
    return items[items >= 0], ctx[items >= 0], time[items >= 0]


def _recommended(state, user: str, k: int, tmp_path) -> tuple[list[int], list[str]]:
    """(item indices recommended by a fresh `fedctx device recommend --json`, HEAVY modules it imported)."""
    code, out, err, modules = _fedctx("device", "recommend", "--state", state, "--user", user, "--context",
                                      "device=tablet", "--time", "1700000000", "-k", str(k), "--json",
                                      tmp_path=tmp_path)
    assert code == 0, err
    return [r["item"] for r in json.loads(out)["recommendations"]], modules


def test_the_data_index_holds_each_users_history_as_the_files_do(device):
    """Every user's history read from the device's data index equals the rows read from the data file with
    pandas (items, encoded contexts, times, file order); an id without rows has none."""
    state, data, ds, _, _ = device
    dev = DeviceState.load(state)
    assert (state / DATA_INDEX_FILE).is_file()  # the node kept it when it saved its state
    for user in [*map(str, ds.user_ids), "nobody"]:
        got, want = dev.history(user), _history_from_the_files(data, dev.schema, user)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    assert len(dev.history(str(ds.user_ids[0]))[0]) > 0


def test_a_stale_data_index_is_rebuilt_so_answers_follow_the_data(device, tmp_path):
    """recommend reads a fresh index without pandas. Once the data file changes (edited by hand here, written in
    place) the index is stale: the next recommend reads the file again (pandas) and its answer follows the new
    data (the item now in the user's history is no longer recommended), and keeps the new index, so the one
    after is pandas-free again. A damaged index is rebuilt the same way. `device record` leaves a fresh index
    behind it: the recommend after it is pandas-free and excludes the recorded item."""
    state, data, ds, _, _ = device
    user = str(ds.user_ids[0])
    before, modules = _recommended(state, user, 5, tmp_path)
    assert modules == []
    rows = pd.read_parquet(data / "interactions.parquet")
    extra = rows[rows["user_id"] == user].iloc[[0]].assign(item_id=str(ds.item_ids[before[0]]))
    path = data / "interactions.parquet"
    with open(path, "r+b") as f:  # in place: same file (inode), new content
        body = pd.concat([rows, extra]).to_parquet(index=False)
        f.seek(0), f.truncate(), f.write(body)
    after, modules = _recommended(state, user, 5, tmp_path)
    assert before[0] not in after and after[:4] == before[1:]
    assert "pandas" in modules  # read again
    dev = DeviceState.load(state)
    np.testing.assert_array_equal(dev.history(user)[0], _history_from_the_files(data, dev.schema, user)[0])
    assert _recommended(state, user, 5, tmp_path) == (after, [])
    (state / DATA_INDEX_FILE).write_bytes((state / DATA_INDEX_FILE).read_bytes()[:100])  # damaged
    assert _recommended(state, user, 5, tmp_path) == (after, ["pandas", "pyarrow"])
    code, out, err, _ = _fedctx("device", "record", "--state", state, "--user", user, "--item",
                                str(ds.item_ids[after[0]]), tmp_path=tmp_path)
    assert code == 0, err
    again, modules = _recommended(state, user, 5, tmp_path)
    assert modules == [] and after[0] not in again


def test_device_help_keeps_rich_formatting(tmp_path):
    """The device commands run without rich (simulations.cli.app.FAST_COMMANDS), but their --help keeps typer's rich
    formatting (its option panel)."""
    code, out, err, modules = _fedctx("device", "recommend", "--help", tmp_path=tmp_path)
    assert code == 0, err
    assert "rich" in modules and "--new-user" in out and "╭─ Options" in out


def test_a_simulated_device_reads_the_runs_data_without_keeping_a_copy(small_synthetic, small_cache, tmp_path,
                                                                         monkeypatch):
    """A simulated device's data is the whole run's dataset: its histories are read from the files (equal to the
    reference) but no data index is written into each device's directory."""
    monkeypatch.setenv("FEDCTX_CACHE", str(small_cache))
    cfg = Config(data=str(small_synthetic), dim=4, text_dim=8, text_epochs=2, negatives=3, local_steps=1,
                 run_dir=str(tmp_path / "run"))
    ds, _, _ = _one_round(cfg, {"partition-id": 0, "num-partitions": 2})
    state = tmp_path / "run" / "devices" / "node-0"
    dev = DeviceState.load(state)
    assert dev.simulated
    user = str(ds.user_ids[-1])  # another shard's user: the run's data holds it too
    for g, w in zip(dev.history(user), _history_from_the_files(small_synthetic, dev.schema, user)):
        np.testing.assert_array_equal(g, w)
    assert len(dev.history(user)[0]) and not (state / DATA_INDEX_FILE).exists()


def test_a_device_without_an_items_file_keeps_its_index_and_shows_item_ids(device, tmp_path):
    """The items file is optional on a device (titles only): without it recommend shows item ids, and the index
    it keeps stays fresh (the next recommend is pandas-free); once the file is back, titles return."""
    state, data, ds, _, _ = device
    user = str(ds.user_ids[0])
    items = data / "items.parquet"
    items.rename(tmp_path / "items.parquet")
    _, modules = _recommended(state, user, 3, tmp_path)
    assert "pandas" in modules  # read again: the items file is gone
    code, out, err, modules = _fedctx("device", "recommend", "--state", state, "--user", user, "-k", "3",
                                      tmp_path=tmp_path)
    assert code == 0 and modules == [], err
    first = out.splitlines()[3].split()
    assert first[1] in set(map(str, ds.item_ids)) and first[2].startswith(("+", "-"))  # rank, id, score
    (tmp_path / "items.parquet").rename(items)
    code, out, err, modules = _fedctx("device", "recommend", "--state", state, "--user", user, "-k", "3",
                                      tmp_path=tmp_path)
    assert code == 0 and "pandas" in modules and not out.splitlines()[3].split()[2].startswith(("+", "-")), err


def test_a_new_schema_makes_the_data_index_stale(device, monkeypatch):
    """The index is encoded with the schema: under another schema (a new catalogue order or context encoding
    from the server) it is read from the files again and kept under that schema's hash."""
    import client.device_state as device_state

    state, data, _, _, _ = device
    dev = DeviceState.load(state)
    other = build_schema(dev.schema.item_ids[::-1], dev.schema.context, {"encoder": "other"}, dev.item_h[::-1])
    builds = []
    real = device_state._build_index
    monkeypatch.setattr(device_state, "_build_index", lambda *a: builds.append(a[0].hash) or real(*a))
    device_state.data_index(state, dev.schema, data)
    assert builds == []  # fresh under the node's schema
    flipped = device_state.data_index(state, other, data)
    assert builds == [other.hash] and other.hash in str(np.load(state / DATA_INDEX_FILE)["key"])
    mine = device_state.data_index(state, dev.schema, data)
    assert builds == [other.hash, dev.schema.hash]
    n = dev.schema.n_items
    np.testing.assert_array_equal(flipped.items, n - 1 - mine.items)  # the same rows in the reversed catalogue
