"""`fedctx device ...` and `fedctx export ...`: a device's state directory, offline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from simulations.cli.app import _fail, _pairs, device_cli, export_cli


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
    from common.model.scoring import SECONDS_PER_DAY

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
                            half_life_days=c.half_life_days, loss=c.model_loss, unobserved_weight=c.unobserved_weight)
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
