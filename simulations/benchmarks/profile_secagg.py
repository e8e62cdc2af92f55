"""Where a SecAgg+ round's time goes: the real ServerApp logic and the real ClientApp of every node in one process
(simulations.rigs.inprocess, no transport), profiled with cProfile, with and without secure aggregation.

    python -m simulations.benchmarks.profile_secagg --nodes 100 --users 1000 --items 10000 --rounds 3

Prints one line per part of the protocol (cumulative seconds over the timed rounds, all nodes together) and the
rounds' median time. The first round is a warm-up (the nodes build their stores) and is not profiled.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import tempfile
import time
from pathlib import Path

__all__ = ["PARTS", "profile_round"]

#: (label, module-path fragment, function name): cumulative time of these functions is reported
PARTS = [
    ("key pairs (setup)", "primitives/asymmetric", "generate_key_pairs"),
    ("Shamir split (share keys)", "crypto/shamir", "create_shares"),
    ("share encryption (Fernet)", "symmetric_encryption", "encrypt"),
    ("share decryption (Fernet)", "symmetric_encryption", "decrypt"),
    ("ECDH + HKDF (all)", "symmetric_encryption", "generate_shared_key"),
    ("masks (pseudo_rand_gen, all)", "secaggplus_utils", "pseudo_rand_gen"),
    ("quantise (nodes)", "secure_aggregation/quantization", "quantize"),
    ("Shamir combine (server)", "crypto/shamir", "combine_shares"),
    ("mask arithmetic (add/sub/mod)", "ndarrays_arithmetic", "parameters_addition"),
    ("", "ndarrays_arithmetic", "parameters_subtraction"),
    ("", "ndarrays_arithmetic", "parameters_mod"),
    ("node: local training (train_reply)", "client/app.py", "train_reply"),
    ("node: secaggplus_mod (all stages)", "secaggplus_mod.py", "secaggplus_mod"),
    ("server: unmask stage", "server/secagg.py", "unmask"),
    ("server: aggregate_train", "server/strategy.py", "aggregate_train"),
]


def _cum(stats: pstats.Stats, fragment: str, name: str) -> tuple[float, int]:
    total, calls = 0.0, 0
    for (path, _, func), (cc, nc, tt, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if func == name and fragment in path:
            total += ct
            calls += nc
    return total, calls


def profile_round(nodes: int, users: int, items: int, rounds: int, secure: bool, privacy: str = "central",
                  sets: dict | None = None) -> dict:
    """Run `rounds` rounds in one process and profile all but the first: {"round_s": [...], parts...}."""
    from client.app import app
    from common.config import Config
    from common.data.datasets import load_cached, resolve_dataset
    from common.privacy.release import diagnostics_dir
    from server.app import run_federated
    from server.strategy import UserFedAvg
    from simulations.rigs.inprocess import InProcessGrid, node_contexts
    from simulations.simulate import simulation_inputs

    cfg = Config(data="synthetic", synthetic_users=users, synthetic_items=items, sample_rate=1.0,
                 num_rounds=rounds, eval_every=10**6, privacy=privacy, secure_aggregation=secure)
    if sets:
        cfg = cfg.replace(**sets)
    cfg = simulation_inputs(cfg)
    if secure and not cfg.secagg_max_users:
        cfg = cfg.replace(secagg_max_users=-(-load_cached(str(resolve_dataset(cfg))).n_users // nodes))
    grid = InProcessGrid(app, node_contexts(cfg, nodes))
    prof = cProfile.Profile()
    configure = UserFedAvg.configure_train
    calls = []

    def configure_train(self, server_round, *args, **kwargs):  # the profiler starts with round 2
        if not calls and server_round >= 2:
            calls.append(time.perf_counter())
            prof.enable()
        return configure(self, server_round, *args, **kwargs)

    UserFedAvg.configure_train = configure_train  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_dir = Path(tmp) / "run"
            run_federated(grid, cfg.replace(run_dir=str(run_dir)), run_dir)
            prof.disable()
            total = time.perf_counter() - calls[0]
            rows = json.loads((diagnostics_dir(run_dir, cfg.private) / "federated.json").read_text())["rounds"]
    finally:
        UserFedAvg.configure_train = configure  # type: ignore[method-assign]
    stats = pstats.Stats(prof)
    result = {"total_s": total, "train_s": [r["train-seconds"] for r in rows]}
    for label, frag, name in PARTS:
        result[f"{frag}:{name}"] = _cum(stats, frag, name)
    result["_stats"] = stats
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--items", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="k=v Config settings (python names)")
    parser.add_argument("--top", type=int, default=0, help="also print the top N functions by cumulative time")
    args = parser.parse_args()
    sets = {}
    for kv in args.set:
        k, v = kv.split("=", 1)
        sets[k.replace("-", "_")] = int(v) if v.lstrip("-").isdigit() else v
    for secure in (False, True):
        r = profile_round(args.nodes, args.users, args.items, args.rounds, secure, sets=sets)
        timed = args.rounds - 1
        print(f"{'secure' if secure else 'plain'}: {timed} rounds profiled in one process, {r['total_s']:.2f} s; "
              f"train-seconds of every round {[round(t, 2) for t in r['train_s']]}")
        for label, frag, name in PARTS:
            s, n = r[f"{frag}:{name}"]
            if n:
                print(f"  {label or name:40s} {s / timed:8.2f} s a round  ({n // timed} calls a round)")
        if args.top:
            r["_stats"].sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
