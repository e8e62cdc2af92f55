"""User-level federated averaging on top of Flower's FedAvg.

Every node is contacted each round; the server owns user sampling (rate q and a per-round seed
in the train config, derived from the run's secret `SamplingKey` and sent only in that round),
and each node applies it to its own users with `common.federated.poisson_sample`.
Nodes reply with the SUM of their sampled users' updates and the user count; the server divides
the total by the number of users (each user weighs the same) and applies a server optimiser.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from logging import INFO, WARNING
from typing import Callable, Iterable

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from common.aggregation import ServerOptimizer, sum_updates
from common.errors import Interrupted, RunFailed, stop_requested
from common.metrics import standard_errors
from common.params import from_record, to_record
from common.privacy import (PrivacyLedger, SamplingKey, SecureGaussian, adaptive_sum_noise, next_clip_norm,
                            noisy_mean)
from common.protocol import CONTENT, METRICS, RUN_TOKEN, SCHEMA, SCHEMA_HASH, SCHEMA_JSON, UPDATE
from common.schema import PublicSchema
from common.secagg import error_bound, rounding_sensitivity, unpack, unpack_metrics
from server.secagg import SecAggAbort, SecureRound

__all__ = ["UserFedAvg", "RoundLog", "CentralDP", "AdaptiveClip", "SecureAggregation", "reply_problem",
           "wait_for_nodes"]

#: how often the server says it is still waiting for nodes (seconds)
WAIT_LOG_EVERY = 10.0


def wait_for_nodes(grid: Grid, min_nodes: int, sleep: Callable[[float], None] = time.sleep) -> list[int]:
    """All connected nodes, once at least `min_nodes` are connected; says so every WAIT_LOG_EVERY s meanwhile."""
    waited = 0.0
    while len(nodes := list(grid.get_node_ids())) < min_nodes:
        if waited % WAIT_LOG_EVERY == 0:
            log(WARNING, "waiting for nodes: %d connected, min-nodes is %d (%.0f s so far)", len(nodes), min_nodes,
                waited)
        sleep(1.0)
        waited += 1.0
    return nodes


def _user_count_problem(content: RecordDict) -> str | None:
    """Every reply carries METRICS with an integer num-users >= 0."""
    if METRICS not in content.metric_records:
        return "no metrics record"
    n = content.metric_records[METRICS].get("num-users")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        return f"num-users must be an integer >= 0, got {n!r}"
    return None


def reply_problem(content: RecordDict, expected: dict[str, np.ndarray], clip: float | None,
                  adaptive: bool) -> str | None:
    """Why a training reply must not be aggregated, or None if it is well-formed.

    expected: the round's global parameters (names, shapes); clip: the round's per-user clip norm under central
    DP (a node's sum of n clipped updates has norm <= n * clip), None without it."""
    problem = _user_count_problem(content)
    if problem is not None:
        return problem
    metrics = content.metric_records[METRICS]
    n = metrics["num-users"]
    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"metric {key} is not finite ({value})"
    if adaptive and abs(float(metrics.get("clip-shifted-count", 0.0))) > n / 2 + 1e-9:
        return f"clip-shifted-count {metrics.get('clip-shifted-count')} is outside [-n/2, n/2] for n = {n}"
    if n == 0:
        return None
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
        return f"update norm {math.sqrt(sq):.6g} exceeds num-users x clip-norm = {n * clip:.6g}"
    return None



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


@dataclass(frozen=True)
class SecureAggregation:
    """SecAgg+ on every training round (server.secagg): the server learns only the sum over the round's nodes.

    max_users: U, the most users one node trains in a round; shares, threshold: SecAgg+'s k and t (0 = auto,
    common.secagg.shares_and_threshold); metric_keys: the evaluation's per-user metrics, summed securely too;
    clip_norm: C without central DP (each user's update is clipped to C:
    the quantisation needs a public bound); timeout: seconds per protocol stage."""

    max_users: int
    clip_norm: float
    metric_keys: tuple[str, ...] = ()  # the evaluation's metrics (common.metrics.evaluation_keys)
    shares: int = 0
    threshold: int = 0
    timeout: float = 600.0
    min_users: int = 1  # unmask a round's update sum only when it holds this many users (counted securely first)
    accept_two_nodes: bool = False  # run rounds where each node has a single neighbour (MASK_SEED_WEAKNESS)


@dataclass
class RoundLog:
    """What the server learned in each round (scalars only)."""

    rows: list[dict[str, float | int]] = field(default_factory=list)


def _metrics_problem(content: RecordDict) -> str | None:
    """Why an evaluation reply must not be averaged, or None."""
    problem = _user_count_problem(content)
    if problem is not None:
        return problem
    metrics = content.metric_records[METRICS]
    bad = [k for k, v in metrics.items() if isinstance(v, float) and not (math.isfinite(v) and 0.0 <= v <= 1.0)]
    return f"metrics {bad} must be finite rates in [0, 1]" if bad else None


def _with_errors(metrics: MetricRecord, users: int) -> dict:
    """A round's aggregated evaluation metrics for its row; a sub-sampled evaluation's `-sq` means become standard
    errors (`-se`), with the users evaluated as `evaluated-users`."""
    out = dict(metrics)
    if any(k.endswith("-sq") for k in out):
        out = {**standard_errors(out, users), "evaluated-users": users}
    return out


class UserFedAvg(FedAvg):
    """FedAvg over users, not nodes; see the module docstring.

    content: public item vectors h(c) and schema: the public schema; both go to every node that has not yet
    replied well (first contact, a late joiner, a node that failed or restarted), and the schema hash to all.
    min_nodes: a round goes on when at least this many nodes replied well; failed, late and malformed replies
    are dropped, logged and counted in the round's row (nodes-asked / nodes-replied / nodes-failed).
    on_round(row): called after each round's evaluation with the round's scalars.
    num_rounds: rounds of the whole run; round_offset: rounds already done (a resumed run), so Flower's
    round r is the run's round r + round_offset (the nodes' sampling and the ledger use the latter).
    on_checkpoint(round): called after every checkpoint_every-th round and the last one (0 = never).
    on_begin(round, train): called before a round's training (train) or evaluation messages leave, which carry
    the global model (the server's journal).
    replayed_until, attempt: rounds up to `replayed_until` had begun before this resume (start `attempt`); their
    sampling seeds are fresh (SamplingKey.round_seed(r, attempt)).
    sampling_key: the run's secret; node n's sampling seed of round r is sampling_key.round_seed(r, attempt, n)
    (node_seed).
    select_key: the evaluated round with the best value of this metric is kept (early stopping); None keeps
    nothing (a private run releases its last round: a choice made on unnoised metrics is not accounted).
    secure: SecAgg+ on every round (server.secagg); fail_fast: a simulation's first round in which every node
    failed stops the run with the first node's error (RunFailed) instead of skipping round after round.
    """

    def __init__(self, *, content: ArrayRecord, schema: PublicSchema, optimizer: ServerOptimizer,
                 sample_rate: float, sampling_key: SamplingKey, eval_every: int, num_rounds: int, min_nodes: int = 1, min_connected: int = 0,
                 run_token: str = "",
                 on_round: Callable[[dict], None] | None = None,
                 dp: CentralDP | None = None, select_key: str | None = "val-hr@10", round_offset: int = 0,
                 checkpoint_every: int = 0, on_checkpoint: Callable[[int], None] | None = None,
                 on_begin: Callable[[int, bool], None] | None = None, replayed_until: int = 0, attempt: int = 0,
                 secure: SecureAggregation | None = None, fail_fast: bool = False) -> None:
        super().__init__(fraction_train=1.0, fraction_evaluate=1.0, weighted_by_key="num-users",
                         min_train_nodes=min_nodes, min_evaluate_nodes=min_nodes, min_available_nodes=min_nodes)
        self.content = content
        self.schema = schema
        self.run_token = run_token
        self.min_nodes = min_nodes
        self.min_connected = min_connected  # a round starts once this many nodes are connected (and min_nodes)
        self.has_content: set[int] = set()  # nodes that replied well under this schema (they hold h(c))
        self.failures: list[dict] = []  # every dropped reply: round, node, phase, reason
        self._sent: list[Message] = []  # this phase's messages
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
        self.secure = secure
        self.last_checkpoint = round_offset  # the round of the newest checkpoint (0: none)
        self.on_begin = on_begin
        self.replayed_until, self.attempt = replayed_until, attempt
        self.fail_fast = fail_fast  # a first round in which every node failed stops the run with the first reason
        if secure is not None:  # a sum over one node is that node's update: a secure round needs two
            self.min_nodes = max(self.min_nodes, 2)
        self._round: SecureRound | None = None  # this round's SecAgg+ state
        self._counted: set[int] | None = None  # the nodes whose users were counted for this round's floor
        self._count_round: SecureRound | None = None  # this round's SecAgg+ session of the user count
        self._count_seconds = 0.0  # its wall seconds (all four stages and the count message)
        self._seeding: tuple[int, int] = (0, 0)  # this training round and its attempt (node_seed)
        self._rounding = 0.0  # this secure round's rounding_sensitivity (0 without secure aggregation)
        self._abort: str | None = None  # why this secure round cannot finish

    def _messages(self, node_ids: list[int], arrays: ArrayRecord, config: ConfigRecord,
                  message_type: str) -> list[Message]:
        """One message per node; the content and the schema go to the nodes not known to hold them."""
        config[SCHEMA_HASH] = self.schema.hash
        config[RUN_TOKEN] = self.run_token
        out = []
        for node_id in node_ids:
            node_config = config
            if message_type == MessageType.TRAIN and "sample-rate" in config:  # its own sampling seed
                node_config = ConfigRecord(dict(config))
                node_config["sampling-seed"] = self.node_seed(node_id)
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: node_config})
            if node_id not in self.has_content:
                record[CONTENT] = self.content
                record[SCHEMA] = ConfigRecord({SCHEMA_JSON: self.schema.to_json()})
            out.append(Message(content=record, message_type=message_type, dst_node_id=node_id))
        self._sent = out  # the grid sets their message ids when it pushes them (see _source)
        return out

    def node_seed(self, node_id: int) -> int:
        """The sampling seed of this training round for node `node_id` only (SamplingKey.round_seed with the node):
        a node learns whether its own users are sampled, never another node's. With a test-only (public) key
        every node gets the round's common seed, so that a user is sampled alike whichever node holds it (the
        simulation tests that compare partitionings and resumes)."""
        round_, attempt = self._seeding
        return self.sampling_key.round_seed(round_, attempt, node_id if self.sampling_key.secret else None)

    def _source(self, msg: Message, sent: list[Message] | None = None) -> int:
        """The node a reply speaks for. An error reply the SuperLink makes for an unreachable node ("Node
        Unavailable") comes from the SuperLink itself; it answers one of our messages (`sent`, default this
        phase's), whose destination it names."""
        if msg.metadata.src_node_id != SUPERLINK_NODE_ID:
            return msg.metadata.src_node_id
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in (self._sent if sent is None else sent)}
        return sent.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)

    def _drop(self, server_round: int, phase: str, node_id: int, reason: str) -> None:
        self.has_content.discard(node_id)  # it gets h(c) and the schema again next time
        self.failures.append({"round": server_round, "node": int(node_id), "phase": phase, "reason": reason})
        log(WARNING, "round %s: %s reply of node %s dropped: %s", server_round, phase, node_id, reason)

    def _sort(self, server_round: int, phase: str, replies: Iterable[Message], asked: list[int],
              check: Callable[[RecordDict], str | None]) -> list[Message]:
        """The well-formed replies; every other asked node is dropped with its reason."""
        good, seen = [], set()
        for msg in replies:
            node = self._source(msg)
            seen.add(node)
            if msg.has_error():
                self._drop(server_round, phase, node, msg.error.reason)
                continue
            problem = check(msg.content)
            if problem is not None:
                self._drop(server_round, phase, node, f"malformed: {problem}")
                continue
            good.append(msg)
            self.has_content.add(node)
        for node in set(asked) - seen:
            self._drop(server_round, phase, node, "no reply within round-timeout (failed, left or too slow)")
        return good

    def _check_stop(self, server_round: int) -> None:
        """Between rounds: a simulation asked to stop (SIGINT/SIGTERM) ends here, its last checkpoint intact."""
        signal = stop_requested()
        if signal is not None:
            done = self.log.rows[-1]["round"] if self.log.rows else self.round_offset
            raise Interrupted(f"interrupted by {signal} before round {server_round} ({done} rounds done); "
                              + (f"the checkpoint of round {self.last_checkpoint} is intact: go on with --set "
                                 f"resume=true and the same --out" if self.last_checkpoint else
                                 "no checkpoint was written yet"))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self._t0 = time.perf_counter()
        server_round += self.round_offset
        self._check_stop(server_round)
        self.current = self.latest = from_record(arrays)
        config["server-round"] = server_round
        config["sample-rate"] = float(self.sample_rate)
        # secret; this round and this node only (_messages). A round begun before a resume is replayed with a
        # fresh sample (accounted again)
        self._seeding = (server_round, self.attempt if server_round <= self.replayed_until else 0)
        if self.dp is not None:
            config["clip-norm"] = float(self.dp.clip_norm)  # this round's C (it moves with adaptive clipping)
        self._asked = wait_for_nodes(grid, max(self.min_nodes, self.min_connected))
        if self.on_begin is not None:  # before any message leaves: the server's count of rounds run
            self.on_begin(server_round, True)
        if self.secure is None:
            return self._messages(self._asked, arrays, config, MessageType.TRAIN)
        return self._secure_messages(server_round, arrays, config, grid)

    def _secure_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid,
                         shapes: list[tuple[int, ...]] | None = None) -> list[Message]:
        """SecAgg+ setup and key sharing, then the phase's messages (train type, as secaggplus_mod needs), each
        with the shares forwarded to its node. shapes: the packed arrays (default: the training update's)."""
        sec = self.secure
        config["clip-norm"] = float(self.dp.clip_norm if self.dp is not None else sec.clip_norm)
        config["secagg-max-users"] = int(sec.max_users)
        self._abort, self._counted, self._count_round = None, None, None
        if shapes is None:
            shapes = [self.current[k].shape for k in sorted(self.current or {})] + [(2,)]
            if sec.min_users > 1:  # the floor: the users are counted (securely) before any update is collected
                try:
                    t0 = time.perf_counter()
                    try:
                        self._asked, users = self._secure_user_count(server_round, arrays, config, grid)
                    finally:
                        self._count_seconds = time.perf_counter() - t0
                    if users < sec.min_users:
                        raise SecAggAbort(f"the round's sampled users ({users}) are fewer than secagg-min-users = "
                                          f"{sec.min_users}; no update was collected or unmasked")
                except SecAggAbort as exc:
                    self._abort, self._round, self._sent = f"user count: {exc}", None, []
                    return []
                self._counted = set(self._asked)
        self._round = self._secure_round(server_round, shapes, grid)
        try:
            self._round.setup()
            self._round.share_keys()
        except SecAggAbort as exc:
            self._abort = str(exc)
            self._sent = []
            return []
        msgs = self._messages(sorted(self._round.active), arrays, config, MessageType.TRAIN)
        for msg in msgs:
            msg.content.config_records[RECORD_KEY_CONFIGS] = self._round.collect_record(msg.metadata.dst_node_id)
        return msgs

    def _secure_round(self, server_round: int, shapes: list[tuple[int, ...]], grid: Grid) -> SecureRound:
        sec = self.secure
        return SecureRound(
            grid=grid, nodes=list(self._asked), server_round=server_round, shapes=shapes, timeout=sec.timeout,
            drop=lambda nid, stage, reason: self._drop(server_round, f"secagg-{stage}", nid, reason),
            source=self._source, shares=sec.shares, threshold=sec.threshold,
            accept_single_neighbour=sec.accept_two_nodes)

    def _secure_user_count(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> tuple[list[int], int]:
        """A whole SecAgg+ round over each node's sampled-user count alone ([users] / U, common.secagg
        .pack_metrics without metrics), before any update: (the nodes whose count is in the sum, the sum)."""
        count_config = ConfigRecord(dict(config))
        count_config["secagg-phase"] = "count"
        sr = self._count_round = self._secure_round(server_round, [(1,)], grid)
        sr.setup()
        sr.share_keys()
        # the count needs no model: its messages carry none (100 nodes x the model, saved in transport)
        msgs = self._messages(sorted(sr.active), ArrayRecord(), count_config, MessageType.TRAIN)
        for msg in msgs:
            msg.content.config_records[RECORD_KEY_CONFIGS] = sr.collect_record(msg.metadata.dst_node_id)
        replies = grid.send_and_receive(msgs, timeout=self.secure.timeout)
        valid = self._sort(server_round, "secagg-count", replies, [m.metadata.dst_node_id for m in msgs],
                           sr.masked_problem)
        if len(valid) < self.min_nodes:
            raise SecAggAbort(f"{len(valid)} of {len(msgs)} nodes sent a masked count, min-nodes is {self.min_nodes}")
        sr.collect({self._source(m): m.content for m in valid})
        users = int(unpack_metrics(sr.unmask(), (), self.secure.max_users)["num-users"])
        return sorted(sr.contributors), users

    def _secure_unmask(self, server_round: int, phase: str, replies: Iterable[Message]) -> list[np.ndarray] | None:
        """SecAgg+'s collect and unmask stages: the dequantised packed sum, or None (self._abort says why).
        No reply is ever read in clear: each must hold masked integers only (SecureRound.masked_problem)."""
        sr = self._round
        if self._abort is not None or sr is None:
            return None
        sent = [m.metadata.dst_node_id for m in self._sent]
        valid = self._sort(server_round, phase, replies, sent, sr.masked_problem)
        try:
            if len(valid) < self.min_nodes:
                raise SecAggAbort(f"{len(valid)} of {len(self._asked)} nodes sent a masked vector, min-nodes is "
                                  f"{self.min_nodes}")
            missing = (self._counted or set()) - {self._source(m) for m in valid}
            if phase == "train" and missing:  # the counted floor holds only if every counted node is in the sum
                raise SecAggAbort(f"node(s) {sorted(missing)} were counted but sent no masked update: the sum could "
                                  f"hold fewer than secagg-min-users = {self.secure.min_users} users; nothing is "
                                  f"unmasked")
            sr.collect({self._source(m): m.content for m in valid})
            return sr.unmask()
        except SecAggAbort as exc:
            self._abort = str(exc)
            return None

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        if self.secure is not None:
            summed = self._secure_sum(server_round, replies)
        else:
            summed = self._plain_sum(server_round, replies)
        if summed is None:
            return None, None
        sums, users, shifted, extra = summed
        self._row = {"round": server_round, "users": users, **extra}
        if self.current is None:
            return None, MetricRecord({"num-users": 0})
        if self.dp is not None:  # a DP round counts (and is noised) even if nobody was sampled
            total = sum_updates(sums) if sums else {k: np.zeros_like(v, np.float64) for k, v in self.current.items()}
            # the noise is z times the sensitivity: C, plus what SecAgg's stochastic rounding can add (_secure_sum)
            mean = noisy_mean(total, self.dp.clip_norm + self._rounding, self.dp.sum_noise_multiplier,
                              self.dp.denominator, self.dp.noise)
            record = self.dp.ledger.append(server_round, self.sample_rate, self.dp.noise_multiplier,
                                           self.dp.clip_norm, replay=server_round <= self.replayed_until)
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
        new = self.optimizer.apply(self.current, mean, self.dp.denominator if self.dp is not None else users)
        self.latest = new
        self._row["train-seconds"] = time.perf_counter() - self._t0
        return to_record(new), MetricRecord({"num-users": users})

    def _skip(self, server_round: int, replied: int, reason: str, nodes: dict) -> None:
        mine = [f for f in self.failures if f["round"] == server_round]
        if self.fail_fast and replied == 0 and mine and server_round == self.round_offset + 1:
            raise RunFailed(f"round {server_round}: every node failed, so the run stops (in a simulation the nodes "
                            f"share one dataset and setup). The first node's error: {mine[0]['reason']}")
        log(WARNING, "round %s: %s: the round is skipped (the model is unchanged%s)", server_round, reason,
            "; nothing is released, so nothing is accounted" if self.dp is not None else "")
        self._row = {"round": server_round, "users": 0, **nodes, "skipped": 1}

    def _plain_sum(self, server_round: int, replies: Iterable[Message]):
        """Each node's reply read in clear: ([update sums], users, shifted count, row fields), or None (skipped)."""
        clip = self.dp.clip_norm if self.dp is not None else None
        adaptive = self.dp is not None and self.dp.adaptive is not None
        valid = self._sort(server_round, "train", replies, self._asked,
                           lambda c: reply_problem(c, self.current or {}, clip, adaptive))
        nodes = {"nodes-asked": len(self._asked), "nodes-replied": len(valid),
                 "nodes-failed": len(self._asked) - len(valid)}
        if len(valid) < self.min_nodes:
            self._skip(server_round, len(valid), f"{len(valid)} of {len(self._asked)} nodes replied well, min-nodes "
                       f"is {self.min_nodes}", nodes)
            return None
        sums, users, examples, loss, shifted = [], 0, 0, 0.0, 0.0
        has_loss = True  # under local DP nodes send no example count and no loss (see client.node)
        for msg in valid:
            metrics = msg.content.metric_records[METRICS]
            n = int(metrics["num-users"])
            if n > 0:
                sums.append(from_record(msg.content.array_records[UPDATE]))
            users += n
            has_loss = has_loss and "train-loss-sum" in metrics
            examples += int(metrics.get("num-examples", 0))
            loss += float(metrics.get("train-loss-sum", 0.0))
            shifted += float(metrics.get("clip-shifted-count", 0.0))
        if has_loss:
            nodes.update({"examples": examples, "train-loss": loss / max(users, 1)})
        return sums, users, shifted, nodes

    def _secure_sum(self, server_round: int, replies: Iterable[Message]):
        """The secure round's sum: ([the summed update], users, shifted count, row fields), or None (skipped)."""
        asked = list(self._asked)
        nodes = {"nodes-asked": len(asked), "nodes-replied": 0, "nodes-failed": len(asked)}
        packed = self._secure_unmask(server_round, "train", replies)
        if packed is None:
            self._skip(server_round, len(self._round.contributors) if self._round else 0,
                       f"secure aggregation: {self._abort}", nodes)
            return None
        sr = self._round
        clip = float(self.dp.clip_norm if self.dp is not None else self.secure.clip_norm)
        total, users, shifted = unpack(packed, sorted(self.current or {}), self.secure.max_users, clip)
        n = len(sr.contributors)
        nodes.update({"nodes-replied": n, "nodes-failed": len(asked) - n, "secagg-dropped": len(sr.sampled) - n,
                      "secagg-error-bound": error_bound(n, self.secure.max_users, clip, sr.levels)})
        for name, seconds in sr.seconds.items():  # the server's stages (the nodes' work shows in the waits)
            nodes[f"secagg-{name}-seconds"] = seconds
        if self._count_round is not None:
            nodes["secagg-count-seconds"] = self._count_seconds
        self._rounding = rounding_sensitivity(sum(v.size for v in total.values()), self.secure.max_users, clip,
                                              sr.levels)
        return ([total] if users > 0 else []), users, shifted, nodes

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        server_round += self.round_offset
        if server_round % self.eval_every and server_round != self.num_rounds:
            self._finish_round({})
            return []
        self._eval_arrays = arrays
        config["server-round"] = server_round
        self._asked = wait_for_nodes(grid, max(self.min_nodes, self.min_connected))
        if self.on_begin is not None:  # the round's (noised) model leaves now: journal its ledger row
            self.on_begin(server_round, False)
        self._evaluating = True
        if self.secure is not None:  # the metric sums go through SecAgg+ too
            config["secagg-phase"] = "evaluate"
            return self._secure_messages(server_round, arrays, config, grid,
                                         shapes=[(len(self.secure.metric_keys) + 1,)])
        return self._messages(self._asked, arrays, config, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if not getattr(self, "_evaluating", False):  # evaluation skipped this round (see configure_evaluate)
            return None
        self._evaluating = False
        server_round += self.round_offset
        if self.secure is not None:
            packed = self._secure_unmask(server_round, "evaluate", replies)
            if packed is None:
                log(WARNING, "round %s: secure evaluation: %s; no metrics this round", server_round, self._abort)
            metrics = (MetricRecord(unpack_metrics(packed, self.secure.metric_keys, self.secure.max_users))
                       if packed is not None else None)
            self._finish_round(_with_errors(metrics, int(metrics["num-users"])) if metrics is not None else {})
            return metrics
        valid = self._sort(server_round, "evaluate", replies, self._asked, _metrics_problem)
        metrics = self.evaluate_metrics_aggr_fn([m.content for m in valid], self.weighted_by_key) if valid else None
        users = sum(int(m.content.metric_records[METRICS]["num-users"]) for m in valid)
        self._finish_round(_with_errors(metrics, users) if metrics is not None else {})
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
            self.last_checkpoint = r
        log(INFO, "round %s done", row.get("round"))
