"""Benchmark: one simulation on a local Ray and on loopback Ray clusters of 1 and 2 raylets (`ray start`).

    python -m simulations.benchmarks.ray [--users 1000] [--items 2000] [--rounds 4]

Each layout runs `fedctx simulate --no-baselines --nodes 2` with the same settings and sampling key; the table
gives the median seconds of a training round after the first (the first traces TensorFlow in fresh actors), the
whole federated part, and how far the global model is from the local run's (max abs difference; 0 = bit-equal).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from simulations.rigs.raycluster import LoopbackRay

ROOT = Path(__file__).resolve().parents[2]
#: (name, raylets of the loopback cluster (0 = a local Ray started by the run), CPUs per raylet)
LAYOUTS = (("local Ray (today's default)", 0, 2), ("cluster: 1 raylet x 1 CPU", 1, 1),
           ("cluster: 2 raylets x 1 CPU", 2, 1))


def _run(data: str, out: Path, settings: list[str], address: str = "") -> dict:
    from common.privacy.sampling import SAMPLING_KEY_ENV

    sets = [x for s in settings + ([f"ray-address={address}"] if address else []) for x in ("--set", s)]
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "simulations.cli", "simulate", "--data", data, "--nodes", "2",
                          "--no-baselines", *sets, "--out", str(out)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, SAMPLING_KEY_ENV: "bench-ray"}, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    with open(out / "rounds.csv") as f:
        rounds = [float(r["train-seconds"]) for r in csv.DictReader(f)]
    summary = json.loads((out / "summary.json").read_text())
    with np.load(out / "global_model.npz") as f:
        model = {k: f[k] for k in f.files}
    return {"round_s": statistics.median(rounds[1:]), "first_round_s": rounds[0],
            "federated_s": summary["timings"]["federated_s"], "command_s": time.perf_counter() - t0,
            "ray": summary["ray"], "model": model}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)
    from common.data.sources.synthetic import SyntheticConfig, write_synthetic

    settings = [f"num-rounds={args.rounds}", f"eval-every={10**6}", "checkpoint-every=0"]
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        data = str(write_synthetic(Path(tmp) / "data", SyntheticConfig(users=args.users, items=args.items, seed=0)))
        rows = []
        for name, raylets, cpus in LAYOUTS:
            with (LoopbackRay(workers=raylets - 1, cpus=cpus, timeout=180) if raylets else nullcontext()) as cluster:
                r = _run(data, Path(tmp) / f"run-{raylets}", settings, cluster.address if cluster else "")
            rows.append((name, r))
            print(f"{name}: round {r['round_s']:.2f} s (first {r['first_round_s']:.2f} s), federated part "
                  f"{r['federated_s']:.1f} s, Ray {r['ray']}", flush=True)
    ref = rows[0][1]["model"]
    print(f"\n{args.users} users, {args.items} items, 2 SuperNodes, {args.rounds} rounds (evaluation only after the "
          f"last), {os.cpu_count()} cores\n")
    print("| layout | Ray nodes, CPUs | s per round (median, rounds 2+) | first round s | federated part s | "
          "model vs the local run: max abs diff (max abs value) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, r in rows:
        diff = max(float(np.abs(ref[k] - r["model"][k]).max()) for k in ref)
        size = max(float(np.abs(ref[k]).max()) for k in ref)
        print(f"| {name} | {r['ray']['ray-nodes']}, {r['ray']['ray-cpus']} | {r['round_s']:.2f} | "
              f"{r['first_round_s']:.2f} | {r['federated_s']:.1f} | {diff:.1e} ({size:.2f}) |")


if __name__ == "__main__":
    main()
