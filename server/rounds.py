"""What the server keeps between rounds: each round's row, the best evaluated round (early stopping / model
selection), the checkpoint schedule, and a requested stop (SIGINT/SIGTERM) taken between rounds."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import numpy as np

from common.errors import Interrupted, stop_requested
from common.evaluation.metrics import standard_errors
from common.federation.protocol import EVALUATED_USERS, ROUND, SQUARES

__all__ = ["RoundLog", "ModelSelection", "CheckpointSchedule", "check_stop", "with_errors"]


@dataclass
class RoundLog:
    """What the server learned in each round (scalars only)."""

    rows: list[dict[str, float | int]] = field(default_factory=list)


def with_errors(metrics: Mapping, users: int) -> dict:
    """A round's aggregated evaluation metrics for its row; a sub-sampled evaluation's `-sq` means become standard
    errors (`-se`), with the users evaluated as `evaluated-users`."""
    out = dict(metrics)
    if any(k.endswith(SQUARES) for k in out):
        out = {**standard_errors(out, users), EVALUATED_USERS: users}
    return out


@dataclass
class ModelSelection:
    """Early stopping: the evaluated round with the best value of `key` is kept as best = (score, round, params);
    key None keeps nothing (a private run releases its last round: a choice made on unnoised metrics is not
    accounted)."""

    key: str | None
    best: tuple[float, int, dict[str, np.ndarray] | None] = (-np.inf, 0, None)

    def offer(self, row: Mapping, params: Callable[[], dict[str, np.ndarray]] | None) -> None:
        """Keep the round of `row` if it beats the best so far; params() gives its global parameters."""
        score = row.get(self.key) if self.key else None
        if score is not None and score > self.best[0] and params is not None:
            self.best = (float(score), int(row[ROUND]), params())


@dataclass
class CheckpointSchedule:
    """on_checkpoint(round) after every `every`-th round and the last one (every 0: never); last: the round of the
    newest checkpoint (0: none)."""

    every: int
    num_rounds: int
    on_checkpoint: Callable[[int], None] | None = None
    last: int = 0

    def after_round(self, server_round: int) -> None:
        if self.on_checkpoint is not None and self.every and (server_round % self.every == 0
                                                               or server_round == self.num_rounds):
            self.on_checkpoint(server_round)
            self.last = server_round


def check_stop(server_round: int, rounds_done: int, last_checkpoint: int) -> None:
    """Between rounds: a simulation asked to stop (SIGINT/SIGTERM) ends here (Interrupted), its last checkpoint
    intact."""
    signal = stop_requested()
    if signal is not None:
        raise Interrupted(f"interrupted by {signal} before round {server_round} ({rounds_done} rounds done); "
                          + (f"the checkpoint of round {last_checkpoint} is intact: go on with --set "
                             f"resume=true and the same --out" if last_checkpoint else
                             "no checkpoint was written yet"))
