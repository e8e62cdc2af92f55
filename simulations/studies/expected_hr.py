"""Expected HR@k of finished runs on the embedded generator's data, from its planted truth.

    python -m simulations.studies.expected_hr runs/a runs/b ...

A realized HR@10 draws one test engagement per user, so on 1,000 users its standard error is about 0.008 and a
change of the model by 0.005 cannot be seen in one seed. The generator knows P(i | u, x_test) for every item, so
the expected hit rate of a ranking can be computed instead (`common.evaluation.ceiling.expected_hits`): its standard error is
that of the users' spread alone, and two rankings compared on the same users differ by far less than that.

For each run directory (a `fedctx simulate` run on `synthetic`, any settings) this scores the LAST round's model
(checkpoint.npz's parameters, every simulated device's theta_u in devices/*/node-state.npz) under the test
context, and prints its expected HR@k with the ceiling's (oracle, structure, structure-context-free) on the same
users, and the ratio to `structure`. The last round is used because the simulated devices keep only their latest
theta_u (the reported test HR is that of the round chosen on validation).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from common.io import write_atomic

__all__ = ["run_expected_hr"]


def run_expected_hr(run_dir: Path) -> dict:
    """{"federated-last-round": E[HR@k], ceiling systems: E[HR@k], "se": ..., "seed": ...} of one synthetic run."""
    from common.evaluation.ceiling import ceiling_scorers, counted_popularity, expected_hits
    from common.config import config_from_mapping
    from common.data.datasets import load_cached, resolve_dataset
    from common.privacy.sampling import training_members
    from common.privacy.release import diagnostics_dir
    from server.content import content_vectors
    from simulations.simulate import last_round_model, model_scorer, paired_difference, planted_store_inputs, twin_hits

    run_dir = Path(run_dir)
    found = [d / "summary.json" for d in (diagnostics_dir(run_dir, False), diagnostics_dir(run_dir, True))
             if (d / "summary.json").is_file()]
    if not found:
        raise FileNotFoundError(f"{run_dir}: no summary.json (not a finished `fedctx simulate` run directory).")
    summary = json.loads(found[0].read_text())
    cfg = config_from_mapping(summary["config"])
    if cfg.data != "synthetic":
        raise ValueError(f"{run_dir}: data is {cfg.data!r}; the expected HR needs the embedded generator's truth "
                         f"(data = synthetic).")
    ds = load_cached(str(resolve_dataset(cfg)))
    members = np.flatnonzero(training_members(np.asarray(ds.user_ids).astype(str), cfg.audit_fraction, cfg.seed))
    store, inputs = planted_store_inputs(cfg, ds, members)
    ceiling = ceiling_scorers(**inputs)
    truth, k = ceiling["oracle"], cfg.top_k
    out = {name: expected_hits(f, truth, store, k) for name, f in ceiling.items()}

    last = last_round_model(cfg, run_dir, store)
    if last is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint.npz (run with checkpoint-every > 0).")
    item_h = content_vectors(cfg, ds.item_texts, ds.item_ids)
    model = model_scorer(last[0], last[1], store, item_h)
    out = {"federated-last-round": expected_hits(model, truth, store, k), **out}
    counted = counted_popularity(inputs["planted"], store.items)
    out["structure-counted-popularity"] = expected_hits(
        lambda u: counted.item_probs(counted.topic_probs(inputs["est_pref"][u], inputs["test_code"][u])), truth,
        store, k)
    if cfg.use_context:  # the same model at the user's own training contexts (its context-free twins)
        for average, hits in twin_hits(last[0], last[1], store, item_h, truth, k).items():
            out[f"federated-context-averaged-{average}"] = hits
    return {"run": str(run_dir), "seed": cfg.seed, "k": k, "users": store.n_users,
            **{name: float(v.mean()) for name, v in out.items()},
            "se": {name: float(v.std(ddof=1) / np.sqrt(len(v))) for name, v in out.items()},
            "minus-structure-se": float(np.std(out["federated-last-round"] - out["structure"], ddof=1)
                                        / np.sqrt(store.n_users)),
            **({"context-gain": paired_difference(out["federated-last-round"],
                                                  out["federated-context-averaged-logits"]),
                "context-gain-mixture": paired_difference(out["federated-last-round"],
                                                          out["federated-context-averaged-probabilities"]),
                "structure-context-gain": paired_difference(out["structure"], out["structure-context-free"])}
               if "federated-context-averaged-logits" in out else {})}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m simulations.studies.expected_hr", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories of `fedctx simulate` on synthetic data")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    a = p.parse_args(argv)
    found = []
    for run in a.runs:
        r = run_expected_hr(run)
        found.append(r)
        k = r["k"]
        print(f"{run}: seed {r['seed']}, {r['users']} users; expected HR@{k}: federated (last round) "
              f"{r['federated-last-round']:.4f} ± {r['se']['federated-last-round']:.4f}, oracle {r['oracle']:.4f}, "
              f"structure {r['structure']:.4f}, structure-context-free {r['structure-context-free']:.4f}; "
              f"federated / structure {r['federated-last-round'] / r['structure']:.3f}")
        print(f"  structure with each item's popularity counted from the training rows instead of planted: "
              f"{r['structure-counted-popularity']:.4f}; federated / it "
              f"{r['federated-last-round'] / r['structure-counted-popularity']:.3f}")
        if "context-gain" in r:
            g, gm, gs = r["context-gain"], r["context-gain-mixture"], r["structure-context-gain"]
            print(f"  context gain (each system minus itself at the user's training contexts): structure "
                  f"{gs['mean']:+.4f} ± {gs['se']:.4f}; federated, at the mean context {g['mean']:+.4f} ± "
                  f"{g['se']:.4f} (ratio {g['mean'] / gs['mean']:.2f}), mixed in probability {gm['mean']:+.4f} ± "
                  f"{gm['se']:.4f} (ratio {gm['mean'] / gs['mean']:.2f})")
    if a.json:
        write_atomic(a.json, json.dumps(found, indent=2) + "\n")
    return found


if __name__ == "__main__":
    main()
