"""What a deployed round costs, message by message, next to a simulated round on the same data.

    python -m simulations.benchmarks.deploy [--users 60] [--items 200] [--devices 3] [--rounds 4] [--json FILE]

Starts a SuperLink and one SuperNode per device on loopback (insecure: TLS adds little to these message sizes;
docs/deployment.md has the secure setup), runs `flwr run` over a dataset split by `fedctx data partition`,
and reads each device's state-dir/timings.csv (one line per message: process start to the handler, which is
the fresh `flwr-clientapp` process and its imports; state load; compute; save). Then it simulates the same
data with as many nodes and the same settings. Prints a table and the figures as JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common.io import write_atomic
from simulations.rigs.loopback import BIN, Cluster, cluster_env, copy_app, free_ports, wait_for

__all__ = ["bench_deploy"]

PARTS = ("process_start_to_handler_s", "state_load_s", "compute_s", "save_s")


def _rounds(path: Path) -> list[float]:
    with path.open() as f:
        return [float(r["seconds"]) for r in csv.DictReader(f)]


def bench_deploy(users: int = 60, items: int = 200, devices: int = 3, rounds: int = 4,
                 settings: str = "dim=8 text-dim=16 text-epochs=2 local-steps=2", say=print) -> dict:
    """Deployed vs simulated round time and the per-message breakdown (medians over messages after round 1)."""
    root = Path(tempfile.mkdtemp(prefix="fedctx-bench-deploy-"))
    env = cluster_env(root)
    cluster = Cluster(root, env)
    try:
        fedctx = [str(BIN / "fedctx"), "data"]
        subprocess.run([*fedctx, "generate", "--out", str(root / "data"), "--users", str(users), "--items", str(items)],
                       check=True, env=env, capture_output=True, timeout=600)
        subprocess.run([*fedctx, "partition", str(root / "data"), "--out", str(root / "fed"), "--devices",
                        str(devices)], check=True, env=env, capture_output=True, timeout=600)
        fleet, control, serverappio, *appio = free_ports(3 + devices)
        app = copy_app(root / "app", "bench", f'address = "127.0.0.1:{control}"\ninsecure = true')
        link = cluster.start("superlink", [
            str(BIN / "flower-superlink"), "--insecure", "--isolation", "subprocess",
            "--fleet-api-address", f"127.0.0.1:{fleet}", "--control-api-address", f"127.0.0.1:{control}",
            "--serverappio-api-address", f"127.0.0.1:{serverappio}"], cwd=root / "superlink")
        wait_for("the SuperLink", lambda: f"Control API on 127.0.0.1:{control}" in link.text(), 180, (link,))
        nodes = [cluster.start(f"supernode-{k}", [
            str(BIN / "flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{fleet}",
            "--clientappio-api-address", f"127.0.0.1:{appio[k]}", "--isolation", "subprocess",
            "--node-config", f"data-dir='{root / 'fed' / f'device-{k}'}' state-dir='{root / f'state-{k}'}'"],
            cwd=root / f"node-{k}") for k in range(devices)]
        common = f"num-rounds={rounds} eval-every={rounds} min-nodes={devices} {settings}"
        run_dir = root / "deployed"
        t0 = time.monotonic()
        run = cluster.start("flwr-run", [str(BIN / "flwr"), "run", str(app), "bench", "--stream", "--run-config",
                                         f"data='{root / 'fed' / 'server'}' run-dir='{run_dir}' {common}"], cwd=root)
        wait_for("the deployed run", lambda: (run_dir / "rounds.csv").is_file(), 1800, (link, *nodes))
        deployed_total = time.monotonic() - t0
        deployed = _rounds(run_dir / "rounds.csv")
        messages = []
        for k in range(devices):
            with (root / f"state-{k}" / "timings.csv").open() as f:
                messages += [{**r, "device": k} for r in csv.DictReader(f)]
        cluster.close()
        say(f"deployed: {len(deployed)} rounds in {deployed_total:.0f} s; now the simulation of the same data")
        sim_dir = root / "simulated"
        sets = [x for kv in common.split() for x in ("--set", kv)]
        t0 = time.monotonic()
        subprocess.run([str(BIN / "fedctx"), "simulate", "--data", str(root / "data"), "--nodes", str(devices),
                        "--no-baselines", *sets, "--out", str(sim_dir)], check=True, env=env, capture_output=True,
                       timeout=1800)
        simulated_total = time.monotonic() - t0
        simulated = _rounds(sim_dir / "rounds.csv")
    except BaseException:
        cluster.dump(30)
        raise
    finally:
        cluster.close()
    later = [m for m in messages if int(m["round"]) > 1]  # round 1 carries h(c) and builds the store
    out: dict = {"users": users, "items": items, "devices": devices, "rounds": rounds, "settings": settings,
                 "load_average": os.getloadavg()[0], "messages": len(messages)}
    for kind in ("train", "evaluate"):
        sel = [m for m in later if m["message"] == kind] or [m for m in messages if m["message"] == kind]
        med = {p: statistics.median(float(m[p]) for m in sel) for p in PARTS}
        beyond = med["state_load_s"] + med["compute_s"] + med["save_s"]
        out[kind] = {**med, "beyond_start_over_compute": beyond / max(med["compute_s"], 1e-9), "count": len(sel)}
    out["deployed_round_s"] = statistics.mean(deployed[1:] or deployed)
    out["simulated_round_s"] = statistics.mean(simulated[1:] or simulated)
    out["deployed_over_simulated"] = out["deployed_round_s"] / out["simulated_round_s"]
    out["first_round_s"] = {"deployed": deployed[0], "simulated": simulated[0]}
    say(f"{'message':<9} {'start->handler':>14} {'state load':>10} {'compute':>8} {'save':>6}  beyond start / compute")
    for kind in ("train", "evaluate"):
        m = out[kind]
        say(f"{kind:<9} {m['process_start_to_handler_s']:>13.2f}s {m['state_load_s']:>9.2f}s {m['compute_s']:>7.2f}s "
            f"{m['save_s']:>5.2f}s  {m['beyond_start_over_compute']:.2f}x  (median of {m['count']})")
    say(f"round (after the first): deployed {out['deployed_round_s']:.1f} s, simulated {out['simulated_round_s']:.1f} s "
        f"({out['deployed_over_simulated']:.1f}x); load average {out['load_average']:.1f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=60)
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--devices", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None, help="Also write the figures here.")
    args = ap.parse_args()
    out = bench_deploy(args.users, args.items, args.devices, args.rounds)
    text = json.dumps(out, indent=1)
    print(text)
    if args.json:
        write_atomic(args.json, text)


if __name__ == "__main__":
    main()
