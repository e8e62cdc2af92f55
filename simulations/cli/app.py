"""`fedctx`: the typer app, its command groups, shared option parsing and the error boundary."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Optional


__all__ = ["main", "cli", "FAST_COMMANDS"]


# TensorFlow's C++ start-up lines (cuDNN/cuFFT/cuBLAS "Unable to register factory" on machines without a GPU)
# are noise; a real TensorFlow failure still raises in Python. Set the variable yourself to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: commands that answer a device's user at once: they run without rich (typer's help and error formatting,
#: ~0.2 s of a ~0.6 s start); typer supports its absence (click's plain help and errors). --help keeps rich.
FAST_COMMANDS = ("device", "export")

if len(sys.argv) > 1 and sys.argv[1] in FAST_COMMANDS and "--help" not in sys.argv:
    sys.modules.setdefault("rich", None)  # `import rich` raises ImportError: typer takes its no-rich path

import typer  # noqa: E402  (after the rich switch above)

cli = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Federated, privacy-preserving, context-aware recommender (Flower + TensorFlow).")

data_cli = typer.Typer(no_args_is_help=True, help="Make, import and check datasets.")

import_cli = typer.Typer(no_args_is_help=True, help="Import public datasets into the dataset format.")

device_cli = typer.Typer(no_args_is_help=True, help="Work offline on a device's state directory: recommend, "
                                                     "record feedback.")

export_cli = typer.Typer(no_args_is_help=True, help="Export a device's model for on-device inference.")

cli.add_typer(data_cli, name="data")

data_cli.add_typer(import_cli, name="import")

cli.add_typer(device_cli, name="device")

cli.add_typer(export_cli, name="export")


def _pairs(items: List[str]) -> dict:
    """--context column=value options as a dict."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--context expects column=value. Found {item!r}. Example: --context device=mobile.")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _fail(err: Exception) -> None:
    """An anticipated error (common.errors.anticipated) as one line and rc 2 (130 for an interrupted run);
    anything else is raised again, for main()'s error boundary (a bug: its trace goes to a file)."""
    from common.errors import Interrupted, anticipated

    if not anticipated(err):
        raise err
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code=130 if isinstance(err, Interrupted) else 2)


def _config(data: Optional[str], sets: List[str], out: Optional[Path]):
    from common.config import config_from_mapping, parse_overrides

    values = parse_overrides(sets or [])
    if data is not None:
        values["data"] = data
    if out is not None:
        values["run-dir"] = str(out)
    return config_from_mapping(values)


def main() -> None:
    """The error boundary (common/errors.py): one message and rc 2 for every error, a trace file for a bug;
    Ctrl-C ends with rc 130."""
    from common.errors import message

    try:
        cli(prog_name="fedctx")
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except Exception as exc:  # the commands catch their anticipated errors; this is the last line
        typer.echo(f"error: {message(exc)}", err=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
