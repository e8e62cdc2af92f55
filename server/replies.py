"""A round's replies read in clear: the checks that keep a malformed reply out (each says why, or None when the
reply may be used) and the sum of the good training replies. Pure functions of the replies' content."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from flwr.app import Message, RecordDict

from common.federation.params import from_record
from common.federation.protocol import (CLIP_NORM, CLIP_SHIFTED_COUNT, EXAMPLES, METRICS, NUM_EXAMPLES, NUM_USERS, TRAIN_LOSS,
                             TRAIN_LOSS_SUM, UPDATE)

__all__ = ["ReplyCheck", "RoundSum", "RoundSkip", "user_count_problem", "reply_problem", "metrics_problem",
           "sum_replies"]

#: why a reply's content must not be used, or None
ReplyCheck = Callable[[RecordDict], "str | None"]


@dataclass(frozen=True)
class RoundSum:
    """What a training round's good replies add up to. updates: the summed updates to add ({name: array}; one per
    node read in clear, one in all from SecAgg+); users: the users they sum over; shifted: adaptive clipping's
    summed count; row: the round's row fields; extra_sensitivity: what SecAgg+'s rounding adds to one user's L2
    sensitivity (0 in clear)."""

    updates: list[dict[str, np.ndarray]]
    users: int
    shifted: float
    row: dict = field(default_factory=dict)
    extra_sensitivity: float = 0.0


@dataclass(frozen=True)
class RoundSkip:
    """A training round that cannot be aggregated: `replied` nodes replied well; why; the round's row fields."""

    replied: int
    reason: str
    row: dict


def user_count_problem(content: RecordDict) -> str | None:
    """Every reply carries METRICS with an integer num-users >= 0."""
    if METRICS not in content.metric_records:
        return "no metrics record"
    n = content.metric_records[METRICS].get(NUM_USERS)
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        return f"{NUM_USERS} must be an integer >= 0, got {n!r}"
    return None


def _update_problem(content: RecordDict, expected: dict[str, np.ndarray], n: int, clip: float | None) -> str | None:
    """Why a reply's UPDATE (the sum of n users' updates) is not the model's names, shapes and float dtypes, finite,
    and (clip given) within n x clip in L2 norm."""
    if UPDATE not in content.array_records:
        return "no update record"
    try:
        update = {k: v.numpy() for k, v in content.array_records[UPDATE].items()}  # as sent (dtype kept)
    except Exception as exc:  # an undecodable array record
        return f"update cannot be read ({exc})"
    if set(update) != set(expected):
        return f"update names {sorted(update)} are not the model's {sorted(expected)}"
    sq = 0.0
    for name, ref in expected.items():
        value = update[name]
        if value.shape != ref.shape:
            return f"update {name} has shape {value.shape}, expected {ref.shape}"
        if not np.issubdtype(value.dtype, np.floating):
            return f"update {name} has dtype {value.dtype}, expected a float"
        if not np.isfinite(value).all():
            return f"update {name} is not finite"
        sq += float(np.square(value, dtype=np.float64).sum())
    if clip is not None and math.sqrt(sq) > n * clip * (1 + 1e-4) + 1e-6:
        return f"update norm {math.sqrt(sq):.6g} exceeds {NUM_USERS} x {CLIP_NORM} = {n * clip:.6g}"
    return None


def reply_problem(content: RecordDict, expected: dict[str, np.ndarray], clip: float | None,
                  adaptive: bool) -> str | None:
    """Why a training reply must not be aggregated, or None if it is well-formed.

    expected: the round's global parameters (names, shapes); clip: the round's per-user clip norm under central
    DP (a node's sum of n clipped updates has norm <= n * clip), None without it; adaptive: the reply carries the
    clip-shifted count (|count| <= n / 2)."""
    problem = user_count_problem(content)
    if problem is not None:
        return problem
    metrics = content.metric_records[METRICS]
    n = metrics[NUM_USERS]
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"metric {key} is not finite ({value})"
    if adaptive and abs(float(metrics.get(CLIP_SHIFTED_COUNT, 0.0))) > n / 2 + 1e-9:
        return f"{CLIP_SHIFTED_COUNT} {metrics.get(CLIP_SHIFTED_COUNT)} is outside [-n/2, n/2] for n = {n}"
    if n == 0:
        return None
    return _update_problem(content, expected, n, clip)


def metrics_problem(content: RecordDict) -> str | None:
    """Why an evaluation reply must not be averaged, or None: its metrics must be finite rates in [0, 1]."""
    problem = user_count_problem(content)
    if problem is not None:
        return problem
    metrics = content.metric_records[METRICS]
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not (math.isfinite(v) and 0.0 <= v <= 1.0)]
    return f"metrics {bad} must be finite rates in [0, 1]" if bad else None


def sum_replies(valid: list[Message], row: dict) -> RoundSum:
    """The good training replies read in clear: each node's update sum, the users, the shifted count; `row` (the
    round's node counts) gains the examples and the mean training loss when every node sent them (not under local
    DP, client.node)."""
    sums, users, examples, loss, shifted = [], 0, 0, 0.0, 0.0
    has_loss = True
    for msg in valid:
        metrics = msg.content.metric_records[METRICS]
        n = int(metrics[NUM_USERS])
        if n > 0:
            sums.append(from_record(msg.content.array_records[UPDATE]))
        users += n
        has_loss = has_loss and TRAIN_LOSS_SUM in metrics
        examples += int(metrics.get(NUM_EXAMPLES, 0))
        loss += float(metrics.get(TRAIN_LOSS_SUM, 0.0))
        shifted += float(metrics.get(CLIP_SHIFTED_COUNT, 0.0))
    if has_loss:
        row = {**row, EXAMPLES: examples, TRAIN_LOSS: loss / max(users, 1)}
    return RoundSum(sums, users, shifted, row)
