"""A federation in one process: the real strategy and the real ClientApp (with its mods) of every node; only the
transport is replaced, by handing each message to its node's app in memory. For tests of a server round that
need the nodes' real work (secure aggregation) and for benchmarks that time the protocol without Ray.
"""

from __future__ import annotations

from typing import Callable, Iterable

from flwr.app import Context, Message, RecordDict
from flwr.common import Error

from common.config import Config

__all__ = ["InProcessGrid", "node_contexts", "FIRST_NODE_ID"]

FIRST_NODE_ID = 101


def node_contexts(cfg: Config, n_nodes: int) -> dict[int, Context]:
    """One Context per simulated node (node ids FIRST_NODE_ID + k, never Flower's SuperLink id 1), node
    FIRST_NODE_ID + k holding user shard k of n."""
    return {FIRST_NODE_ID + k: Context(run_id=1, node_id=FIRST_NODE_ID + k, state=RecordDict(), run_config=cfg.to_flwr(),
                           node_config={"partition-id": k, "num-partitions": n_nodes}) for k in range(n_nodes)}


class InProcessGrid:
    """The Grid interface a strategy uses (get_node_ids, send_and_receive), delivering in memory.

    lost(msg) -> True: the message's node does not reply (it failed or left). A node whose app raises replies
    with an error, as a SuperNode does. `replies` keeps every reply the server received, in order."""

    def __init__(self, app, contexts: dict[int, Context], lost: Callable[[Message], bool] | None = None) -> None:
        self.app = app
        self.contexts = contexts
        self.lost = lost or (lambda msg: False)
        self.replies: list[Message] = []

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        out = []
        for msg in messages:
            if self.lost(msg):
                continue
            try:
                reply = self.app(msg, self.contexts[msg.metadata.dst_node_id])
            except Exception as exc:  # a SuperNode turns a ClientApp exception into an error reply
                reply = Message(error=Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=msg)
            out.append(reply)
        self.replies.extend(out)
        return out
