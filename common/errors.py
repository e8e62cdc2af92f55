"""One error boundary for the command line and the apps.

An anticipated error (a bad setting, bad data, a damaged checkpoint, an output path that cannot be written) is
one message that names the rule, the value found and the fix; the command exits with 2. Any other exception is
a bug: its full trace goes to a file, and the message says where.

Inside a simulation the ServerApp runs in a thread of Flower's engine, which would print its exception three
times over (Flower's log, the thread's hook, the engine's RuntimeError). So the harness names a file in
SERVER_ERROR_ENV; the ServerApp writes its exception there and returns, and the harness raises it as RunFailed.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import traceback
from pathlib import Path

__all__ = ["FedctxError", "RunFailed", "Interrupted", "SERVER_ERROR_ENV", "stop_requested", "anticipated", "record_server_error", "raise_recorded", "trace_file"]

#: the file a simulated ServerApp writes its exception to (set by the simulation harness only)
SERVER_ERROR_ENV = "FEDCTX_SERVER_ERROR_FILE"


class FedctxError(Exception):
    """The base of every anticipated error: its message is written for the user (the file or setting, the rule,
    the value found, the fix), so a command prints it as one line and exits with 2. ConfigError, DataError,
    ContentError, SchemaMismatch, DeviceError and RunFailed derive from it (each also keeps its builtin base,
    ValueError or RuntimeError, for code that catches those)."""


class RunFailed(FedctxError, RuntimeError):
    """A run stopped on an error; the message is the whole story (and, for a bug, where its trace is)."""


class Interrupted(RunFailed):
    """A run stopped by SIGINT or SIGTERM between rounds (its last checkpoint is intact)."""


def stop_requested() -> str | None:
    """In a simulation, the signal that asked the run to stop ("SIGINT", "SIGTERM"), else None. The harness's
    signal handler writes it to SERVER_ERROR_ENV's file + ".stop" (a file, so that it reaches the ServerApp thread
    whatever modules Flower reloads)."""
    path = os.environ.get(SERVER_ERROR_ENV)
    if not path:
        return None
    try:
        return Path(path + ".stop").read_text().strip() or "a signal"
    except OSError:
        return None


def anticipated(exc: BaseException) -> bool:
    """Errors whose message is written for the user (FedctxError, and the builtin errors of a bad argument or
    of a file, whose messages name the value or the path); everything else is a bug."""
    return isinstance(exc, (FedctxError, ValueError, OSError, MemoryError))


def trace_file(exc: BaseException) -> Path:
    """Write exc's full trace to a new file in the temp directory; its path."""
    fd, name = tempfile.mkstemp(prefix=time.strftime("fedctx-error-%Y%m%d-%H%M%S-"), suffix=".log")
    with os.fdopen(fd, "w") as f:
        f.write("".join(traceback.format_exception(exc)))
    return Path(name)


def message(exc: BaseException) -> str:
    """The one line a user reads for exc."""
    if anticipated(exc):
        return str(exc)
    return (f"unexpected {type(exc).__name__}: {exc}. This is a bug; the full trace is in {trace_file(exc)} "
            f"(please attach it to a report).")


def record_server_error(exc: BaseException) -> bool:
    """In a simulation: write exc's message to SERVER_ERROR_ENV's file and say True; elsewhere False."""
    path = os.environ.get(SERVER_ERROR_ENV)
    if not path:
        return False
    Path(path).write_text(json.dumps({"type": type(exc).__name__, "message": message(exc),
                                      "interrupted": isinstance(exc, Interrupted)}))
    return True


def raise_recorded(path: Path) -> None:
    """Raise RunFailed with the ServerApp's recorded error, if it wrote one."""
    try:
        text = Path(path).read_text()
    except OSError:
        return
    if text.strip():
        record = json.loads(text)
        raise (Interrupted if record.get("interrupted") else RunFailed)(record["message"])
