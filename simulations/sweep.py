"""Privacy/accuracy trade-off study: federated runs over privacy settings and seeds, with the audit.

Every (setting, seed) is a real Flower simulation of this project's apps. A share of the users
(`audit-fraction`) is held out of training; after the run, the loss-threshold membership attack of
`common.evaluation.audit` is run on the released global model, members against held-out users.
The reported metrics are those of the LAST round: choosing a round by validation metrics would use
the users' data outside the privacy accounting.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from common.config import Config, ConfigError, config_from_mapping
from common.io import atomic_file, write_atomic
from common.privacy.release import diagnostics_dir

__all__ = ["SweepPlan", "SWEEP_DEFAULTS", "sweep_config", "run_sweep", "summarise", "markdown_table",
           "plot_tradeoff", "COLUMNS"]

#: The sweep's default setting: big enough for user-level DP (many users per round: with 10,000 users and
#: 40 rounds central DP at epsilon 8 kept 0.34 of the non-private HR@10, with 40,000 users 0.74, and 0.78 over
#: 3 seeds at 60 rounds; 60,000 users cut the noise on the mean by a third), small enough for 2 cores in well
#: under an hour (4 settings x 3 seeds; see the README for the measured time).
SWEEP_DEFAULTS: dict[str, Any] = {
    "synthetic-users": 60000,
    "synthetic-items": 10000,
    "sample-rate": 0.1,
    "num-rounds": 60,
    "clip-norm": 0.02,
    "audit-fraction": 0.2,
    # the published sweeps were measured with a constant server step of 0.02 (the defaults before the cosine
    # decay); kept here so that they stay reproducible
    "server-lr": 0.02,
    "server-lr-final": 1.0,
    # and with theta_u's local step at 0.2 (the default until 2026-12-04)
    "theta-lr": 0.2,
    # and with FedAdam on the item tables in every row: server-item-lr's auto default (-1) gives plain item steps
    # to the non-private row only, which would compare two optimizers instead of the cost of DP
    "server-item-lr": 0.0,
    # one loss in every row: loss=auto would choose between two on the non-private row only
    "loss": "softmax",
}

COLUMNS = ("setting", "unit", "target_epsilon", "epsilon", "delta", "noise_multiplier", "clip_norm", "sample_rate",
           "rounds", "seed", "hr@10", "ndcg@10", "hr@10-sampled", "ndcg@10-sampled", "mia_auc",
           "audit_members", "audit_nonmembers", "seconds")


@dataclass(frozen=True)
class SweepPlan:
    """What to sweep. epsilons: target epsilons of central DP (math.inf = non-private);
    seeds: one run per seed and setting; audit_users: at most this many members and as many
    non-members are attacked per run."""

    epsilons: tuple[float, ...] = (1.0, 4.0, 8.0, math.inf)
    seeds: tuple[int, ...] = (0, 1, 2)
    audit_users: int = 1000
    local_noise: tuple[float, ...] = (1.0,)
    local_inexact: bool = False

    def __post_init__(self) -> None:
        if not self.epsilons or any(not (e > 0) for e in self.epsilons):
            raise ConfigError(f"epsilons: each must be > 0 (inf = non-private). Found {list(self.epsilons)}.")
        if any(not (0 < z < math.inf) for z in self.local_noise):
            raise ConfigError(f"local-noise: each noise multiplier must be > 0 and finite. Found {list(self.local_noise)}.")
        if not self.seeds:
            raise ConfigError("seeds: give at least one seed.")
        if self.audit_users < 2:
            raise ConfigError(f"audit-users: must be >= 2. Found {self.audit_users}.")

    def settings(self, base: Config) -> list[tuple[str, Config]]:
        """(label, config) per privacy setting, without the seed."""
        out = []
        for eps in self.epsilons:
            if math.isinf(eps):
                out.append(("non-private", base.replace(privacy="none", target_epsilon=0.0)))
            else:
                out.append((f"central eps={eps:g}", base.replace(privacy="central", target_epsilon=float(eps))))
        for z in self.local_noise:
            local = base.replace(privacy="local", local_noise_multiplier=float(z), target_epsilon=0.0)
            out.append((f"local z={z:g}", local.replace(local_dp_theta=True)))
            if self.local_inexact:
                out.append((f"local z={z:g} inexact", local.replace(local_dp_theta=False)))
        return out


def _floats(name: str, value: Any) -> tuple[float, ...]:
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    try:
        return tuple(float(x) for x in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: must be a list of numbers (e.g. 0.5,1,inf). Found {value!r}.") from None


#: [sweep] keys (also accepted by --set): SweepPlan field and parser.
_PLAN_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "epsilons": ("epsilons", lambda v: _floats("epsilons", v)),
    "seeds": ("seeds", lambda v: tuple(int(x) for x in _floats("seeds", v))),
    "audit-users": ("audit_users", int),
    "local-noise": ("local_noise", lambda v: () if v in ("", [], "none") else _floats("local-noise", v)),
    "local-inexact": ("local_inexact", lambda v: str(v).strip().lower() in ("true", "1", "yes", "on")),
}


def sweep_config(config_file: Path | None, sets: Mapping[str, str], data: str | None = None
                 ) -> tuple[Config, SweepPlan]:
    """Base config and plan: SWEEP_DEFAULTS < the file's settings < --set.

    The TOML file holds settings at top level (kebab-case, as in [tool.flwr.app.config]) and an
    optional [sweep] table with `epsilons`, `seeds` and `audit-users`.
    """
    values: dict[str, Any] = dict(SWEEP_DEFAULTS)
    plan_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            doc = tomllib.loads(Path(config_file).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ConfigError(f"{config_file}: cannot read the sweep config ({err}).") from None
        plan_values = dict(doc.pop("sweep", {}))
        values.update(doc)
    values.update(sets)
    for key in _PLAN_KEYS:
        if key in values:
            plan_values[key] = values.pop(key)
    if data is not None:
        values["data"] = data
    base = config_from_mapping(values)
    unknown = set(plan_values) - set(_PLAN_KEYS)
    if unknown:
        raise ConfigError(f"[sweep]: unknown keys {sorted(unknown)}. Known: {', '.join(_PLAN_KEYS)}.")
    plan = dataclasses.replace(SweepPlan(), **{_PLAN_KEYS[k][0]: _PLAN_KEYS[k][1](v) for k, v in plan_values.items()})
    if base.audit_fraction <= 0:
        raise ConfigError("audit-fraction: the sweep needs held-out users for the membership audit (> 0).")
    return base, plan


def audit_run(cfg: Config, run_dir: Path, audit_users: int) -> tuple[float, int, int]:
    """Membership-inference AUC of the run's released global model (members vs held-out users)."""
    from common.evaluation.audit import membership_auc, user_losses
    from common.data.datasets import load_cached, resolve_dataset
    from common.federation.users import UserStore
    from common.privacy.sampling import training_members
    ds = load_cached(str(resolve_dataset(cfg)))
    with np.load(run_dir / "global_model.npz") as f:
        params = {k.replace(".", "/"): f[k] for k in f.files}
    item_h = np.load(run_dir / "item_vectors.npy")  # the server's content encoding of this run
    members = training_members(np.asarray(ds.user_ids).astype(str), cfg.audit_fraction, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    m_users = np.flatnonzero(members)
    n_users = np.flatnonzero(~members)
    n = min(audit_users, len(m_users), len(n_users))
    m_users = np.sort(rng.choice(m_users, n, replace=False))
    n_users = np.sort(rng.choice(n_users, n, replace=False))
    store = UserStore.from_prepared(ds, np.concatenate([m_users, n_users]), use_context=cfg.use_context)
    losses = user_losses(params, store, np.arange(2 * n), item_h, cfg.half_life_days)
    return membership_auc(losses[:n], losses[n:]), n, n


def _write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([{c: r.get(c) for c in COLUMNS} for r in rows])


def run_sweep(base: Config, plan: SweepPlan, out: Path, nodes: int = 2,
              say: Callable[[str], None] = print) -> Path:
    """Run every setting x seed; write tradeoff.csv (after every run), tradeoff.md and tradeoff.png."""
    from simulations.simulate import run_flower_simulation

    out = Path(out).resolve()
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"sweep directory {out} exists and is not empty. Fix: choose another --out.")
    out.mkdir(parents=True, exist_ok=True)
    base = base.replace(eval_every=base.num_rounds)  # only the last round is reported (see module doc)
    settings = plan.settings(base)
    total = len(settings) * len(plan.seeds)
    write_atomic(out / "sweep.json", json.dumps({
        "base": base.to_flwr(), "epsilons": [str(e) for e in plan.epsilons], "seeds": list(plan.seeds),
        "audit_users": plan.audit_users, "nodes": nodes}, indent=2))
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for i, (seed, (label, cfg)) in enumerate(((s, x) for s in plan.seeds for x in settings), start=1):
        run_dir = out / "runs" / f"{label.replace(' ', '-').replace('=', '')}-seed{seed}"
        cfg = cfg.replace(seed=seed, run_dir=str(run_dir))
        t0 = time.perf_counter()
        run_dir.mkdir(parents=True)
        run_flower_simulation(cfg, nodes)
        fed_file = diagnostics_dir(run_dir, cfg.private) / "federated.json"
        if not fed_file.is_file():
            raise RuntimeError(f"{label}, seed {seed}: the federated run wrote no results ({run_dir}); "
                               f"rerun it with `fedctx simulate --verbose` and the same settings to see why")
        fed = json.loads(fed_file.read_text())
        auc, n_m, n_n = audit_run(cfg, run_dir, plan.audit_users)
        last = fed["last_round_metrics"]
        priv = fed.get("privacy") or {}
        local = cfg.local_dp  # the plan's settings: none, central or local (never local+central)
        row = {
            "setting": label, "unit": ("example (every client)" if cfg.local_dp_theta else "example (NOT exact)")
            if local else "user",
            "target_epsilon": cfg.target_epsilon if cfg.central_dp else math.inf,
            "epsilon": priv["epsilon"] if local else priv.get("epsilon", math.inf),
            "delta": priv.get("delta", 0.0), "noise_multiplier": priv.get("noise_multiplier", 0.0),
            "clip_norm": (cfg.local_clip_norm if local else cfg.clip_norm) if cfg.private else "",
            "sample_rate": cfg.sample_rate,
            "rounds": cfg.num_rounds, "seed": seed, "hr@10": last.get(f"hr@{cfg.top_k}"),
            "ndcg@10": last.get(f"ndcg@{cfg.top_k}"), "hr@10-sampled": last.get(f"hr@{cfg.top_k}-sampled"),
            "ndcg@10-sampled": last.get(f"ndcg@{cfg.top_k}-sampled"), "mia_auc": auc,
            "audit_members": n_m, "audit_nonmembers": n_n, "seconds": round(time.perf_counter() - t0, 1),
        }
        rows.append(row)
        _write_csv(rows, out / "tradeoff.csv")
        elapsed = time.perf_counter() - t_start
        say(f"[{i}/{total}] {label:<18} seed {seed}: HR@10 {row['hr@10']:.4f}  NDCG@10 {row['ndcg@10']:.4f}  "
            f"epsilon {row['epsilon']:.3g}  MIA AUC {auc:.3f}  ({row['seconds']:.0f}s; "
            f"about {elapsed / i * (total - i) / 60:.0f} min left)")
    table = summarise(rows)
    write_atomic(out / "tradeoff.md", markdown_table(table, base))
    plot_tradeoff(table, out / "tradeoff.png")
    say("")
    say(markdown_table(table, base))
    return out


def summarise(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One entry per setting: means and sample standard deviations over seeds."""
    out = []
    for label in dict.fromkeys(r["setting"] for r in rows):
        group = [r for r in rows if r["setting"] == label]
        entry: dict[str, Any] = {"setting": label, "unit": group[0].get("unit", "user"),
                                 "target_epsilon": float(group[0]["target_epsilon"]),
                                 "seeds": len(group), "delta": float(group[0]["delta"])}
        for col in ("epsilon", "noise_multiplier", "hr@10", "ndcg@10", "hr@10-sampled", "mia_auc"):
            values = np.array([float(r[col]) for r in group])
            entry[col] = float(values.mean())
            finite = np.isfinite(values).all()
            entry[f"{col}-sd"] = float(values.std(ddof=1)) if len(values) > 1 and finite else 0.0
        out.append(entry)
    ref = next((e for e in out if e["setting"] == "non-private"), None)
    for e in out:
        e["hr@10-ratio"] = e["hr@10"] / ref["hr@10"] if ref and ref["hr@10"] > 0 else float("nan")
    return out


def markdown_table(table: Sequence[Mapping[str, Any]], base: Config) -> str:
    """The trade-off table (mean +- sd over seeds)."""
    lines = ["| setting | epsilon | unit of privacy | noise multiplier z | HR@10 | NDCG@10 | HR@10 / non-private "
             "| MIA AUC | seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in table:
        eps = "inf" if math.isinf(e["epsilon"]) else f"{e['epsilon']:.2f}"
        unit = "-" if e["setting"] == "non-private" else e.get("unit", "user")
        lines.append(f"| {e['setting']} | {eps} | {unit} | {e['noise_multiplier']:.3f} | {e['hr@10']:.4f} +- "
                     f"{e['hr@10-sd']:.4f} | {e['ndcg@10']:.4f} +- {e['ndcg@10-sd']:.4f} | {e['hr@10-ratio']:.2f} | "
                     f"{e['mia_auc']:.3f} +- {e['mia_auc-sd']:.3f} | {e['seeds']} |")
    delta = next((e["delta"] for e in table if e["delta"] > 0), None)
    lines.append("")
    lines.append(f"Data: {base.data}"
                 + (f" ({base.synthetic_users} users, {base.synthetic_items} items)" if base.data == "synthetic" else "")
                 + f"; {base.num_rounds} rounds, Poisson user sampling q = {base.sample_rate}, clip norm C = "
                 f"{base.clip_norm}, {base.audit_fraction:.0%} of users held out as audit non-members"
                 + (f", delta = {delta:.3g}" if delta else "") + ". Metrics of the last round (full ranking, "
                 "test split); MIA: loss-threshold attack on the released global model (ROC AUC, 0.5 = chance)."
                 + (" Local rows: example-level DP-SGD on every device (add/remove one engagement), epsilon bound "
                    "of a client that takes part in every round; 'NOT exact': theta_u trained without noise, no "
                    "formal guarantee."
                    if any(e["setting"].startswith("local") for e in table) else ""))
    return "\n".join(lines) + "\n"


def plot_tradeoff(table: Sequence[Mapping[str, Any]], path: Path) -> None:
    """PNG: HR@10, NDCG@10 and MIA AUC against epsilon (log scale), error bars = sd over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    private = [e for e in table if e["setting"].startswith("central")]
    local = [e for e in table if e["setting"].startswith("local") and math.isfinite(e["epsilon"])]
    ref = next((e for e in table if e["setting"] == "non-private"), None)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, col, title in ((axes[0], "hr@10", "HR@10 (full ranking)"), (axes[1], "ndcg@10", "NDCG@10"),
                           (axes[2], "mia_auc", "membership-inference AUC")):
        if private:
            ax.errorbar([e["epsilon"] for e in private], [e[col] for e in private],
                        yerr=[e[f"{col}-sd"] for e in private], fmt="o-", capsize=4,
                        label="central DP (user-level epsilon)")
        if local:
            ax.errorbar([e["epsilon"] for e in local], [e[col] for e in local], yerr=[e[f"{col}-sd"] for e in local],
                        fmt="s", color="C2", capsize=4, label="local DP-SGD (example-level epsilon)")
        if ref is not None:
            ax.axhline(ref[col], color="C1", linestyle="--", label="non-private")
            ax.axhspan(ref[col] - ref[f"{col}-sd"], ref[col] + ref[f"{col}-sd"], color="C1", alpha=0.15)
        if col == "mia_auc":
            ax.axhline(0.5, color="gray", linestyle=":", label="chance")
        ax.set_xscale("log")
        ticks = sorted({e["epsilon"] for e in private + local})
        if ticks:  # label the swept epsilons themselves, not powers of ten
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:.3g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel("epsilon")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:  # the temporary name keeps path's suffix, which picks the format
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
