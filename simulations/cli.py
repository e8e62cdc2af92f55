"""`fedctx`: the command line of the project (data, simulate, bench)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

# TensorFlow's C++ start-up lines (cuDNN/cuFFT/cuBLAS "Unable to register factory" on machines without a GPU)
# are noise; a real TensorFlow failure still raises in Python. Set the variable yourself to see them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: commands that answer a device's user at once: they run without rich (typer's help and error formatting,
#: ~0.2 s of a ~0.6 s start); typer supports its absence (click's plain help and errors). --help keeps rich.
FAST_COMMANDS = ("device", "export")
if len(sys.argv) > 1 and sys.argv[1] in FAST_COMMANDS and "--help" not in sys.argv:
    sys.modules.setdefault("rich", None)  # `import rich` raises ImportError: typer takes its no-rich path

import typer

__all__ = ["main", "cli", "FAST_COMMANDS"]

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
    from common.movielens import import_movielens

    try:
        path = import_movielens(src, out, fmt=fmt, overwrite=overwrite)
    except Exception as err:  # anticipated: one line and rc 2; else a bug, raised again
        _fail(err)
    typer.echo(f"dataset: {path}")


@data_cli.command("validate")
def data_validate(path: Path = typer.Argument(..., help="Dataset directory.")) -> None:
    """Check a dataset directory; print what cleaning would remove and the split sizes."""
    from common.data import validate_dataset

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
    from common.context import ContextEncoder
    from common.data import load_dataset, read_spec
    from common.io import write_atomic
    from common.schema import fitted_declaration

    try:
        spec = read_spec(path, catalogue_only=True)  # a server's catalogue directory works too
        try:
            encoder, fitted = ContextEncoder.declared(spec.context_columns, spec.from_time), spec.fitted
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
    from common.partition import partition_dataset

    try:
        fed = partition_dataset(path, out, devices, overwrite=overwrite)
    except Exception as err:  # anticipated: one line and rc 2; else a bug, raised again
        _fail(err)
    typer.echo(f"server catalogue: {out / 'server'} (no interactions)")
    for d in fed["devices"]:
        typer.echo(f"device: {out / d['dir']} ({d['users']} users)")
    typer.echo(f"population: {fed['population']} (set --run-config \"population={fed['population']}\" under "
               f"central DP)")


@cli.command("simulate")
def simulate_cmd(
    data: Optional[str] = typer.Option(None, help="Dataset directory, or 'synthetic' (default)."),
    set_: List[str] = typer.Option([], "--set", help="Setting override key=value (see [tool.flwr.app.config])."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/<date-time>)."),
    nodes: int = typer.Option(2, help="Simulated SuperNodes; users are split into this many shards."),
    one_user_per_node: bool = typer.Option(False, help="One SuperNode per user (slow; as on devices)."),
    baselines: bool = typer.Option(True, help="Also train the centralized, context-free, ALS, BPR and popularity baselines."),
    verbose: bool = typer.Option(False, help="Show Flower's and Ray's logs."),
) -> None:
    """Simulate the federation (real Flower simulation engine), run the baselines, write the report."""
    from simulations.simulate import simulate

    try:
        cfg = _config(data, set_, out)
        if one_user_per_node:
            from common.datasets import load_cached, resolve_dataset

            nodes = load_cached(str(resolve_dataset(cfg))).n_users
        run_dir = simulate(cfg, num_nodes=nodes, verbose=verbose, baselines=baselines)
    except Exception as err:  # anticipated: one line and rc 2; else a bug, raised again
        _fail(err)
    typer.echo(f"run directory: {run_dir}")


@cli.command("sweep")
def sweep_cmd(
    config: Optional[Path] = typer.Option(None, help="TOML with settings (top level) and a [sweep] table "
                                                     "(epsilons, seeds, audit-users)."),
    data: Optional[str] = typer.Option(None, help="Dataset directory, or 'synthetic' (default, 60,000 users)."),
    set_: List[str] = typer.Option([], "--set", help="Setting override key=value; also epsilons=0.5,1,inf, "
                                                     "seeds=0,1,2, audit-users=N."),
    out: Optional[Path] = typer.Option(None, help="Sweep directory (default runs/sweep-<date-time>)."),
    nodes: int = typer.Option(2, help="Simulated SuperNodes per run."),
) -> None:
    """Privacy/accuracy trade-off: central DP at several epsilons and seeds, with a membership audit."""
    import time

    from common.config import parse_overrides
    from simulations.sweep import run_sweep, sweep_config

    try:
        base, plan = sweep_config(config, parse_overrides(set_ or []), data)
        out_dir = out or Path("runs") / time.strftime("sweep-%Y%m%d-%H%M%S")
        path = run_sweep(base, plan, out_dir, nodes=nodes)
    except Exception as err:  # anticipated: one line and rc 2; else a bug, raised again
        _fail(err)
    typer.echo(f"run directory: {path}")


@cli.command("bench")
def bench_cmd(
    users: List[int] = typer.Option([1000, 10000], help="User counts to measure (repeat the option)."),
    items: int = typer.Option(10000, help="Catalogue size."),
    rounds: int = typer.Option(6, help="Federated rounds per measurement (the first is warm-up; the median of "
                                       "the others is reported)."),
    nodes: List[int] = typer.Option([2], help="Simulated SuperNodes (repeat: --nodes 10 --nodes 100)."),
    set_: List[str] = typer.Option([], "--set", help="Setting override key=value."),
    privacy: List[str] = typer.Option(["none"], help="Privacy modes to time side by side (repeat: --privacy "
                                                     "none --privacy central --privacy local); the first is "
                                                     "the reference of each dp_cost_<mode>. A mode ending in "
                                                     "+secagg runs with secure aggregation (central+secagg)."),
) -> None:
    """Centralized epoch time vs federated round time on the same users; prints JSON last."""
    from simulations.bench import bench

    try:
        cfg = _config(None, set_, None)
        from simulations.bench import mode_config

        for mode in privacy:
            mode_config(cfg, mode)  # validates the mode with this config
        results = bench(cfg, users=users, items=items, rounds=rounds, nodes=nodes, privacy=privacy)
    except Exception as err:  # anticipated: one line and rc 2; else a bug, raised again
        _fail(err)
    typer.echo(json.dumps(results[-1] if len(results) == 1 else {**results[-1], "all": results}))


@device_cli.command("recommend")
def device_recommend(
    state: Path = typer.Option(..., help="The device's state directory (a SuperNode's state-dir)."),
    user: str = typer.Option(..., help="User id (as in the device's data)."),
    context: List[str] = typer.Option([], "--context", help="Context column=value (repeat); unset columns are "
                                                             "missing values."),
    time: Optional[int] = typer.Option(None, help="Unix seconds for time-derived context (default: now)."),
    k: int = typer.Option(10, "-k", help="How many items."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    new_user: bool = typer.Option(False, "--new-user", help="The user is new to this device: recommend without a "
                                                            "personal term (an unknown id is an error otherwise)."),
) -> None:
    """Top-k items for a user in a context, from the latest global model the device received, with why."""
    from client.device import format_recommendations, recommend
    from client.device_state import DeviceState, catalogue_titles

    try:
        dev = DeviceState.load(state)
        dev.check_user(user, new_user)
        theta, source = dev.theta_for(user)
        items, _, _ = dev.history(user)
        x = dev.context_vector(_pairs(context), time)
        recs = recommend(dev.params, dev.item_h, theta, x, items, k=k)
    except Exception as err:  # anticipated: one line and rc 2; else a bug, raised again
        _fail(err)
    titles = catalogue_titles(dev)
    if as_json:
        typer.echo(json.dumps({"user": user, "theta": source, "round": dev.round, "schema": dev.schema.hash,
                               "recommendations": [{**r.to_dict(), "item_id": dev.schema.item_ids[r.item]}
                                                   for r in recs]}, indent=1))
        return
    typer.echo(f"user {user}: theta_u {source}; global model of round {dev.round}; {len(items)} past engagements "
               f"excluded")
    ids = list(dev.schema.item_ids)
    typer.echo(format_recommendations(recs, [f"{i} {t}" for i, t in zip(ids, titles)] if titles else ids))
    typer.echo("score = user + context + shift + bias; no-ctx: the item's rank without the context; like: the "
               "user's past items most similar in phi space (cosine)")


@device_cli.command("record")
def device_record(
    state: Path = typer.Option(..., help="The device's state directory."),
    user: str = typer.Option(..., help="User id (as in the device's data)."),
    item: str = typer.Option(..., help="Item id of the catalogue."),
    context: List[str] = typer.Option([], "--context", help="Context column=value (repeat)."),
    time: Optional[int] = typer.Option(None, help="Unix seconds of the engagement (default: now)."),
    label: Optional[float] = typer.Option(None, help="Label value if the dataset declares a label column "
                                                     "(default: min-label)."),
    steps: Optional[int] = typer.Option(None, help="Local steps that refresh theta_u against the stored global "
                                                   "model (default: local-steps, as in a round)."),
    new_user: bool = typer.Option(False, "--new-user", help="Add the user to this device (an unknown id is an "
                                                            "error otherwise)."),
) -> None:
    """Record one engagement in the device's data (the next round trains on it) and refresh theta_u at once."""
    from client.device import refresh_theta
    from client.device_state import DeviceState
    from common.scoring import SECONDS_PER_DAY

    try:
        dev = DeviceState.load(state)
        dev.check_user(user, new_user)
        pairs = _pairs(context)
        row = dev.append_engagement(user, item, pairs, time, label)
        theta, _ = dev.theta_for(user)
        items, ctx, times = dev.history(user)
        c = dev.cfg
        steps = c.local_steps if steps is None else steps
        new = refresh_theta(dev.params, dev.item_h, theta, items, ctx, (times.max() - times) / SECONDS_PER_DAY,
                            steps=steps, lr=c.theta_lr, negatives=c.negatives, seed=len(items), l2=c.l2,
                            half_life_days=c.half_life_days, loss=c.loss, unobserved_weight=c.unobserved_weight)
        where = dev.store_theta(user, new)
    except Exception as err:  # anticipated: one line and rc 2; else a bug, raised again
        _fail(err)
    typer.echo(f"recorded: {json.dumps(row)}")
    typer.echo(f"theta_u of {user} refreshed on {len(items)} engagements ({steps} steps): {where}")


@export_cli.command("tflite")
def export_tflite(
    state: Path = typer.Option(..., help="The device's state directory."),
    out: Path = typer.Option(..., help="The .tflite file to write."),
    k: int = typer.Option(10, "-k", help="Top-k computed inside the model."),
) -> None:
    """The on-device scorer as TFLite: theta_u [dim] and context x [context_dim] in; scores over the catalogue
    and the top-k out (see docs/device.md)."""
    from client.device_state import DeviceState
    from client.tflite import export_scorer

    try:
        dev = DeviceState.load(state)
        path = export_scorer(dev.params, dev.item_h, out, k=k)
    except Exception as err:  # anticipated: one line and rc 2; else a bug, raised again
        _fail(err)
    typer.echo(f"tflite: {path} ({path.stat().st_size / 1e6:.2f} MB; {dev.schema.n_items} items, "
               f"dim {dev.cfg.dim}, context {dev.context_dim})")


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
