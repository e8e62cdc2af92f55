"""The server's book of its nodes: waiting for them, each one's message (the content and the schema to the nodes
not known to hold them, its own sampling seed), which node a reply speaks for, and every dropped reply with its
reason (failed, late and malformed replies are dropped, logged and kept in `failures`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from logging import WARNING
from typing import Callable, Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.logger import log
from flwr.serverapp import Grid

from common.federation.protocol import (ARRAYS, CONFIG, CONTENT, RUN_TOKEN, SAMPLE_RATE, SAMPLING_SEED, SCHEMA, SCHEMA_HASH,
                             SCHEMA_JSON)
from common.data.schema import PublicSchema
from server.replies import ReplyCheck

__all__ = ["NodeBook", "wait_for_nodes", "WAIT_LOG_EVERY"]

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


@dataclass
class NodeBook:
    """content: the public item vectors h(c) and schema: the public schema; both go to every node that has not yet
    replied well (first contact, a late joiner, a node that failed or restarted), the schema hash and the run token
    to all. has_content: the nodes that replied well under this schema; failures: every dropped reply (round, node,
    phase, reason); sent: this phase's messages (the grid sets their ids when it pushes them, see `source`)."""

    content: ArrayRecord
    schema: PublicSchema
    run_token: str = ""
    has_content: set[int] = field(default_factory=set)
    failures: list[dict] = field(default_factory=list)
    sent: list[Message] = field(default_factory=list)

    def messages(self, node_ids: Iterable[int], arrays: ArrayRecord, config: ConfigRecord, message_type: str,
                 seed: Callable[[int], int] | None = None) -> list[Message]:
        """One message per node; a training config with a sample rate gets each node its own `seed(node)`."""
        config[SCHEMA_HASH] = self.schema.hash
        config[RUN_TOKEN] = self.run_token
        out = []
        for node_id in node_ids:
            node_config = config
            if message_type == MessageType.TRAIN and SAMPLE_RATE in config and seed is not None:
                node_config = ConfigRecord(dict(config))
                node_config[SAMPLING_SEED] = seed(node_id)
            record = RecordDict({ARRAYS: arrays, CONFIG: node_config})
            if node_id not in self.has_content:
                record[CONTENT] = self.content
                record[SCHEMA] = ConfigRecord({SCHEMA_JSON: self.schema.to_json()})
            out.append(Message(content=record, message_type=message_type, dst_node_id=node_id))
        self.sent = out
        return out

    def source(self, msg: Message, sent: list[Message] | None = None) -> int:
        """The node a reply speaks for. An error reply the SuperLink makes for an unreachable node ("Node
        Unavailable") comes from the SuperLink itself; it answers one of our messages (`sent`, default this
        phase's), whose destination it names."""
        if msg.metadata.src_node_id != SUPERLINK_NODE_ID:
            return msg.metadata.src_node_id
        ids = {m.metadata.message_id: m.metadata.dst_node_id for m in (self.sent if sent is None else sent)}
        return ids.get(msg.metadata.reply_to_message_id, msg.metadata.src_node_id)

    def drop(self, server_round: int, phase: str, node_id: int, reason: str) -> None:
        """Record a dropped reply; the node gets h(c) and the schema again next time."""
        self.has_content.discard(node_id)
        self.failures.append({"round": server_round, "node": int(node_id), "phase": phase, "reason": reason})
        log(WARNING, "round %s: %s reply of node %s dropped: %s", server_round, phase, node_id, reason)

    def sort(self, server_round: int, phase: str, replies: Iterable[Message], asked: Iterable[int],
             check: ReplyCheck) -> list[Message]:
        """The well-formed replies (`check` finds no problem); every other asked node is dropped with its reason."""
        good, seen = [], set()
        for msg in replies:
            node = self.source(msg)
            seen.add(node)
            if msg.has_error():
                self.drop(server_round, phase, node, msg.error.reason)
                continue
            problem = check(msg.content)
            if problem is not None:
                self.drop(server_round, phase, node, f"malformed: {problem}")
                continue
            good.append(msg)
            self.has_content.add(node)
        for node in set(asked) - seen:
            self.drop(server_round, phase, node, "no reply within round-timeout (failed, left or too slow)")
        return good
