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
    from common.data.loader import DataError
    from common.errors import FedctxError, Interrupted, anticipated
    from common.data.schema import SchemaMismatch
    from server.content import ContentError

    errors = [ConfigError("dim: must be >= 1. Found 0."), DataError("items.csv", "item_id must be unique", value="7", fix="remove the row"),
              ContentError("content-path: no such file"), SchemaMismatch("schema hash 1 does not match"),
              DeviceError("user 'x': not on this device"), RunFailed("round 3 failed"), Interrupted("SIGTERM")]
    for exc in errors:
        assert isinstance(exc, FedctxError) and anticipated(exc)
        assert message(exc) == str(exc) and "\n" not in message(exc)
    assert isinstance(errors[3], RuntimeError) and isinstance(errors[4], ValueError)  # builtin bases kept
    assert not anticipated(KeyError("x")) and not anticipated(RuntimeError("x"))


def _anticipated_errors():
    from client.device_state import DeviceError
    from common.data.loader import DataError
    from common.data.schema import SchemaMismatch
    from server.content import ContentError

    return [ConfigError("dim: must be >= 1. Found 0."),
            DataError("items.csv", "item_id must be unique", value="7", fix="remove the row"),
            ContentError("content-path: no such file"), SchemaMismatch("schema hash 1 does not match its content"),
            DeviceError("user 'x': not on this device")]


@pytest.mark.parametrize("index", range(5))
def test_the_command_line_reports_each_anticipated_error_as_one_line_and_rc_2(index, tmp_path, monkeypatch):
    """Whatever a device command meets (here raised where it loads the state directory), a FedctxError is one
    line, `error: <its message>`, and rc 2; a bug is not swallowed as one (main()'s boundary writes its trace)."""
    from typer.testing import CliRunner

    from client.device_state import DeviceState
    from simulations.cli.app import cli

    exc = _anticipated_errors()[index]

    def load(state_dir):
        raise exc

    monkeypatch.setattr(DeviceState, "load", staticmethod(load))
    res = CliRunner().invoke(cli, ["device", "recommend", "--state", str(tmp_path), "--user", "u"])
    assert res.exit_code == 2, res.output
    assert res.output.strip().splitlines() == [f"error: {exc}"]


def test_the_command_line_does_not_report_a_bug_as_an_anticipated_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from client.device_state import DeviceState
    from simulations.cli.app import cli

    def load(state_dir):
        raise RuntimeError("a bug")

    monkeypatch.setattr(DeviceState, "load", staticmethod(load))
    res = CliRunner().invoke(cli, ["device", "recommend", "--state", str(tmp_path), "--user", "u"])
    assert res.exit_code != 2 and isinstance(res.exception, RuntimeError)  # on to main(): trace file, "a bug"
