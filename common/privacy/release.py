"""The release policy: which files of a run are released, and where diagnostics go."""

from __future__ import annotations

from pathlib import Path

__all__ = ["RELEASED_FILES", "DIAGNOSTICS", "diagnostics_dir"]


#: What a private run releases (top level of its run directory): the model, the public content vectors and the
#: privacy statement and ledger. Everything computed from the users' data without noise goes to DIAGNOSTICS.
RELEASED_FILES = ("global_model.npz", "item_vectors.npy", "schema.json", "privacy.json", "privacy_ledger.csv")

DIAGNOSTICS = "diagnostics"


def diagnostics_dir(run_dir: Path, private: bool) -> Path:
    """Where a run's data-dependent outputs (summary.json, rounds.csv, rounds.png, federated.json) go: the run
    directory itself without DP; its `diagnostics/` folder under DP, apart from what is released."""
    return Path(run_dir) / DIAGNOSTICS if private else Path(run_dir)
