"""One setting over several seeds: `simulate` (federated + every baseline) per seed, then mean +- sd of each
system's test metrics, the ratios the targets name and the context-aware minus context-free difference.
Writes seeds.json and table.md into --out; a seed whose run is already there is kept, so a study can grow.

    python -m simulations.studies.seeds --data data/ml-100k --seeds 0,1,2 --out runs/ml-100k-seeds \
        --set local-steps=5 --set num-rounds=100 --set eval-every=5 --set l2=0.0001
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from common.config import Config, config_from_mapping, parse_overrides
from common.evaluation.report import SYSTEMS
from common.io import write_atomic

__all__ = ["mean_sd", "seed_table", "run_seeds", "study_parser", "finish_table"]


def mean_sd(values: list[float]) -> str:
    """'mean +- sd' (sample sd; 0 for one value), or '-' for none."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1) if len(values) > 1 else 0.0:.4f}"


def seed_table(runs: list[dict], k: int) -> str:
    """Markdown: one row per system (mean +- sd over the runs), then the ratios and differences of the targets.
    runs: [{"seed": int, "systems": {system: metrics}}]."""
    systems = [s for s in SYSTEMS if any(s in r["systems"] for r in runs)]
    expected = f"expected-hr@{k}"
    with_expected = any(expected in m for r in runs for m in r["systems"].values())
    lines = [f"| system | HR@{k} | NDCG@{k} | HR@{k} (1+99 sampled) |" + (f" expected HR@{k} |" if with_expected else "")
             + " seeds |", "| --- | --- | --- | --- |" + (" --- |" if with_expected else "") + " --- |"]
    for s in systems:
        got = [r["systems"][s] for r in runs if s in r["systems"]]
        lines.append(f"| {s} | {mean_sd([m.get(f'hr@{k}') for m in got])} | {mean_sd([m.get(f'ndcg@{k}') for m in got])}"
                     f" | {mean_sd([m.get(f'hr@{k}-sampled') for m in got])} |"
                     + (f" {mean_sd([m.get(expected) for m in got])} |" if with_expected else "") + f" {len(got)} |")

    def per_seed(a: str, b: str, op) -> list[float]:
        return [op(r["systems"][a][f"hr@{k}"], r["systems"][b][f"hr@{k}"]) for r in runs
                if a in r["systems"] and b in r["systems"]]

    notes = []
    kept = [r["systems"]["federated"] for r in runs if len(r["systems"].get("federated", {}).get("validation") or {}) > 1]
    if kept:  # loss=auto: the loss each seed's federation kept, and its candidates' validation HR
        notes.append(f"loss=auto kept (federated, per seed): " + "; ".join(
            f"{m['loss']} (validation " + ", ".join(f"{n} {v:.4f}" for n, v in m["validation"].items()) + ")"
            for m in kept))
    for a, b in (("federated", "centralized"), ("federated", "als"), ("federated", "bpr"),
                 ("federated", "structure"), ("federated", "oracle")):
        ratio = per_seed(a, b, lambda x, y: x / y)
        if ratio:
            notes.append(f"{a} / {b} HR@{k}: {np.mean(ratio):.3f} (per seed {', '.join(f'{v:.2f}' for v in ratio)})")
    expected_ratio = [r["systems"]["federated"][expected] / r["systems"]["structure"][expected] for r in runs
                      if expected in r["systems"].get("federated", {}) and expected in r["systems"].get("structure", {})]
    if expected_ratio:
        notes.append(f"federated (last round) / structure, expected HR@{k}: {np.mean(expected_ratio):.3f} "
                     f"(per seed {', '.join(f'{v:.2f}' for v in expected_ratio)})")
    diff = per_seed("centralized", "context-free", lambda x, y: x - y)
    if diff:
        se = np.std(diff, ddof=1) / np.sqrt(len(diff)) if len(diff) > 1 else float("nan")
        notes.append(f"context-aware - context-free (centralized) HR@{k}: {np.mean(diff):+.4f} "
                     f"(standard error over seeds {se:.4f}; per seed {', '.join(f'{v:+.4f}' for v in diff)})")
    for system in ("centralized", "structure"):  # paired over users within each seed (simulate's context_gain)
        gains = [r["systems"][system]["context_gain"] for r in runs if "context_gain" in r["systems"].get(system, {})]
        if gains:
            se = np.sqrt(sum(g["se"] ** 2 for g in gains)) / len(gains)
            means = [g["mean"] for g in gains]
            notes.append(f"{system}: context-aware - context-free HR@{k}, paired over users: {np.mean(means):+.4f} "
                         f"(standard error {se:.4f}; per seed {', '.join(f'{m:+.4f}' for m in means)})")
    # the same in expected HR (per-user planted probabilities); the federated row's context-free twins are its own
    # model at the user's training contexts (simulate.run_baselines)
    twins = {"expected_context_gain": " (its twin at the user's mean training context)",
             "expected_context_gain_mixture": " (its twin mixed over the user's training contexts)"}
    for system, key in (("federated", "expected_context_gain"), ("federated", "expected_context_gain_mixture"),
                        ("centralized", "expected_context_gain"), ("structure", "expected_context_gain")):
        gains = [r["systems"][system][key] for r in runs if key in r["systems"].get(system, {})]
        if gains:
            se = np.sqrt(sum(g["se"] ** 2 for g in gains)) / len(gains)
            means = [g["mean"] for g in gains]
            free = twins[key] if system == "federated" else ""
            notes.append(f"{system}: context-aware - context-free{free} expected HR@{k}, paired over users: "
                         f"{np.mean(means):+.4f} (standard error {se:.4f}; per seed {', '.join(f'{m:+.4f}' for m in means)})")
    return "\n".join(lines + [""] + [f"* {n}" for n in notes])


def run_seeds(cfg: Config, seeds: list[int], out: Path) -> dict:
    """`simulate` for each seed into out/seed{N} (kept if already there); writes seeds.json and table.md."""
    from simulations.simulate import simulate

    runs = []
    for seed in seeds:
        run_dir = out / f"seed{seed}"
        if not (run_dir / "summary.json").is_file():
            simulate(cfg.replace(seed=seed, run_dir=str(run_dir)))
        summary = json.loads((run_dir / "summary.json").read_text())
        runs.append({"seed": seed, "seconds": summary["timings"]["total_s"], "systems": summary["systems"]})
        write_atomic(out / "seeds.json", json.dumps({"config": cfg.to_flwr(), "runs": runs}, indent=2))
    return finish_table(out, runs, seed_table(runs, cfg.top_k))


def finish_table(out: Path, runs: list[dict], text: str) -> dict:
    """Write a study's table.md, print it, and return {"runs", "table"}."""
    write_atomic(out / "table.md", text + "\n")
    print(text, flush=True)
    return {"runs": runs, "table": text}


def study_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every study takes: --data, --seeds, --out, --set (repeatable)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--data", default="synthetic")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--set", dest="sets", action="append", default=[])
    return p


def main() -> None:
    a = study_parser(__doc__).parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    run_seeds(config_from_mapping({**parse_overrides(a.sets), "data": a.data}),
              [int(s) for s in a.seeds.split(",")], a.out)


if __name__ == "__main__":
    main()
