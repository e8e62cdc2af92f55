"""Word2Vec against a pretrained sentence encoder: accuracy (federated, centralized, cold start) and the
server's encoding time. Writes study.json and a Markdown table into --out.

    python -m simulations.studies.encoder_study --data DIR --model MODEL_DIR --seeds 0,1,2 --out runs/encoders \
        --set num-rounds=100 --set local-steps=5 ...
    python -m simulations.studies.encoder_study --timing-only --data DIR --model MODEL_DIR --out runs/encoders-timing
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from common.config import Config, config_from_mapping, parse_overrides
from common.data.datasets import load_cached, resolve_dataset
from common.io import write_atomic
from simulations.studies.seeds import finish_table, mean_sd, study_parser

__all__ = ["encoding_times", "run_study"]

ENCODERS = ("word2vec", "sentence-encoder")


def encoding_times(cfg: Config, n_large: int = 100_000) -> list[dict]:
    """Seconds to compute h(c) without the cache, per encoder: the run's catalogue, and n_large items whose
    texts cycle through the catalogue's (the sentence encoder's model loading is timed apart). Each `*_s` is
    wall-clock time; `*_cpu_s` the process's CPU time (all threads), which a busy machine inflates less."""
    from server.content import SentenceEncoder, _resolve_model_dir, item_content

    ds = load_cached(str(resolve_dataset(cfg)))
    texts = list(ds.item_texts)
    large = [texts[i % len(texts)] for i in range(n_large)]
    out = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["FEDCTX_CACHE"] = cache  # a cold cache: every encoding is computed
        for name in ENCODERS:
            c = cfg.replace(content_encoder=name)
            row = {"encoder": name, "catalogue_items": len(texts)}

            def timed(key: str, work) -> object:
                t0, c0 = time.perf_counter(), time.process_time()
                result = work()
                row[f"{key}_s"], row[f"{key}_cpu_s"] = time.perf_counter() - t0, time.process_time() - c0
                return result

            if name == "sentence-encoder":
                enc = timed("model_load", lambda: SentenceEncoder(_resolve_model_dir(c.content_model),
                                                                  c.content_max_length, c.content_batch))
                timed("catalogue", lambda: enc.encode(texts))
                timed(f"items_{n_large}", lambda: enc.encode(large))
            else:
                timed("catalogue", lambda: item_content(c, texts, ds.item_ids))
                timed(f"items_{n_large}", lambda: item_content(c, large, np.arange(n_large).astype(str)))
            out.append(row)
            print(json.dumps(row), flush=True)
    return out


def _baselines_only(cfg: Config, run_dir: Path) -> None:
    """The centralized, context-free and popularity systems alone (no federation), as summary.json."""
    from server.content import item_content
    from simulations.simulate import run_baselines

    ds = load_cached(str(resolve_dataset(cfg)))
    t0 = time.perf_counter()
    content = item_content(cfg, ds.item_texts, ds.item_ids)
    content_s = time.perf_counter() - t0
    systems, timings = run_baselines(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(run_dir / "summary.json", json.dumps({
        "systems": systems, "content": {**content.descriptor, "width": content.width}, "config": cfg.to_flwr(),
        "timings": {**timings, "content_s": content_s, "total_s": time.perf_counter() - t0}}, indent=2))


def run_study(cfg: Config, seeds: list[int], out: Path, federated: bool = True) -> dict:
    """`simulate` (federated + baselines; with federated=False the baselines alone) for each seed and encoder
    (a run already in `out` is kept, so a study can grow seed by seed); mean and sd of each system's metrics
    over the seeds."""
    from simulations.simulate import simulate

    k = cfg.top_k
    runs = []
    for seed in seeds:
        for name in ENCODERS:
            run_dir = out / f"{name}-seed{seed}"
            c = cfg.replace(content_encoder=name, seed=seed, run_dir=str(run_dir))
            if not (run_dir / "summary.json").is_file():
                simulate(c) if federated else _baselines_only(c, run_dir)
            summary = json.loads((run_dir / "summary.json").read_text())
            runs.append({"encoder": name, "seed": seed, "seconds": summary["timings"]["total_s"],
                         "content_s": summary["timings"]["content_s"], "content": summary["content"],
                         "systems": summary["systems"]})
            write_atomic(out / "study.json", json.dumps({"config": cfg.to_flwr(), "runs": runs}, indent=2))
    table = ["| encoder | system | HR@10 | NDCG@10 | cold-start HR@10 (users) |", "| --- | --- | --- | --- | --- |"]
    for name in ENCODERS:
        mine = [r for r in runs if r["encoder"] == name]
        for system in ("federated", "centralized", "context-free", "popularity"):
            def stat(key: str) -> str:
                return mean_sd([r["systems"][system].get(key) for r in mine if system in r["systems"]])
            cold_users = [r["systems"][system].get("cold_users") for r in mine if system in r["systems"]]
            users = f" ({'/'.join(str(u) for u in cold_users)})" if cold_users and cold_users[0] is not None else ""
            table.append(f"| {name} | {system} | {stat(f'hr@{k}')} | {stat(f'ndcg@{k}')} | "
                         f"{stat(f'hr@{k}-cold')}{users} |")
    return finish_table(out, runs, "\n".join(table))


def main() -> None:
    p = study_parser(__doc__)
    p.add_argument("--model", required=True, help="the sentence encoder's model directory (content-model)")
    p.add_argument("--timing-only", action="store_true")
    p.add_argument("--no-federated", action="store_true", help="the baselines alone (no Flower simulation)")
    p.add_argument("--large", type=int, default=100_000)
    a = p.parse_args()
    cfg = config_from_mapping({**parse_overrides(a.sets), "data": a.data, "content-model": a.model})
    a.out.mkdir(parents=True, exist_ok=True)
    if a.timing_only:
        rows = encoding_times(cfg, a.large)
        write_atomic(a.out / "timing.json", json.dumps(rows, indent=2))
        return
    run_study(cfg, [int(s) for s in a.seeds.split(",")], a.out, federated=not a.no_federated)


if __name__ == "__main__":
    main()
