"""`fedctx data ...`: generate, import, validate, declare and partition datasets."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from simulations.cli.app import _fail, data_cli, import_cli


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
    from common.data.sources.synthetic import SyntheticConfig, write_synthetic

    try:
        path = write_synthetic(out, SyntheticConfig(users=users, items=items, seed=seed), fmt=fmt,
                               overwrite=overwrite)
    except Exception as err:  # anticipated: one line and rc 2; else a bug, raised again
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
    from common.data.sources.movielens import import_movielens

    try:
        path = import_movielens(src, out, fmt=fmt, overwrite=overwrite)
    except Exception as err:  # anticipated: one line and rc 2; else a bug, raised again
        _fail(err)
    typer.echo(f"dataset: {path}")


@data_cli.command("validate")
def data_validate(path: Path = typer.Argument(..., help="Dataset directory.")) -> None:
    """Check a dataset directory; print what cleaning would remove and the split sizes."""
    from common.data.loader import validate_dataset

    try:
        report = validate_dataset(path)
    except Exception as err:  # anticipated: one line and rc 2; else a bug, raised again
        _fail(err)
    typer.echo(json.dumps(report, indent=2, default=str))
    typer.echo(f"valid: {path}")


@data_cli.command("declare")
def data_declare(
    path: Path = typer.Argument(..., help="Dataset directory."),
    out: Path = typer.Option(..., help="JSON file to write (the server's context-declaration setting)."),
) -> None:
    """Write the context declaration (vocabularies, scales, width) for a server's context-declaration setting.
    When dataset.toml fixes it (values, mean/std), that public declaration is written and no interactions are read;
    otherwise it is fitted on the training rows and marked fitted-on-private-rows: a run with a privacy mode
    refuses such a file (write the values from public knowledge instead, docs/deployment.md)."""
    from common.data.context import ContextEncoder
    from common.data.loader import load_dataset, read_spec
    from common.io import write_atomic
    from common.data.schema import fitted_declaration

    try:
        spec = read_spec(path, catalogue_only=True)  # a server's catalogue directory works too
        try:
            encoder, fitted = ContextEncoder.declared(spec.context_columns, spec.from_time, spec.harmonics), spec.fitted
        except ValueError:
            encoder, fitted = load_dataset(path).context_encoder, True
        write_atomic(out, fitted_declaration(encoder) if fitted else json.dumps(encoder.to_dict(), indent=1))
    except Exception as err:  # anticipated: one line and rc 2; else a bug, raised again
        _fail(err)
    typer.echo(f"context declaration: {out} ({encoder.dim} features: {', '.join(encoder.feature_names)})")
    if fitted:
        typer.echo("  fitted on the users' training rows without noise: fine without a privacy mode; a run with "
                   "privacy=central/local refuses it (declare the values from public knowledge in dataset.toml)")


@data_cli.command("partition")
def data_partition(
    path: Path = typer.Argument(..., help="Dataset directory to split."),
    out: Path = typer.Option(..., help="Output directory: server/ (catalogue and declaration only) and "
                                       "device-<k>/ (each device's users)."),
    devices: int = typer.Option(3, help="Number of devices."),
    overwrite: bool = typer.Option(False, help="Replace an existing directory."),
) -> None:
    """Split a dataset into a federation to try on one machine (see docs/deployment.md)."""
    from common.data.partition import partition_dataset

    try:
        fed = partition_dataset(path, out, devices, overwrite=overwrite)
    except Exception as err:  # anticipated: one line and rc 2; else a bug, raised again
        _fail(err)
    typer.echo(f"server catalogue: {out / 'server'} (no interactions)")
    for d in fed["devices"]:
        typer.echo(f"device: {out / d['dir']} ({d['users']} users)")
    typer.echo(f"population: {fed['population']} (set --run-config \"population={fed['population']}\" under "
               f"central DP)")
