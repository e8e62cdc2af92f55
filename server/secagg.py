"""The server's side of one SecAgg+ round (Bell et al. 2020), driven over a Flower Grid.

The nodes run Flower's own `secaggplus_mod` (client/app.py; their own keys kept as 48-byte scalars). This module
plays the server's part of the same four stages as Flower's `SecAggPlusWorkflow`, with Flower's primitives (Shamir
shares, key agreement, mask generation, dequantisation): that workflow works only inside the legacy
`DefaultWorkflow` (a `LegacyContext` and a legacy `Strategy`), while this project's server is a Message API
strategy (docs/privacy.md, "Secure aggregation"). No cryptography is written here.

    setup           nodes make two key pairs and send their public keys
    share keys      each node gets its neighbours' public keys and returns Shamir shares of its mask seed and
                    its first secret key, encrypted for each neighbour (the server only forwards them)
    collect         the training message, with the shares meant for the node; the node trains, quantises and
                    masks its packed reply (common.federation.secagg.pack); the server sums the masked vectors mod M
    unmask          live nodes return shares of the mask seeds of nodes that sent a vector and of the first
                    secret keys of nodes that did not; the server removes the masks and learns the sum only
"""

from __future__ import annotations

import functools
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import (factor_extract, parameters_addition,
                                                                 parameters_mod, parameters_subtraction)
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import bytes_to_public_key

from common.federation.secagg import (CLIPPING_RANGE, MODULUS, bytes_to_private_key, quantization_range,
                           shares_and_threshold)

__all__ = ["SecureRound", "SecAggAbort", "ring_neighbours"]


def _timed(stage: str):
    """Record a stage method's wall seconds in self.seconds[stage] (also when it aborts)."""
    def wrap(method):
        @functools.wraps(method)
        def timed(self, *args, **kwargs):
            t0 = time.perf_counter()
            try:
                return method(self, *args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0
        return timed
    return wrap


def ring_neighbours(order: list[int], k: int) -> dict[int, set[int]]:
    """SecAgg+'s neighbourhoods: node order[i] with the k // 2 nodes either side of it in `order` (a ring), itself
    included (k odd: k nodes each; k >= len(order): every node)."""
    n, half = len(order), k // 2
    return {nid: {order[(i + d) % n] for d in range(-half, half + 1)} for i, nid in enumerate(order)}


class SecAggAbort(RuntimeError):
    """The round cannot finish securely (too few live nodes); nothing was unmasked."""


@dataclass
class SecureRound:
    """One round's SecAgg+ state on the server. `drop(node, stage, reason)` records a node that failed.

    shapes: the packed arrays' shapes (common.federation.secagg.value_names order); after `unmask`, `total` holds their
    dequantised sum over the nodes whose masked vector arrived (`contributors`)."""

    grid: Grid
    nodes: list[int]
    server_round: int
    shapes: list[tuple[int, ...]]
    timeout: float
    drop: Callable[[int, str, str], None]
    source: Callable[[Message, list[Message]], int]
    shares: int = 0
    threshold: int = 0
    accept_single_neighbour: bool = False  # secagg-accept-two-nodes (common.privacy.statements.MASK_SEED_WEAKNESS)
    k: int = 0
    t: int = 0
    levels: int = 0
    neighbours: dict[int, set[int]] = field(default_factory=dict)
    public_keys: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    active: set[int] = field(default_factory=set)
    sampled: set[int] = field(default_factory=set)  # after share keys: the nodes whose secrets were shared
    forward: dict[int, tuple[list[int], list[bytes]]] = field(default_factory=dict)
    contributors: set[int] = field(default_factory=set)
    masked_sum: list[np.ndarray] | None = None
    _decoded: dict[int, list[np.ndarray]] = field(default_factory=dict)  # masked_problem's arrays, by reply
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds of each server stage (the round's log)

    # -- transport ----------------------------------------------------------------------------------
    def _exchange(self, stage: str, configs: dict[int, dict]) -> dict[int, ConfigRecord]:
        """Send each node its stage record; the good replies' records by node. Others are dropped."""
        sent = [Message(content=RecordDict({RECORD_KEY_CONFIGS: ConfigRecord({Key.STAGE: stage, **cfg})}),
                        message_type=MessageType.TRAIN, dst_node_id=nid, group_id=str(self.server_round))
                for nid, cfg in configs.items()]
        return self._records(stage, self.grid.send_and_receive(sent, timeout=self.timeout), sent)

    def _records(self, stage: str, replies: Iterable[Message], sent: list[Message]) -> dict[int, ConfigRecord]:
        out, seen = {}, set()
        for msg in replies:
            seen.add(self.source(msg, sent))
            nid = self.source(msg, sent)
            if msg.has_error():
                self.drop(nid, stage, msg.error.reason)
            elif RECORD_KEY_CONFIGS not in msg.content.config_records:
                self.drop(nid, stage, f"malformed: no {RECORD_KEY_CONFIGS} record")
            else:
                out[nid] = msg.content.config_records[RECORD_KEY_CONFIGS]
        for nid in {m.metadata.dst_node_id for m in sent} - seen:
            self.drop(nid, stage, "no reply within round-timeout (failed, left or too slow)")
        self.active &= set(out)
        return out

    def _check(self, stage: str) -> None:
        for nid in self.sampled:
            live = self.neighbours[nid] & self.active
            if len(live) < self.t:
                raise SecAggAbort(f"{stage}: node {nid} has {len(live)} live neighbours (itself included), fewer "
                                  f"than the threshold {self.t}; the round is skipped and nothing is unmasked")

    # -- stages ---------------------------------------------------------------------------------------
    @_timed("setup")
    def setup(self) -> None:
        """Stage 0: protocol settings out, public keys back. Neighbourhoods: a ring over a random order."""
        n = len(self.nodes)
        if n < 2:
            raise SecAggAbort(f"setup: {n} node(s) connected; a secure round needs at least 2")
        try:
            self.k, self.t = shares_and_threshold(n, self.shares, self.threshold)
        except ValueError as exc:  # e.g. secagg-threshold above this round's node count
            raise SecAggAbort(f"setup: {exc}") from None
        if self.k <= 2 and not self.accept_single_neighbour:  # one pairwise mask of a 32-bit seed per node
            raise SecAggAbort(f"setup: {n} nodes, {self.k - 1} neighbour(s) each: Flower's 32-bit mask seed "
                              "(flwrlabs/flower#7522) would let the server recover each node's vector in about 2 "
                              "hours; the round is skipped. Fix: more nodes (or secagg-shares >= 3), or accept it "
                              "with secagg-accept-two-nodes=true")
        self.levels = quantization_range(n)
        order = list(self.nodes)
        random.SystemRandom().shuffle(order)
        self.neighbours = ring_neighbours(order, self.k)
        self.sampled = set(self.nodes)
        self.active = set(self.nodes)
        settings = {Key.SAMPLE_NUMBER: n, Key.SHARE_NUMBER: self.k, Key.THRESHOLD: self.t,
                    Key.CLIPPING_RANGE: float(CLIPPING_RANGE), Key.TARGET_RANGE: self.levels,
                    Key.MOD_RANGE: MODULUS, Key.MAX_WEIGHT: 1.0}
        records = self._exchange(Stage.SETUP, {nid: settings for nid in self.nodes})
        for nid, rec in records.items():
            pk1, pk2 = rec.get(Key.PUBLIC_KEY_1), rec.get(Key.PUBLIC_KEY_2)
            if not isinstance(pk1, bytes) or not isinstance(pk2, bytes):
                self.drop(nid, Stage.SETUP, "malformed: no public keys")
                self.active.discard(nid)
                continue
            self.public_keys[nid] = (pk1, pk2)
        self._check(Stage.SETUP)

    @_timed("share-keys")
    def share_keys(self) -> None:
        """Stage 1: each node gets its live neighbours' public keys; its encrypted shares are kept to forward."""
        configs = {nid: {str(j): list(self.public_keys[j]) for j in self.neighbours[nid] & self.active}
                   for nid in sorted(self.active)}
        records = self._exchange(Stage.SHARE_KEYS, configs)
        self.forward = {nid: ([], []) for nid in self.active}
        for src, rec in records.items():
            dsts, texts = rec.get(Key.DESTINATION_LIST, []), rec.get(Key.CIPHERTEXT_LIST, [])
            for dst, text in zip(dsts, texts):
                if dst in self.forward and dst in self.neighbours[src]:
                    self.forward[dst][0].append(src)
                    self.forward[dst][1].append(text)
        self.sampled = set(records)  # the nodes whose secrets are shared: each one's mask must go in unmask
        self._check(Stage.SHARE_KEYS)

    def collect_record(self, nid: int) -> ConfigRecord:
        """Stage 2's record for node nid, to travel in its training message."""
        srcs, texts = self.forward[nid]
        return ConfigRecord({Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: texts,
                             Key.SOURCE_LIST: srcs})

    def masked_problem(self, content: RecordDict) -> str | None:
        """Why a stage-2 reply cannot be summed, or None. It must hold masked integers only."""
        if RECORD_KEY_CONFIGS not in content.config_records:
            return f"no {RECORD_KEY_CONFIGS} record (a reply in clear under secure aggregation)"
        if any(len(rec) for rec in content.array_records.values()):
            return "arrays in clear under secure aggregation"
        blobs = content.config_records[RECORD_KEY_CONFIGS].get(Key.MASKED_PARAMETERS)
        if not isinstance(blobs, list) or len(blobs) != len(self.shapes) + 1:
            return f"expected {len(self.shapes) + 1} masked arrays"
        try:
            arrays = [bytes_to_ndarray(b) for b in blobs]
        except Exception as exc:  # undecodable bytes
            return f"masked arrays cannot be read ({exc})"
        for a, shape in zip(arrays, [(1,)] + list(self.shapes)):
            if a.shape != shape or not np.issubdtype(a.dtype, np.integer) or a.min(initial=0) < 0 \
                    or a.max(initial=0) >= MODULUS:
                return f"a masked array has shape {a.shape} / dtype {a.dtype} / range outside [0, 2^32)"
        self._decoded[id(content)] = arrays  # collect sums these (a reply is decoded once)
        return None

    @_timed("collect")
    def collect(self, replies: dict[int, RecordDict]) -> None:
        """Stage 2's good replies (each checked with masked_problem, which decoded it): their masked vectors are
        summed."""
        total = None
        for content in replies.values():
            vec = [a.astype(np.int64, copy=False) for a in self._decoded.pop(id(content))]
            total = vec if total is None else parameters_addition(total, vec)
        self._decoded.clear()
        self.contributors = set(replies)
        self.active &= self.contributors
        self.masked_sum = parameters_mod(total, MODULUS) if total is not None else None
        self._check(Stage.COLLECT_MASKED_VECTORS)

    @_timed("unmask")
    def unmask(self) -> list[np.ndarray]:
        """Stage 3: shares back, masks removed; the dequantised sum of the contributors' packed arrays."""
        dead = self.sampled - self.contributors
        alone = sorted(n for n in self.contributors if len((self.neighbours[n] & self.contributors) - {n}) < 2)
        if alone and not self.accept_single_neighbour:  # after dropouts: one pairwise mask of a 32-bit seed
            raise SecAggAbort(f"unmask: node(s) {alone} have a single live neighbour; Flower's 32-bit mask seed "
                              "(flwrlabs/flower#7522) would let the server recover their vectors in about 2 hours; "
                              "nothing is unmasked. Fix: more nodes, or secagg-accept-two-nodes=true")
        configs = {nid: {Key.ACTIVE_NODE_ID_LIST: sorted(self.neighbours[nid] & self.contributors),
                         Key.DEAD_NODE_ID_LIST: sorted(self.neighbours[nid] & dead)} for nid in sorted(self.active)}
        records = self._exchange(Stage.UNMASK, configs)
        shares: dict[int, list[bytes]] = {nid: [] for nid in self.sampled}
        for rec in records.values():
            for owner, share in zip(rec.get(Key.NODE_ID_LIST, []), rec.get(Key.SHARE_LIST, [])):
                if owner in shares:
                    shares[owner].append(share)
        vec = self.masked_sum
        if vec is None:
            raise SecAggAbort("unmask: no masked vector arrived")
        shapes = [a.shape for a in vec]
        for nid in sorted(self.sampled):
            if len(shares[nid]) < self.t:
                raise SecAggAbort(f"unmask: {len(shares[nid])} shares of node {nid}'s secret arrived, fewer than "
                                  f"the threshold {self.t}; the round is skipped")
            try:  # any t shares rebuild it; more only cost time
                secret = combine_shares(shares[nid][:self.t])
            except (ValueError, TypeError, IndexError) as exc:  # a corrupt, repeated or malformed share
                raise SecAggAbort(f"unmask: node {nid}'s secret cannot be rebuilt from {self.t} of its shares "
                                  f"({exc}): a node sent a corrupt, repeated or malformed share; the round is "
                                  "skipped and nothing is unmasked") from None
            if nid in self.contributors:  # its own mask, from its seed
                vec = parameters_subtraction(vec, pseudo_rand_gen(secret, MODULUS, shapes))
            else:  # a node that dropped after sharing keys: the pairwise masks its live neighbours added
                try:
                    own = bytes_to_private_key(secret)
                except ValueError as exc:  # e.g. a node whose ClientApp keeps Flower's PEM keys (another version)
                    raise SecAggAbort(f"unmask: node {nid}'s rebuilt key cannot be read ({exc}); the round is "
                                      "skipped") from None
                for other in self.neighbours[nid] - {nid}:
                    if other not in self.contributors:
                        continue
                    key = generate_shared_key(own,
                                              bytes_to_public_key(self.public_keys[other][0]))
                    mask = pseudo_rand_gen(key, MODULUS, shapes)
                    vec = parameters_addition(vec, mask) if nid > other else parameters_subtraction(vec, mask)
        vec = parameters_mod(vec, MODULUS)
        weight, values = factor_extract(vec)
        n = len(self.contributors)
        if int(weight) != n * self.levels:  # each node adds T to the weight slot: a check that unmasking worked
            raise SecAggAbort(f"unmask: the weight slot is {int(weight)}, expected {n} x {self.levels}; the masks "
                              f"did not cancel (inconsistent replies); the round is skipped")
        summed = dequantize(values, CLIPPING_RANGE, self.levels)
        return [v - (n - 1) * CLIPPING_RANGE for v in summed]  # each node's values were shifted by +c
