"""Benchmark: centralized epoch vs federated full-participation round on the same users and machine."""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from common.config import Config
from common.data.datasets import load_cached, resolve_dataset
from common.privacy.release import diagnostics_dir
from common.federation.secagg import describe_tolerance, shares_and_threshold, tolerance

__all__ = ["bench"]


SECURE = "+secagg"  # a privacy mode with this suffix runs with secure-aggregation=true


def mode_config(cfg: Config, mode: str) -> Config:
    """`central` -> privacy=central; `central+secagg` -> privacy=central and SecAgg+ on."""
    secure = mode.endswith(SECURE)
    return cfg.replace(privacy=mode[: -len(SECURE)] if secure else mode, secure_aggregation=secure)


def bench(cfg: Config, users: Sequence[int], items: int, rounds: int = 6, nodes: int | Sequence[int] = 2,
          say: Callable[[str], None] = print, privacy: Sequence[str] = ("none",)) -> list[dict]:
    """For each user count and node count: seconds per centralized epoch (after a warm-up epoch) and per
    federated training round (Flower simulation, every user sampled, median of the rounds after the first), their
    ratio and user updates per second. Evaluation is excluded from both timings.

    privacy: modes to time side by side (e.g. none, central, local, central+secagg); the first is the reference
    of `ratio`, and each other mode m adds `federated_round_s_<m>` and `dp_cost_<m>` (its round time over the
    first mode's). With both m and m+secagg, `secagg_cost_<m>` is the secure round's time over m's."""
    from common.evaluation.central import train_central
    from common.federation.users import UserStore
    from server.content import content_vectors
    from simulations.simulate import run_flower_simulation

    results = []
    node_counts = [nodes] if isinstance(nodes, int) else list(nodes)
    for n_users, n_nodes in ((u, n) for u in users for n in node_counts):
        c = cfg.replace(data="synthetic", synthetic_users=int(n_users), synthetic_items=int(items),
                        sample_rate=1.0, num_rounds=max(2, rounds), eval_every=10**6, central_epochs=2)
        ds = load_cached(str(resolve_dataset(c)))
        item_h = content_vectors(c, ds.item_texts, ds.item_ids)
        store = UserStore.from_prepared(ds, np.arange(ds.n_users), use_context=c.use_context)
        _, _, epoch_s, _ = train_central(store, item_h, c)
        central = float(epoch_s[-1])
        say(f"bench {n_users} users, {n_nodes} nodes: centralized epoch {central:.2f}s ({len(ds.train)} "
            f"engagements)")
        per_mode, stages = {}, {}
        for mode in privacy:
            with tempfile.TemporaryDirectory() as tmp:
                run_dir = Path(tmp) / "run"
                cm = mode_config(c.replace(run_dir=str(run_dir)), mode)
                run_flower_simulation(cm, n_nodes)
                rows = json.loads((diagnostics_dir(run_dir, cm.private) / "federated.json").read_text())["rounds"]
            per_mode[mode] = float(np.median([r["train-seconds"] for r in rows[1:]]))
            say(f"bench {n_users} users, {n_nodes} nodes: federated round ({mode}) {per_mode[mode]:.2f}s")
            if mode.endswith(SECURE):  # the server's stages and the user-count session, medians
                stages = {k[len("secagg-"):-len("-seconds")]: round(float(np.median([r.get(k, 0.0) for r in
                                                                                      rows[1:]])), 3)
                          for k in rows[-1] if k.startswith("secagg-") and k.endswith("-seconds")}
                say(f"bench {n_users} users, {n_nodes} nodes: {mode} stages (server wall s, median) {stages}")
        round_s = per_mode[privacy[0]]
        result = {
            "users": int(ds.n_users), "items": int(ds.n_items), "engagements": int(len(ds.train)),
            "nodes": n_nodes, "local_steps": c.local_steps, "centralized_batch": c.central_batch,
            "centralized_epoch_s": round(central, 4), "federated_round_s": round(round_s, 4),
            "ratio": round(round_s / central, 3), "user_updates_per_s": round(ds.n_users / round_s, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.platform()}",
        }
        for mode in privacy[1:]:
            result[f"federated_round_s_{mode}"] = round(per_mode[mode], 4)
            result[f"dp_cost_{mode}"] = round(per_mode[mode] / round_s, 3)
        if any(m.endswith(SECURE) for m in privacy):  # the security parameters the secure rounds ran with
            k, t = shares_and_threshold(n_nodes, c.secagg_shares, c.secagg_threshold)
            tol = tolerance(n_nodes, k, t)
            result.update({"secagg_shares_k": k, "secagg_threshold_t": t, "secagg_tolerance": tol})
            say(f"bench {n_users} users, {n_nodes} nodes: {describe_tolerance(tol)}")
            result["secagg_stage_s"] = stages
        for mode in privacy:
            if mode.endswith(SECURE) and mode[: -len(SECURE)] in per_mode:
                plain = mode[: -len(SECURE)]
                result[f"secagg_cost_{plain}"] = round(per_mode[mode] / per_mode[plain], 3)
                say(f"bench {n_users} users, {n_nodes} nodes: secure aggregation costs "
                    f"{result[f'secagg_cost_{plain}']}x a {plain} round")
        say(f"bench {n_users} users, {n_nodes} nodes: federated round {round_s:.2f}s, ratio {result['ratio']}, "
            f"{result['user_updates_per_s']} user updates/s")
        results.append(result)
    return results
