"""Cold start of the device commands: wall and CPU time of `fedctx device recommend`, `device record` and
`fedctx export tflite`, each a fresh process, on a device state directory built here.

    python -m simulations.benchmarks.device_start [--items 10000] [--users 200] [--repeats 5] [--json FILE]

The state directory is what a SuperNode keeps after one round (client/node.py): a synthetic dataset of `users`
users and `items` items (the device's own data), content vectors, the global model and every user's theta_u.
Each command runs `repeats` times; the median wall and CPU time (user + system of the child) are reported,
`device recommend` twice: as it usually runs (the data index the node left is fresh: no pandas) and right after
the data file changed (its mtime is touched before each run: the index is rebuilt with pandas and kept),
with the machine's 1-minute load average before each command (the machine is shared: wall time is CPU time only
when it is idle). `python -c pass` is timed the same way, the floor of any command.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from common.io import write_atomic

__all__ = ["build_device", "cold_start_bench"]

#: `fedctx` as its console script runs it (simulations.cli:main), in a fresh interpreter
FEDCTX = [sys.executable, "-m", "simulations.cli"]


def build_device(root: Path, users: int, items: int, seed: int = 0) -> tuple[Path, str, str]:
    """A device after one round under root: (state-dir, one of its user ids, one catalogue item id)."""
    from flwr.app import ConfigRecord, Context, RecordDict

    from client.app import train_reply
    from client.node import node_for
    from common.config import Config
    from common.federation import protocol as P
    from common.data.loader import load_dataset
    from common.model.formula import ModelShape, init_shared
    from common.federation.params import to_record
    from common.data.schema import build_schema
    from common.data.sources.synthetic import SyntheticConfig, write_synthetic

    data = write_synthetic(root / "data", SyntheticConfig(users=users, items=items, seed=seed))
    cfg = Config(data=str(data), dim=32, text_dim=64, local_steps=1)
    ds = load_dataset(data)
    rng = np.random.default_rng(seed)
    item_h = rng.normal(size=(ds.n_items, cfg.text_dim)).astype(np.float32)  # the encoder is not what is timed
    schema = build_schema(ds.item_ids, ds.context_encoder, {"encoder": "bench"}, item_h)
    params = init_shared(ModelShape(ds.n_items, cfg.text_dim, cfg.dim, ds.context_dim, cfg.item_embedding), seed=seed)
    content = RecordDict({P.ARRAYS: to_record(params), P.CONTENT: to_record({P.ITEM_VECTORS: item_h}),
                          P.SCHEMA: ConfigRecord({P.SCHEMA_JSON: schema.to_json()}),
                          P.CONFIG: ConfigRecord({P.SERVER_ROUND: 1, P.SAMPLE_RATE: 1.0, P.SAMPLING_SEED: 7,
                                                  P.SCHEMA_HASH: schema.hash})})
    ctx = Context(run_id=1, node_id=1, state=RecordDict(), run_config=cfg.to_flwr(),
                  node_config={"data-dir": str(data), "state-dir": str(root / "state")})
    node = node_for(ctx, content, training=True)
    train_reply(node, content)
    node.save(ctx)
    return root / "state", str(ds.user_ids[0]), str(ds.item_ids[1])


def _timed(args: list[str], prepare: Callable[[], None] | None = None) -> tuple[float, float]:
    """(wall s, CPU s of the child) of one run of args, which must succeed; prepare() first, untimed."""
    if prepare is not None:
        prepare()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def cold_start_bench(users: int = 200, items: int = 10000, repeats: int = 5,
                     say: Callable[[str], None] = print) -> dict:
    """Median wall and CPU seconds of each device command from a cold start (see the module docstring)."""
    root = Path(tempfile.mkdtemp(prefix="fedctx-device-start-"))
    try:
        state, user, item = build_device(root, users, items)
        recommend = [*FEDCTX, "device", "recommend", "--state", str(state), "--user", user, "-k", "5"]
        interactions = next((root / "data").glob("interactions.*"))
        prepare = {"device recommend, data changed": lambda: interactions.touch()}  # a new mtime: index stale
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "device recommend": recommend,
            "device recommend, data changed": recommend,
            "device record": [*FEDCTX, "device", "record", "--state", str(state), "--user", user, "--item", item],
            "export tflite": [*FEDCTX, "export", "tflite", "--state", str(state), "--out",
                              str(root / "scorer.tflite")],
        }
        out: dict = {"items": items, "users": users, "repeats": repeats, "cpus": os.cpu_count(),
                     "load_average_1min_before": os.getloadavg()[0]}
        for name, args in commands.items():
            load = os.getloadavg()[0]
            runs = [_timed(args, prepare.get(name)) for _ in range(repeats)]
            out[name] = {"wall_s": float(np.median([w for w, _ in runs])), "cpu_s": float(np.median([c for _, c in runs])),
                         "wall_all_s": [round(w, 3) for w, _ in runs], "cpu_all_s": [round(c, 3) for _, c in runs],
                         "load_average_1min_before": load}
        out["load_average_1min_after"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    say(f"cold start of the device commands ({items} items, {users} users; median of {repeats}; load average "
        f"{out['load_average_1min_before']:.1f} -> {out['load_average_1min_after']:.1f} on {out['cpus']} CPUs)")
    for name in commands:
        say(f"  {name:32s} wall {out[name]['wall_s']:6.2f} s  CPU {out[name]['cpu_s']:6.2f} s  "
            f"(load {out[name]['load_average_1min_before']:.1f}; wall of each run: {out[name]['wall_all_s']})")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m simulations.benchmarks.device_start", description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=10000)
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    out = cold_start_bench(users=a.users, items=a.items, repeats=a.repeats)
    if a.json:
        write_atomic(a.json, json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
