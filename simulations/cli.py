"""`fedctx`: the command line of the project (data, simulate, bench)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import typer

__all__ = ["main", "cli"]

cli = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Federated, privacy-preserving, context-aware recommender (Flower + TensorFlow).")
data_cli = typer.Typer(no_args_is_help=True, help="Make, import and check datasets.")
import_cli = typer.Typer(no_args_is_help=True, help="Import public datasets into the dataset format.")
cli.add_typer(data_cli, name="data")
data_cli.add_typer(import_cli, name="import")


def _fail(err: Exception) -> None:
    typer.echo(f"error: {err}", err=True)
    raise typer.Exit(code=2)


def _config(data: Optional[str], sets: List[str], out: Optional[Path]):
    from common.config import config_from_mapping, parse_overrides

    values = parse_overrides(sets or [])
    if data is not None:
        values["data"] = data
    if out is not None:
        values["run-dir"] = str(out)
    return config_from_mapping(values)


@data_cli.command("generate")
def data_generate(
    out: Path = typer.Option(Path("data/synthetic"), help="Output dataset directory."),
    users: int = typer.Option(1000, help="Number of users."),
    items: int = typer.Option(10000, help="Number of items."),
    seed: int = typer.Option(0, help="Random seed (the data is a deterministic function of it)."),
    fmt: str = typer.Option("parquet", "--format", help="parquet or csv."),
    overwrite: bool = typer.Option(False, help="Replace an existing directory."),
) -> None:
    """Generate the embedded synthetic dataset (topics in text, context-dependent preferences)."""
    from common.synthetic import SyntheticConfig, write_synthetic

    try:
        path = write_synthetic(out, SyntheticConfig(users=users, items=items, seed=seed), fmt=fmt,
                               overwrite=overwrite)
    except (ValueError, FileExistsError, OSError) as err:
        _fail(err)
    typer.echo(f"dataset: {path}")


@import_cli.command("movielens")
def data_import_movielens(
    src: Path = typer.Argument(..., help="Directory of an unpacked MovieLens release (ml-100k, ml-1m, ml-latest-small)."),
    out: Path = typer.Option(..., help="Output dataset directory."),
    fmt: str = typer.Option("parquet", "--format", help="parquet or csv."),
    overwrite: bool = typer.Option(False, help="Replace an existing directory."),
) -> None:
    """Import MovieLens: item text from title, genres and tags; context from the timestamp."""
    from common.movielens import import_movielens

    try:
        path = import_movielens(src, out, fmt=fmt, overwrite=overwrite)
    except (ValueError, FileExistsError, FileNotFoundError, OSError) as err:
        _fail(err)
    typer.echo(f"dataset: {path}")


@data_cli.command("validate")
def data_validate(path: Path = typer.Argument(..., help="Dataset directory.")) -> None:
    """Check a dataset directory; print what cleaning would remove and the split sizes."""
    from common.data import DataError, validate_dataset

    try:
        report = validate_dataset(path)
    except (DataError, FileNotFoundError, ValueError) as err:
        _fail(err)
    typer.echo(json.dumps(report, indent=2, default=str))
    typer.echo(f"valid: {path}")


@cli.command("simulate")
def simulate_cmd(
    data: Optional[str] = typer.Option(None, help="Dataset directory, or 'synthetic' (default)."),
    set_: List[str] = typer.Option([], "--set", help="Setting override key=value (see [tool.flwr.app.config])."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<date-time>)."),
    nodes: int = typer.Option(2, help="Simulated SuperNodes; users are split into this many shards."),
    one_user_per_node: bool = typer.Option(False, help="One SuperNode per user (slow; as on devices)."),
    baselines: bool = typer.Option(True, help="Also train the centralized, context-free and popularity baselines."),
    verbose: bool = typer.Option(False, help="Show Flower's and Ray's logs."),
) -> None:
    """Simulate the federation (real Flower simulation engine), run the baselines, write the report."""
    from common.config import ConfigError
    from common.data import DataError
    from simulations.simulate import simulate

    try:
        cfg = _config(data, set_, out)
        if one_user_per_node:
            from common.datasets import load_cached, resolve_dataset

            nodes = load_cached(str(resolve_dataset(cfg))).n_users
        run_dir = simulate(cfg, num_nodes=nodes, verbose=verbose, baselines=baselines)
    except (ConfigError, DataError, FileExistsError, FileNotFoundError) as err:
        _fail(err)
    typer.echo(f"run directory: {run_dir}")


@cli.command("sweep")
def sweep_cmd(
    config: Optional[Path] = typer.Option(None, help="TOML with settings (top level) and a [sweep] table "
                                                     "(epsilons, seeds, audit-users)."),
    data: Optional[str] = typer.Option(None, help="Dataset directory, or 'synthetic' (default, 10,000 users)."),
    set_: List[str] = typer.Option([], "--set", help="Setting override key=value; also epsilons=0.5,1,inf, "
                                                     "seeds=0,1,2, audit-users=N."),
    out: Optional[Path] = typer.Option(None, help="Sweep directory (default runs/sweep-<date-time>)."),
    nodes: int = typer.Option(2, help="Simulated SuperNodes per run."),
) -> None:
    """Privacy/accuracy trade-off: central DP at several epsilons and seeds, with a membership audit."""
    import time

    from common.config import ConfigError, parse_overrides
    from common.data import DataError
    from simulations.sweep import run_sweep, sweep_config

    try:
        base, plan = sweep_config(config, parse_overrides(set_ or []), data)
        out_dir = out or Path("runs") / time.strftime("sweep-%Y%m%d-%H%M%S")
        path = run_sweep(base, plan, out_dir, nodes=nodes)
    except (ConfigError, DataError, FileExistsError, FileNotFoundError) as err:
        _fail(err)
    typer.echo(f"run directory: {path}")


@cli.command("bench")
def bench_cmd(
    users: List[int] = typer.Option([1000, 10000], help="User counts to measure (repeat the option)."),
    items: int = typer.Option(10000, help="Catalogue size."),
    rounds: int = typer.Option(6, help="Federated rounds per measurement (the first is warm-up; the median of "
                                       "the others is reported)."),
    nodes: int = typer.Option(2, help="Simulated SuperNodes."),
    set_: List[str] = typer.Option([], "--set", help="Setting override key=value."),
    privacy: List[str] = typer.Option(["none"], help="Privacy modes to time side by side (repeat: --privacy "
                                                     "none --privacy central --privacy local); the first is "
                                                     "the reference of each dp_cost_<mode>."),
) -> None:
    """Centralized epoch time vs federated round time on the same users; prints JSON last."""
    from common.config import ConfigError
    from simulations.bench import bench

    try:
        cfg = _config(None, set_, None)
        for mode in privacy:
            cfg.replace(privacy=mode)  # validates the mode with this config
        results = bench(cfg, users=users, items=items, rounds=rounds, nodes=nodes, privacy=privacy)
    except (ConfigError, FileExistsError) as err:
        _fail(err)
    typer.echo(json.dumps(results[-1] if len(results) == 1 else {**results[-1], "all": results}))


def main() -> None:
    cli(prog_name="fedctx")


if __name__ == "__main__":
    sys.exit(main())
