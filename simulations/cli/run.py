"""`fedctx simulate`, `fedctx sweep`, `fedctx bench`: runs of the federation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from simulations.cli.app import _config, _fail, cli


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
            from common.data.datasets import load_cached, resolve_dataset

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
