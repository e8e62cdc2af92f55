"""`fedctx`, the product's command line: app.py (the app, shared option parsing, the error boundary) and one module
per command group: data.py (`fedctx data`), run.py (`simulate`, `sweep`, `bench`), device.py (`device`, `export`)."""

from simulations.cli.app import FAST_COMMANDS, cli, main
from simulations.cli import data, device, run  # noqa: E402,F401  (each registers its commands on `cli`)

__all__ = ["main", "cli", "FAST_COMMANDS"]
