"""The error boundary: anticipated errors are their own message; a bug leaves its trace in a file it names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from common.config import ConfigError
from common.errors import SERVER_ERROR_ENV, RunFailed, message, raise_recorded, record_server_error


def test_an_anticipated_error_is_its_own_message():
    assert message(ConfigError("dim: must be >= 1. Found 0.")) == "dim: must be >= 1. Found 0."


def test_a_bug_names_the_file_that_holds_its_trace():
    def deep():
        return {}["missing-key"]

    try:
        deep()
    except KeyError as exc:
        text = message(exc)
    assert text.startswith("unexpected KeyError") and "This is a bug" in text
    path = Path(re.search(r"trace is in (\S+) ", text).group(1))
    trace = path.read_text()
    assert "Traceback" in trace and "in deep" in trace and "missing-key" in trace
    path.unlink()


def test_a_simulated_server_records_its_error_for_the_harness(tmp_path, monkeypatch):
    monkeypatch.delenv(SERVER_ERROR_ENV, raising=False)
    assert record_server_error(ConfigError("x")) is False  # a deployment: the ServerApp logs and raises
    path = tmp_path / "err.json"
    path.write_text("")
    raise_recorded(path)  # nothing recorded: no error
    monkeypatch.setenv(SERVER_ERROR_ENV, str(path))
    assert record_server_error(ConfigError("population: must be set")) is True
    assert json.loads(path.read_text())["type"] == "ConfigError"
    with pytest.raises(RunFailed, match="population: must be set"):
        raise_recorded(path)


def test_every_anticipated_error_shares_one_base_and_is_its_own_message():
    """One base class: whatever command meets one of these prints its message as one line and exits with 2."""
    from client.device_state import DeviceError
    from common.data import DataError
    from common.errors import FedctxError, Interrupted, anticipated
    from common.schema import SchemaMismatch
    from server.content import ContentError

    errors = [ConfigError("dim: must be >= 1. Found 0."), DataError("items.csv", "item_id must be unique", value="7", fix="remove the row"),
              ContentError("content-path: no such file"), SchemaMismatch("schema hash 1 does not match"),
              DeviceError("user 'x': not on this device"), RunFailed("round 3 failed"), Interrupted("SIGTERM")]
    for exc in errors:
        assert isinstance(exc, FedctxError) and anticipated(exc)
        assert message(exc) == str(exc) and "\n" not in message(exc)
    assert isinstance(errors[3], RuntimeError) and isinstance(errors[4], ValueError)  # builtin bases kept
    assert not anticipated(KeyError("x")) and not anticipated(RuntimeError("x"))
