"""Reports: the round line, rounds.csv, the results table and the plot."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping, Sequence

from common.io import atomic_file
from common.federation.protocol import EPSILON, RANKING, ROUND, SECONDS, TRAIN_LOSS, USERS, eval_metric, ranking_metric

__all__ = ["format_round", "write_rounds_csv", "results_table", "plot_rounds", "SYSTEMS"]


#: Order of systems in tables and plots.
#: On generated data the ceiling follows (`common.evaluation.ceiling`): the planted truth and the planted structure.
SYSTEMS = ("federated", "centralized", "context-free", "als", "bpr", "popularity", "oracle", "structure",
           "structure-context-free")


def format_round(row: Mapping[str, float | int], num_rounds: int, k: int, private: bool = False) -> str:
    """One progress line per round. `private` (a DP run): the round, epsilon and time only; the unnoised user
    count, loss and metrics would reach the console and the SuperLink's log, so they stay in diagnostics/."""
    eps = f"  epsilon {row[EPSILON]:.3f}" if EPSILON in row else ""
    seconds = f"  {row.get(SECONDS, 0.0):.1f}s"
    if private:
        return f"round {int(row[ROUND]):>3}/{num_rounds}{eps}{seconds}  (diagnostics/rounds.csv)"
    loss = f"{row[TRAIN_LOSS]:.4f}" if TRAIN_LOSS in row else "-"  # under local DP nodes send no loss
    text = f"round {int(row[ROUND]):>3}/{num_rounds}  users {int(row.get(USERS, 0)):>6}  loss {loss:>6}"
    val = {name: eval_metric("val", name, k) for name in RANKING}
    if val["hr"] in row:
        text += (f"  val HR@{k} {row[val['hr']]:.4f}  NDCG@{k} {row[val['ndcg']]:.4f}"
                 f"  sampled HR@{k} {row[val['hr-sampled']]:.4f}")
    return text + eps + seconds


def write_rounds_csv(rows: Sequence[Mapping[str, float | int]], path: Path) -> None:
    """Per-round metrics as CSV (one row per round; columns = union of keys)."""
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with atomic_file(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def results_table(systems: Mapping[str, Mapping[str, float]], k: int) -> str:
    """Fixed-width table of the final test metrics of each system; on generated data also each model's expected
    HR@k from the planted truth (column `expected-hr@k`; the federated model's is of its last round)."""
    cols = [ranking_metric(name, k) for name in RANKING]
    if any(m.get(f"expected-hr@{k}") is not None for m in systems.values()):
        cols.append(f"expected-hr@{k}")
    names = [s for s in SYSTEMS if s in systems] + [s for s in systems if s not in SYSTEMS]
    w = max([14] + [len(n) + 2 for n in names])
    head = f"{'system':<{w}}" + "".join(f"{c:>17}" for c in cols)
    lines = [head, "-" * len(head)]
    for name in names:
        m = systems[name]
        lines.append(f"{name:<{w}}" + "".join(
            f"{m[c]:>17.4f}" if m.get(c) is not None else f"{'-':>17}" for c in cols))
    return "\n".join(lines)


def plot_rounds(rows: Sequence[Mapping[str, float]], systems: Mapping[str, Mapping[str, float]], k: int,
                path: Path) -> None:
    """PNG: federated validation HR@k / NDCG@k per round, with the baselines' test values as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    evaluated = [r for r in rows if eval_metric("val", "hr", k) in r]
    x = [r[ROUND] for r in evaluated]
    for ax, metric, title in ((axes[0], "hr", f"HR@{k} (full ranking)"), (axes[1], "ndcg", f"NDCG@{k} (full ranking)")):
        ax.plot(x, [r[eval_metric("val", metric, k)] for r in evaluated], "o-", label="federated (validation)")
        ax.plot(x, [r[eval_metric("test", metric, k)] for r in evaluated], "s--", label="federated (test)", alpha=0.7)
        for i, name in enumerate(s for s in SYSTEMS if s != "federated" and s in systems):
            value = systems[name].get(ranking_metric(metric, k))
            if value is not None:
                ax.axhline(value, color=f"C{i + 2}", linestyle=":", label=f"{name} (test)")
        ax.set_xlabel("round")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[2].plot([r[ROUND] for r in rows], [r.get(TRAIN_LOSS, float("nan")) for r in rows], "o-")
    axes[2].set_xlabel("round")
    axes[2].set_title("mean local training loss per user")
    axes[2].grid(alpha=0.3)
    fig.tight_layout()
    with atomic_file(path) as tmp:  # the temporary name keeps path's suffix, which picks the format
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
