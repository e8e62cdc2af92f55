"""User-level federated averaging on top of Flower's FedAvg: a thin strategy that composes the server's rules.

Every node is contacted each round; the server owns user sampling (rate q and a per-round seed
in the train config, derived from the run's secret `SamplingKey` and sent only in that round),
and each node applies it to its own users with `common.privacy.sampling.poisson_sample`.
Nodes reply with the SUM of their sampled users' updates and the user count; the server divides
the total by the number of users (each user weighs the same) and applies a server optimiser.

The rules, one part each:
    server.nodes        NodeBook: each node's message (content to those that lack it), dropped replies
    server.sampling     UserSampling: the round's rate and each node's secret seed
    server.replies      the reply checks and the plain (in clear) sum of the good replies
    server.central_dp   CentralDP: the DP-FedAvg query (fixed or adaptive clipping), its state and the ledger
    server.secagg_driver SecureDriver: every round as a SecAgg+ round (server.secagg)
    server.rounds       the round's row, model selection (early stopping), checkpoints, a requested stop
"""

from __future__ import annotations

import time
from logging import INFO, WARNING
from typing import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from common.federation.aggregation import ServerOptimizer, sum_updates
from common.errors import RunFailed
from common.federation.params import from_record, to_record
from common.privacy.sampling import SamplingKey
from common.federation.protocol import (ARRAYS, CLIP_NORM, CONFIG, EPSILON, METRICS, NODES_ASKED, NODES_FAILED, NODES_REPLIED,
                             NUM_USERS, ROUND, ROW_CLIP_NORM, SAMPLE_RATE, SECAGG_PHASE, SECAGG_PHASE_EVALUATE,
                             SECONDS, SERVER_ROUND, SKIPPED, TRAIN_SECONDS, UNCLIPPED_SHARE, USERS, eval_metric)
from common.data.schema import PublicSchema
from server.central_dp import CentralDP
from server.nodes import NodeBook, wait_for_nodes
from server.replies import RoundSkip, RoundSum, metrics_problem, reply_problem, sum_replies
from server.rounds import CheckpointSchedule, ModelSelection, RoundLog, check_stop, with_errors
from server.sampling import RoundSeeds, UserSampling
from server.secagg_driver import SecureAggregation, SecureDriver

__all__ = ["UserFedAvg"]


class UserFedAvg(FedAvg):
    """FedAvg over users, not nodes; see the module docstring.

    content: public item vectors h(c) and schema: the public schema (server.nodes.NodeBook).
    min_nodes: a round goes on when at least this many nodes replied well; failed, late and malformed replies
    are dropped, logged and counted in the round's row (nodes-asked / nodes-replied / nodes-failed).
    on_round(row): called after each round's evaluation with the round's scalars.
    num_rounds: rounds of the whole run; round_offset: rounds already done (a resumed run), so Flower's
    round r is the run's round r + round_offset (the nodes' sampling and the ledger use the latter).
    on_checkpoint(round): called after every checkpoint_every-th round and the last one (0 = never).
    on_begin(round, train): called before a round's training (train) or evaluation messages leave, which carry
    the global model (the server's journal).
    replayed_until, attempt, sampling_key: server.sampling.UserSampling.
    select_key: the evaluated round with the best value of this metric is kept (server.rounds.ModelSelection).
    dp: central DP (server.central_dp); secure: SecAgg+ on every round (server.secagg_driver); fail_fast: a
    simulation's first round in which every node failed stops the run with the first node's error (RunFailed)
    instead of skipping round after round.
    """

    def __init__(self, *, content: ArrayRecord, schema: PublicSchema, optimizer: ServerOptimizer,
                 sample_rate: float, sampling_key: SamplingKey, eval_every: int, num_rounds: int, min_nodes: int = 1,
                 min_connected: int = 0, run_token: str = "", on_round: Callable[[dict], None] | None = None,
                 dp: CentralDP | None = None, select_key: str | None = eval_metric("val", "hr", 10),
                 round_offset: int = 0, checkpoint_every: int = 0, on_checkpoint: Callable[[int], None] | None = None,
                 on_begin: Callable[[int, bool], None] | None = None, replayed_until: int = 0, attempt: int = 0,
                 secure: SecureAggregation | None = None, fail_fast: bool = False) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=1.0, weighted_by_key=NUM_USERS,
                         min_train_nodes=min_nodes, min_evaluate_nodes=min_nodes, min_available_nodes=min_nodes,
                         arrayrecord_key=ARRAYS, configrecord_key=CONFIG)
        self.book = NodeBook(content, schema, run_token)
        self.sampling = UserSampling(sample_rate, sampling_key, replayed_until, attempt)
        self.optimizer = optimizer
        self.dp = dp
        self.secure = secure
        self.secagg = SecureDriver(secure, self.book) if secure is not None else None
        self.selection = ModelSelection(select_key)
        self.checkpoints = CheckpointSchedule(checkpoint_every, num_rounds, on_checkpoint, last=round_offset)
        self.log = RoundLog()
        # a sum over one node is that node's update: a secure round needs two
        self.min_nodes = max(min_nodes, 2) if secure is not None else min_nodes
        self.min_connected = min_connected  # a round starts once this many nodes are connected (and min_nodes)
        self.eval_every, self.num_rounds, self.round_offset = eval_every, num_rounds, round_offset
        self.on_round, self.on_begin, self.fail_fast = on_round, on_begin, fail_fast
        self.current: dict[str, np.ndarray] | None = None  # the round's global parameters (before training)
        self.latest: dict[str, np.ndarray] | None = None  # the global parameters after the last round
        self._asked: list[int] = []  # this phase's nodes
        self._seeds: RoundSeeds | None = None  # this training round's sampling seeds
        self._evaluating = False
        self._eval_arrays: ArrayRecord | None = None
        self._row: dict[str, float | int] = {}
        self._t0 = time.perf_counter()

    # -- views of the parts (read and set by the server app and the tests) ----------------------------------------
    @property
    def failures(self) -> list[dict]:
        return self.book.failures

    @property
    def has_content(self) -> set[int]:
        return self.book.has_content

    @property
    def select_key(self) -> str | None:
        return self.selection.key

    @select_key.setter
    def select_key(self, key: str | None) -> None:
        self.selection.key = key

    @property
    def best(self) -> tuple[float, int, dict[str, np.ndarray] | None]:
        return self.selection.best

    @best.setter
    def best(self, best: tuple[float, int, dict[str, np.ndarray] | None]) -> None:
        self.selection.best = best

    @property
    def sample_rate(self) -> float:
        return self.sampling.rate

    def _clip_norm(self) -> float:
        """The round's C: central DP's (it moves with adaptive clipping), else SecAgg+'s public bound."""
        return float(self.dp.clip_norm if self.dp is not None else self.secure.clip_norm)

    # -- training -----------------------------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._t0 = time.perf_counter()
        server_round += self.round_offset
        check_stop(server_round, self.log.rows[-1][ROUND] if self.log.rows else self.round_offset,
                   self.checkpoints.last)
        self.current = self.latest = from_record(arrays)
        config[SERVER_ROUND] = server_round
        config[SAMPLE_RATE] = float(self.sampling.rate)
        # secret; this round and this node only. A round begun before a resume is replayed with a fresh sample
        self._seeds = self.sampling.seeds(server_round)
        if self.dp is not None:
            config[CLIP_NORM] = self._clip_norm()  # this round's C (it moves with adaptive clipping)
        self._asked = wait_for_nodes(grid, max(self.min_nodes, self.min_connected))
        if self.on_begin is not None:  # before any message leaves: the server's count of rounds run
            self.on_begin(server_round, True)
        if self.secagg is None:
            return self.book.messages(self._asked, arrays, config, MessageType.TRAIN, self._seeds.node_seed)
        shapes = [self.current[k].shape for k in sorted(self.current)] + [(2,)]  # common.federation.secagg.pack
        return self.secagg.messages(server_round, self._asked, arrays, config, grid, self._clip_norm(), shapes,
                                    self.min_nodes, count_users=True, seed=self._seeds.node_seed)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        summed = self._sum(server_round, replies)
        if isinstance(summed, RoundSkip):
            self._skip(server_round, summed)
            return None, None
        self._row = {ROUND: server_round, USERS: summed.users, **summed.row}
        if self.current is None:
            return None, MetricRecord({NUM_USERS: 0})
        if self.dp is None and summed.users == 0:
            return None, MetricRecord({NUM_USERS: 0})
        mean, denominator = self._mean(server_round, summed)
        new = self.optimizer.apply(self.current, mean, denominator)
        self.latest = new
        self._row[TRAIN_SECONDS] = time.perf_counter() - self._t0
        return to_record(new), MetricRecord({NUM_USERS: summed.users})

    def _sum(self, server_round: int, replies: Iterable[Message]) -> RoundSum | RoundSkip:
        """The round's good replies summed: securely (SecAgg+) or read in clear."""
        if self.secagg is not None:
            return self.secagg.train_sum(server_round, replies, list(self.current or {}), self._clip_norm())
        clip = self.dp.clip_norm if self.dp is not None else None
        adaptive = self.dp is not None and self.dp.adaptive is not None
        valid = self.book.sort(server_round, "train", replies, self._asked,
                               lambda c: reply_problem(c, self.current or {}, clip, adaptive))
        row = {NODES_ASKED: len(self._asked), NODES_REPLIED: len(valid), NODES_FAILED: len(self._asked) - len(valid)}
        if len(valid) < self.min_nodes:
            return RoundSkip(len(valid), f"{len(valid)} of {len(self._asked)} nodes replied well, min-nodes is "
                                         f"{self.min_nodes}", row)
        return sum_replies(valid, row)

    def _mean(self, server_round: int, summed: RoundSum) -> tuple[dict[str, np.ndarray], float]:
        """(the update the optimiser applies, its denominator): the users' mean, or central DP's noised mean (a DP
        round is noised and accounted even if nobody was sampled)."""
        if self.dp is None:
            return {k: v / summed.users for k, v in sum_updates(summed.updates).items()}, summed.users
        total = (sum_updates(summed.updates) if summed.updates else
                 {k: np.zeros_like(v, np.float64) for k, v in self.current.items()})
        # the noise is z times the sensitivity: C, plus what SecAgg's stochastic rounding can add
        release = self.dp.release(server_round, self.sampling.rate, total, summed.shifted, summed.extra_sensitivity,
                                  replay=self.sampling.replayed(server_round))
        self._row[EPSILON] = release.record.epsilon
        self._row[ROW_CLIP_NORM] = release.clip_norm
        if release.unclipped_share is not None:
            self._row[UNCLIPPED_SHARE] = release.unclipped_share
        return release.mean, self.dp.denominator

    def _skip(self, server_round: int, skip: RoundSkip) -> None:
        mine = [f for f in self.failures if f["round"] == server_round]
        if self.fail_fast and skip.replied == 0 and mine and server_round == self.round_offset + 1:
            raise RunFailed(f"round {server_round}: every node failed, so the run stops (in a simulation the nodes "
                            f"share one dataset and setup). The first node's error: {mine[0]['reason']}")
        log(WARNING, "round %s: %s: the round is skipped (the model is unchanged%s)", server_round, skip.reason,
            "; nothing is released, so nothing is accounted" if self.dp is not None else "")
        self._row = {ROUND: server_round, USERS: 0, **skip.row, SKIPPED: 1}

    # -- evaluation ---------------------------------------------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        if server_round % self.eval_every and server_round != self.num_rounds:
            self._finish_round({})
            return []
        self._eval_arrays = arrays
        config[SERVER_ROUND] = server_round
        self._asked = wait_for_nodes(grid, max(self.min_nodes, self.min_connected))
        if self.on_begin is not None:  # the round's (noised) model leaves now: journal its ledger row
            self.on_begin(server_round, False)
        self._evaluating = True
        if self.secagg is None:
            return self.book.messages(self._asked, arrays, config, MessageType.EVALUATE)
        config[SECAGG_PHASE] = SECAGG_PHASE_EVALUATE  # the metric sums go through SecAgg+ too
        return self.secagg.messages(server_round, self._asked, arrays, config, grid, self._clip_norm(),
                                    [(len(self.secure.metric_keys) + 1,)], self.min_nodes,
                                    seed=self._seeds.node_seed if self._seeds is not None else None)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if not self._evaluating:  # evaluation skipped this round (see configure_evaluate)
            return None
        self._evaluating = False
        server_round += self.round_offset
        if self.secagg is not None:
            metrics = self.secagg.evaluate_metrics(server_round, replies)
            if metrics is None:
                log(WARNING, "round %s: secure evaluation: %s; no metrics this round", server_round,
                    self.secagg.abort)
            self._finish_round(with_errors(metrics, int(metrics[NUM_USERS])) if metrics is not None else {})
            return metrics
        valid = self.book.sort(server_round, "evaluate", replies, self._asked, metrics_problem)
        metrics = self.evaluate_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key) if valid else None
        users = sum(int(m.content.metric_records[METRICS][NUM_USERS]) for m in valid)
        self._finish_round(with_errors(metrics, users) if metrics is not None else {})
        return metrics

    def _finish_round(self, metrics: dict) -> None:
        row = dict(self._row)
        row.update({k: float(v) for k, v in metrics.items() if k != NUM_USERS})
        row[SECONDS] = time.perf_counter() - self._t0
        self.log.rows.append(row)
        arrays = self._eval_arrays
        self.selection.offer(row, (lambda: from_record(arrays)) if arrays is not None else None)
        if self.on_round is not None:
            self.on_round(row)
        self.checkpoints.after_round(int(row[ROUND]))
        log(INFO, "round %s done", row.get(ROUND))
