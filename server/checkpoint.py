"""The server's checkpoint: everything a run needs to go on after an interruption, in one file.

RUN_DIR/checkpoint.npz holds the global shared parameters, the server optimiser's state, the
content descriptor (which encoder made h(c)), the round reached, the early-stopping choice, the round log,
the SECRET sampling key and, for central DP, the privacy ledger and the clip norm. The checkpoint is server-secret: it is never released (the round
log holds unnoised counts, and the key would reveal who took part in every round). It is replaced atomically (written beside it, then renamed), so a crash never
leaves half a checkpoint. The ledger is also written as privacy_ledger.csv next to it.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.federation.aggregation import ServerOptimizer
from common.config import Config, ConfigError
from common.io import savez_atomic, write_atomic
from common.privacy.sampling import SamplingKey

__all__ = ["ServerState", "save_checkpoint", "load_checkpoint", "check_resumable", "CHECKPOINT_FILE",
           "JOURNAL_FILE", "read_journal", "write_journal"]

CHECKPOINT_FILE = "checkpoint.npz"
#: Server-secret, rewritten when every training round begins: how many rounds the run has begun over all its
#: starts, the highest round begun, and the central-DP ledger so far. A resume goes back to the checkpoint, but
#: what was sent after it stays counted: its ledger rows are kept, its replayed rounds draw fresh samples, and
#: the local-DP bound counts every round begun.
JOURNAL_FILE = "round-journal.json"
#: settings a resumed run may change (everything else must equal the checkpoint's); the run directory may have
#: moved (`fedctx simulate` under loss=auto trains in candidates/<loss>/, then moves the kept run up)
RESUMABLE_CHANGES = ("num_rounds", "resume", "checkpoint_every", "content_batch", "ray_address", "run_dir")


@dataclass
class ServerState:
    """What the server knows after `round` rounds.

    params {name: array} global shared parameters; optimizer (its step and Adam moments);
    ledger [dict] the privacy ledger's rows (central DP); clip_norm and noise_multiplier of central DP
    (None without it); rows the round log; best (score, round, params | None) the evaluated round
    kept by early stopping; config the run's settings (kebab-case); content the content descriptor of h(c)
    (server.content.content_descriptor; None in a checkpoint written before descriptors existed).
    """

    round: int
    params: dict[str, np.ndarray]
    optimizer: ServerOptimizer
    config: dict[str, Any]
    rows: list[dict] = field(default_factory=list)
    ledger: list[dict] = field(default_factory=list)
    clip_norm: float | None = None
    noise_multiplier: float | None = None
    best: tuple[float, int, dict[str, np.ndarray] | None] = (-np.inf, 0, None)
    sampling_key: SamplingKey | None = None
    starts: int = 1  # how many times the run has started (1 + resumes): each start may warm theta_u up again
    schema_hash: str | None = None  # the public schema the run was trained under (common.data.schema)
    run_token: str = ""  # the run's public id (devices count their local-DP rounds per run)
    content: dict[str, Any] | None = None


def save_checkpoint(path: Path, state: ServerState) -> None:
    """Write state to path atomically and owner-only (common.io.savez_atomic: server-secret)."""
    opt = state.optimizer
    arrays = {f"params/{k}": v for k, v in state.params.items()}
    arrays.update({f"adam-m/{k}": v for k, v in opt.m.items()})
    arrays.update({f"adam-v/{k}": v for k, v in opt.v.items()})
    if state.best[2] is not None:
        arrays.update({f"best/{k}": v for k, v in state.best[2].items()})
    meta = {
        "round": state.round, "config": state.config, "rows": state.rows, "ledger": state.ledger,
        "clip_norm": state.clip_norm, "noise_multiplier": state.noise_multiplier,
        "best_score": None if not np.isfinite(state.best[0]) else state.best[0], "best_round": state.best[1],
        "sampling_key": state.sampling_key.hex() if state.sampling_key else None, "starts": int(state.starts),
        "schema_hash": state.schema_hash, "run_token": state.run_token,
        "sampling_key_secret": bool(state.sampling_key.secret) if state.sampling_key else True,
        "content": state.content,
        "optimizer": {"kind": opt.kind, "lr": opt.lr, "beta1": opt.beta1, "beta2": opt.beta2, "eps": opt.eps,
                      "step": opt.step, "total_steps": opt.total_steps, "final_fraction": opt.final_fraction,
                      "warmup_steps": opt.warmup_steps,
                      "decay": dict(opt.decay), "sgd_lr": dict(opt.sgd_lr)},
    }
    savez_atomic(path, {"meta": np.array(json.dumps(meta, default=_plain)), **arrays}, private=True)


def _plain(value: Any) -> Any:
    """numpy scalars in the round log as Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in a checkpoint")


def load_checkpoint(path: Path) -> ServerState:
    """Read a checkpoint written by save_checkpoint; a missing or unreadable file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume: no checkpoint at {path}. A run writes one every checkpoint-every rounds "
                                f"into its run-dir; set run-dir to that directory, or drop resume=true.")
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["meta"]))
            groups: dict[str, dict[str, np.ndarray]] = {"params": {}, "adam-m": {}, "adam-v": {}, "best": {}}
            for key in f.files:
                if key != "meta":
                    group, name = key.split("/", 1)
                    groups[group][name] = f[key]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise ConfigError(f"resume: {path} is not a readable checkpoint ({type(e).__name__}: {e}); it may be "
                          f"truncated or damaged. Fix: restore it from a copy, or start a new run-dir (drop "
                          f"resume=true).") from None
    o = meta["optimizer"]
    optimizer = ServerOptimizer(o["kind"], o["lr"], beta1=o["beta1"], beta2=o["beta2"], eps=o["eps"], step=o["step"],
                                total_steps=int(o.get("total_steps", 0)), final_fraction=float(o.get("final_fraction", 1.0)),
                                warmup_steps=int(o.get("warmup_steps", 0)),
                                m=groups["adam-m"], v=groups["adam-v"],
                                decay={k: float(w) for k, w in o.get("decay", {}).items()},
                                sgd_lr={k: float(a) for k, a in o.get("sgd_lr", {}).items()})
    best_score = -np.inf if meta["best_score"] is None else float(meta["best_score"])
    return ServerState(round=int(meta["round"]), params=groups["params"], optimizer=optimizer, config=meta["config"],
                       rows=meta["rows"], ledger=meta["ledger"], clip_norm=meta["clip_norm"],
                       noise_multiplier=meta["noise_multiplier"],
                       best=(best_score, int(meta["best_round"]), groups["best"] or None),
                       sampling_key=_sampling_key(meta), starts=int(meta.get("starts", 1)),
                       schema_hash=meta.get("schema_hash"), run_token=meta.get("run_token", ""),
                       content=meta.get("content"))


def _sampling_key(meta: dict) -> SamplingKey | None:
    """The checkpoint's (server-secret) sampling key; None in a checkpoint written before keys existed."""
    if not meta.get("sampling_key"):
        return None
    return SamplingKey.from_hex(meta["sampling_key"], bool(meta.get("sampling_key_secret", True)))


def check_resumable(state: ServerState, cfg: Config, path: Path, content: dict[str, Any] | None = None) -> None:
    """The run being resumed must be the checkpoint's run: same settings except RESUMABLE_CHANGES, the same
    content encoder (content: this run's content descriptor, default content_descriptor(cfg); compared with the
    checkpoint's when it has one), more rounds to go, and with target-epsilon the rounds it was calibrated for
    (more would exceed the budget)."""
    now = cfg.to_flwr()
    skip = {k.replace("_", "-") for k in RESUMABLE_CHANGES}
    changed = sorted(k for k in now if k not in skip and state.config.get(k) != now[k])
    if changed:
        diffs = ", ".join(f"{k}={state.config.get(k)!r} there, {now[k]!r} here" for k in changed)
        raise ConfigError(f"resume: {path} belongs to a run with other settings ({diffs}). Resume with the "
                         f"checkpoint's settings, or start a new run-dir.")
    if state.content is not None:
        if content is None:
            from server.content import content_descriptor

            content = content_descriptor(cfg)
        if content != state.content:
            keys = sorted(k for k in set(content) | set(state.content) if content.get(k) != state.content.get(k))
            diffs = ", ".join(f"{k}={state.content.get(k)!r} there, {content.get(k)!r} here" for k in keys)
            raise ConfigError(f"resume: {path} was trained on item vectors h(c) from another content encoder "
                              f"({diffs}); its model does not fit these vectors. Resume with the checkpoint's encoder "
                              f"(model files and vectors file unchanged), or start a new run-dir.")
    if state.round >= cfg.num_rounds:
        raise ConfigError(f"resume: {path} is at round {state.round}, and num-rounds is {cfg.num_rounds}: nothing "
                         f"to do. Raise num-rounds to train on.")
    planned = int(state.config["num-rounds"])
    if cfg.target_epsilon > 0 and cfg.central_dp and cfg.num_rounds > planned:
        raise ConfigError(f"resume: the noise was calibrated so that {planned} rounds stay within target-epsilon="
                         f"{cfg.target_epsilon}; num-rounds={cfg.num_rounds} would exceed it. Keep num-rounds="
                         f"{planned}, or set noise-multiplier instead of target-epsilon in a new run.")


def write_journal(run_dir: Path, run_token: str, rounds_begun: int, last_round_begun: int, ledger: list[dict]) -> None:
    """RUN_DIR/round-journal.json (JOURNAL_FILE), atomically, 0600."""
    write_atomic(Path(run_dir) / JOURNAL_FILE, json.dumps({"run_token": run_token, "rounds_begun": int(rounds_begun),
                 "last_round_begun": int(last_round_begun), "ledger": ledger}, default=_plain), private=True)


def read_journal(run_dir: Path | None, run_token: str) -> dict | None:
    """The journal of run `run_token` in run_dir, or None (none written, another run's, or unreadable)."""
    path = Path(run_dir) / JOURNAL_FILE if run_dir is not None else None
    if path is None or not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("run_token") == run_token and run_token else None

