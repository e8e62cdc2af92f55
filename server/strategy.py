"""User-level federated averaging on top of Flower's FedAvg.

Every node is contacted each round; the server owns user sampling (rate q and a per-round seed
in the train config, derived from the run's secret `SamplingKey` and sent only in that round),
and each node applies it to its own users with `common.federated.poisson_sample`.
Nodes reply with the SUM of their sampled users' updates and the user count; the server divides
the total by the number of users (each user weighs the same) and applies a server optimiser.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import INFO
from typing import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common.aggregation import ServerOptimizer, sum_updates
from common.params import from_record, to_record
from common.privacy import (PrivacyLedger, SamplingKey, SecureGaussian, adaptive_sum_noise, next_clip_norm,
                            noisy_mean)

__all__ = ["UserFedAvg", "RoundLog", "CentralDP", "AdaptiveClip"]


@dataclass
class AdaptiveClip:
    """Quantile-based adaptive clipping (Andrew et al. 2021): each round the nodes also send the sum of
    1[norm <= C] - 1/2 over their sampled users; the server adds N(0, count_stddev^2) and moves C
    geometrically toward the `quantile` of the update norms."""

    quantile: float
    lr: float
    count_stddev: float


@dataclass
class CentralDP:
    """User-level DP-FedAvg at the server (McMahan et al. 2018): nodes clip every user's update to
    clip_norm; the server adds N(0, (z C)^2) to the sum and divides by the fixed denominator q N.
    With adaptive clipping the sum gets z_sum = adaptive_sum_noise(z, count_stddev) and the count the
    rest, so the ledger's z still accounts for everything released; clip_norm changes every round."""

    clip_norm: float
    noise_multiplier: float
    denominator: float
    ledger: PrivacyLedger
    noise: SecureGaussian = field(default_factory=SecureGaussian)
    adaptive: AdaptiveClip | None = None

    @property
    def sum_noise_multiplier(self) -> float:
        if self.adaptive is None:
            return self.noise_multiplier
        return adaptive_sum_noise(self.noise_multiplier, self.adaptive.count_stddev)


@dataclass
class RoundLog:
    """What the server learned in each round (scalars only)."""

    rows: list[dict[str, float | int]] = field(default_factory=list)


class UserFedAvg(FedAvg):
    """FedAvg over users, not nodes; see the module docstring.

    content: public item vectors h(c), sent with the first training round (of this process).
    on_round(row): called after each round's evaluation with the round's scalars.
    num_rounds: rounds of the whole run; round_offset: rounds already done (a resumed run), so Flower's
    round r is the run's round r + round_offset (the nodes' sampling and the ledger use the latter).
    on_checkpoint(round): called after every checkpoint_every-th round and the last one (0 = never).
    sampling_key: the run's secret; round r's sampling seed is sampling_key.round_seed(r).
    select_key: the evaluated round with the best value of this metric is kept (early stopping); None keeps
    nothing (a private run releases its last round: a choice made on unnoised metrics is not accounted).
    """

    def __init__(self, *, content: ArrayRecord, optimizer: ServerOptimizer, sample_rate: float,
                 sampling_key: SamplingKey, eval_every: int, num_rounds: int,
                 on_round: Callable[[dict], None] | None = None,
                 dp: CentralDP | None = None, select_key: str | None = "val-hr@10", round_offset: int = 0,
                 checkpoint_every: int = 0, on_checkpoint: Callable[[int], None] | None = None) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=1.0, weighted_by_key="num-users")
        self.content = content
        self.optimizer = optimizer
        self.sample_rate = sample_rate
        self.sampling_key = sampling_key
        self.eval_every = eval_every
        self.num_rounds = num_rounds
        self.on_round = on_round
        self.dp = dp
        self.current: dict[str, np.ndarray] | None = None
        self.log = RoundLog()
        self.select_key = select_key  # the evaluated round with the best value is kept (early stopping)
        self.best: tuple[float, int, dict[str, np.ndarray] | None] = (-np.inf, 0, None)
        self.round_offset = round_offset
        self.checkpoint_every = checkpoint_every
        self.on_checkpoint = on_checkpoint
        self.latest: dict[str, np.ndarray] | None = None  # the global parameters after the last round
        self._eval_arrays: ArrayRecord | None = None
        self._row: dict[str, float | int] = {}
        self._t0 = time.perf_counter()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._t0 = time.perf_counter()
        first = server_round == 1  # the first round of this process: the nodes need the content
        server_round += self.round_offset
        self.current = self.latest = from_record(arrays)
        config["sample-rate"] = float(self.sample_rate)
        config["sampling-seed"] = self.sampling_key.round_seed(server_round)  # secret; this round only
        if self.dp is not None:
            config["clip-norm"] = float(self.dp.clip_norm)  # this round's C (it moves with adaptive clipping)
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if first and messages:
            messages[0].content["content"] = self.content  # one RecordDict is shared by all messages
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        valid, errors = self._check_and_log_replies(replies, is_train=True, validate=False)
        if errors:
            raise RuntimeError(f"round {server_round}: {len(errors)} node(s) failed: "
                               + "; ".join(m.error.reason for m in errors[:3]))
        sums, users, examples, loss, shifted = [], 0, 0, 0.0, 0.0
        has_loss = True  # under local DP nodes send no example count and no loss (see client.node)
        for msg in valid:
            metrics = msg.content.metric_records["metrics"]
            n = int(metrics["num-users"])
            if n > 0:
                sums.append(from_record(msg.content.array_records["update"]))
            users += n
            has_loss = has_loss and "train-loss-sum" in metrics
            examples += int(metrics.get("num-examples", 0))
            loss += float(metrics.get("train-loss-sum", 0.0))
            shifted += float(metrics.get("clip-shifted-count", 0.0))
        self._row = {"round": server_round, "users": users}
        if has_loss:
            self._row.update({"examples": examples, "train-loss": loss / max(users, 1)})
        if self.current is None:
            return None, MetricRecord({"num-users": 0})
        if self.dp is not None:  # a DP round counts (and is noised) even if nobody was sampled
            total = sum_updates(sums) if sums else {k: np.zeros_like(v, np.float64) for k, v in self.current.items()}
            mean = noisy_mean(total, self.dp.clip_norm, self.dp.sum_noise_multiplier, self.dp.denominator,
                              self.dp.noise)
            record = self.dp.ledger.append(server_round, self.sample_rate, self.dp.noise_multiplier,
                                           self.dp.clip_norm)
            self._row["epsilon"] = record.epsilon
            self._row["clip-norm"] = self.dp.clip_norm
            if self.dp.adaptive is not None:
                a = self.dp.adaptive
                self.dp.clip_norm, below = next_clip_norm(
                    self.dp.clip_norm, shifted, float(self.dp.noise.normal(a.count_stddev, (1,))[0]),
                    self.dp.denominator, a.quantile, a.lr)
                self._row["unclipped-share"] = below
        elif users == 0:
            return None, MetricRecord({"num-users": 0})
        else:
            total = sum_updates(sums)
            mean = {k: v / users for k, v in total.items()}
        new = self.optimizer.apply(self.current, mean)
        self.latest = new
        self._row["train-seconds"] = time.perf_counter() - self._t0
        return to_record(new), MetricRecord({"num-users": users})

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        if server_round % self.eval_every and server_round != self.num_rounds:
            self._finish_round({})
            return []
        self._eval_arrays = arrays
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        if not replies:  # evaluation skipped this round (see configure_evaluate)
            return None
        metrics = super().aggregate_evaluate(server_round, replies)
        self._finish_round(dict(metrics) if metrics is not None else {})
        return metrics

    def _finish_round(self, metrics: dict) -> None:
        row = dict(self._row)
        row.update({k: float(v) for k, v in metrics.items() if k != "num-users"})
        row["seconds"] = time.perf_counter() - self._t0
        self.log.rows.append(row)
        score = row.get(self.select_key) if self.select_key else None
        if score is not None and score > self.best[0] and self._eval_arrays is not None:
            self.best = (float(score), int(row["round"]), from_record(self._eval_arrays))
        if self.on_round is not None:
            self.on_round(row)
        r = int(row["round"])
        if self.on_checkpoint is not None and self.checkpoint_every and (r % self.checkpoint_every == 0
                                                                         or r == self.num_rounds):
            self.on_checkpoint(r)
        log(INFO, "round %s done", row.get("round"))
