"""The SecAgg+ round driver: in a secure run every training and evaluation round is one SecAgg+ round
(server.secagg.SecureRound) over the round's nodes, so the server learns only sums over nodes. A training round
may first count its sampled users in a SecAgg+ round of their own (the secagg-min-users floor); no reply is ever
read in clear. The messages are the train type, as Flower's secaggplus_mod needs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.serverapp import Grid

from common.federation.protocol import (CLIP_NORM, NODES_ASKED, NODES_FAILED, NODES_REPLIED, NUM_USERS, SECAGG_DROPPED,
                             SECAGG_ERROR_BOUND, SECAGG_MAX_USERS, SECAGG_PHASE, SECAGG_PHASE_COUNT, secagg_seconds)
from common.federation.secagg import error_bound, rounding_sensitivity, unpack, unpack_metrics
from server.nodes import NodeBook
from server.replies import RoundSkip, RoundSum
from server.secagg import SecAggAbort, SecureRound

__all__ = ["SecureAggregation", "SecureDriver"]


@dataclass(frozen=True)
class SecureAggregation:
    """SecAgg+ on every training round (server.secagg): the server learns only the sum over the round's nodes.

    max_users: U, the most users one node trains in a round; shares, threshold: SecAgg+'s k and t (0 = auto,
    common.federation.secagg.shares_and_threshold); metric_keys: the evaluation's per-user metrics, summed securely too;
    clip_norm: C without central DP (each user's update is clipped to C:
    the quantisation needs a public bound); timeout: seconds per protocol stage."""

    max_users: int
    clip_norm: float
    metric_keys: tuple[str, ...] = ()  # the evaluation's metrics (common.federation.protocol.evaluation_keys)
    shares: int = 0
    threshold: int = 0
    timeout: float = 600.0
    min_users: int = 1  # unmask a round's update sum only when it holds this many users (counted securely first)
    accept_two_nodes: bool = False  # run rounds where each node has a single neighbour (MASK_SEED_WEAKNESS)


class SecureDriver:
    """One phase (a round's training or its evaluation) at a time: `messages` sets up its SecAgg+ round, `unmask`
    (via `train_sum` or `evaluate_metrics`) finishes it. asked: the phase's nodes (after a user count, the
    counted ones); abort: why the phase's secure round cannot finish (None while it can)."""

    def __init__(self, settings: SecureAggregation, book: NodeBook) -> None:
        self.settings = settings
        self.book = book
        self.asked: list[int] = []
        self.min_nodes = 2
        self.round: SecureRound | None = None  # this phase's SecAgg+ round
        self.counted: set[int] | None = None  # the nodes whose users were counted for this round's floor
        self.count_round: SecureRound | None = None  # this round's SecAgg+ session of the user count
        self.count_seconds = 0.0  # its wall seconds (all four stages and the count message)
        self.abort: str | None = None

    def messages(self, server_round: int, asked: list[int], arrays: ArrayRecord, config: ConfigRecord, grid: Grid,
                 clip: float, shapes: list[tuple[int, ...]], min_nodes: int, count_users: bool = False,
                 seed: Callable[[int], int] | None = None) -> list[Message]:
        """SecAgg+ setup and key sharing (after the user count, when `count_users` and secagg-min-users > 1), then
        the phase's messages, each with the shares forwarded to its node; [] when the round aborted (self.abort).
        shapes: the packed arrays'; clip: the round's C."""
        sec = self.settings
        config[CLIP_NORM] = float(clip)
        config[SECAGG_MAX_USERS] = int(sec.max_users)
        self.asked, self.min_nodes = list(asked), min_nodes
        self.abort, self.counted, self.count_round = None, None, None
        if count_users and sec.min_users > 1 and not self._count_users(server_round, config, grid, seed):
            return []
        self.round = self._secure_round(server_round, shapes, grid)
        try:
            self.round.setup()
            self.round.share_keys()
        except SecAggAbort as exc:
            self.abort = str(exc)
            self.book.sent = []
            return []
        return self._collect_messages(self.round, arrays, config, seed)

    def _collect_messages(self, sr: SecureRound, arrays: ArrayRecord, config: ConfigRecord,
                          seed: Callable[[int], int] | None) -> list[Message]:
        msgs = self.book.messages(sorted(sr.active), arrays, config, MessageType.TRAIN, seed)
        for msg in msgs:
            msg.content.config_records[RECORD_KEY_CONFIGS] = sr.collect_record(msg.metadata.dst_node_id)
        return msgs

    def _secure_round(self, server_round: int, shapes: list[tuple[int, ...]], grid: Grid) -> SecureRound:
        sec = self.settings
        return SecureRound(
            grid=grid, nodes=list(self.asked), server_round=server_round, shapes=shapes, timeout=sec.timeout,
            drop=lambda nid, stage, reason: self.book.drop(server_round, f"secagg-{stage}", nid, reason),
            source=self.book.source, shares=sec.shares, threshold=sec.threshold,
            accept_single_neighbour=sec.accept_two_nodes)

    def _count_users(self, server_round: int, config: ConfigRecord, grid: Grid,
                     seed: Callable[[int], int] | None) -> bool:
        """The secagg-min-users floor: False (self.abort says why) unless the round samples enough users."""
        try:
            t0 = time.perf_counter()
            try:
                self.asked, users = self._user_count(server_round, config, grid, seed)
            finally:
                self.count_seconds = time.perf_counter() - t0
            if users < self.settings.min_users:
                raise SecAggAbort(f"the round's sampled users ({users}) are fewer than secagg-min-users = "
                                  f"{self.settings.min_users}; no update was collected or unmasked")
        except SecAggAbort as exc:
            self.abort, self.round, self.book.sent = f"user count: {exc}", None, []
            return False
        self.counted = set(self.asked)
        return True

    def _user_count(self, server_round: int, config: ConfigRecord, grid: Grid,
                    seed: Callable[[int], int] | None) -> tuple[list[int], int]:
        """A whole SecAgg+ round over each node's sampled-user count alone ([users] / U, common.federation.secagg
        .pack_metrics without metrics), before any update: (the nodes whose count is in the sum, the sum)."""
        count_config = ConfigRecord(dict(config))
        count_config[SECAGG_PHASE] = SECAGG_PHASE_COUNT
        sr = self.count_round = self._secure_round(server_round, [(1,)], grid)
        sr.setup()
        sr.share_keys()
        # the count needs no model: its messages carry none (100 nodes x the model, saved in transport)
        msgs = self._collect_messages(sr, ArrayRecord(), count_config, seed)
        replies = grid.send_and_receive(msgs, timeout=self.settings.timeout)
        valid = self.book.sort(server_round, "secagg-count", replies, [m.metadata.dst_node_id for m in msgs],
                               sr.masked_problem)
        if len(valid) < self.min_nodes:
            raise SecAggAbort(f"{len(valid)} of {len(msgs)} nodes sent a masked count, min-nodes is {self.min_nodes}")
        sr.collect({self.book.source(m): m.content for m in valid})
        users = int(unpack_metrics(sr.unmask(), (), self.settings.max_users)[NUM_USERS])
        return sorted(sr.contributors), users

    def unmask(self, server_round: int, phase: str, replies: Iterable[Message]) -> list[np.ndarray] | None:
        """SecAgg+'s collect and unmask stages: the dequantised packed sum, or None (self.abort says why).
        No reply is ever read in clear: each must hold masked integers only (SecureRound.masked_problem)."""
        sr = self.round
        if self.abort is not None or sr is None:
            return None
        sent = [m.metadata.dst_node_id for m in self.book.sent]
        valid = self.book.sort(server_round, phase, replies, sent, sr.masked_problem)
        try:
            if len(valid) < self.min_nodes:
                raise SecAggAbort(f"{len(valid)} of {len(self.asked)} nodes sent a masked vector, min-nodes is "
                                  f"{self.min_nodes}")
            missing = (self.counted or set()) - {self.book.source(m) for m in valid}
            if phase == "train" and missing:  # the counted floor holds only if every counted node is in the sum
                raise SecAggAbort(f"node(s) {sorted(missing)} were counted but sent no masked update: the sum could "
                                  f"hold fewer than secagg-min-users = {self.settings.min_users} users; nothing is "
                                  f"unmasked")
            sr.collect({self.book.source(m): m.content for m in valid})
            return sr.unmask()
        except SecAggAbort as exc:
            self.abort = str(exc)
            return None

    def train_sum(self, server_round: int, replies: Iterable[Message], param_names: list[str],
                  clip: float) -> RoundSum | RoundSkip:
        """The secure training round's sum (unpacked with the round's C), or why it is skipped."""
        asked = list(self.asked)
        row = {NODES_ASKED: len(asked), NODES_REPLIED: 0, NODES_FAILED: len(asked)}
        packed = self.unmask(server_round, "train", replies)
        if packed is None:
            return RoundSkip(len(self.round.contributors) if self.round else 0, f"secure aggregation: {self.abort}",
                             row)
        sr, max_users = self.round, self.settings.max_users
        total, users, shifted = unpack(packed, sorted(param_names), max_users, clip)
        n = len(sr.contributors)
        row.update({NODES_REPLIED: n, NODES_FAILED: len(asked) - n, SECAGG_DROPPED: len(sr.sampled) - n,
                    SECAGG_ERROR_BOUND: error_bound(n, max_users, clip, sr.levels)})
        for name, seconds in sr.seconds.items():  # the server's stages (the nodes' work shows in the waits)
            row[secagg_seconds(name)] = seconds
        if self.count_round is not None:
            row[secagg_seconds(SECAGG_PHASE_COUNT)] = self.count_seconds
        rounding = rounding_sensitivity(sum(v.size for v in total.values()), max_users, clip, sr.levels)
        return RoundSum([total] if users > 0 else [], users, shifted, row, rounding)

    def evaluate_metrics(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """The secure evaluation's metrics (means over all the round's users), or None (logged by the caller)."""
        packed = self.unmask(server_round, "evaluate", replies)
        if packed is None:
            return None
        return MetricRecord(unpack_metrics(packed, self.settings.metric_keys, self.settings.max_users))
