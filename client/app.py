"""The Flower ClientApp: a node that serves a local user store.

On a device the store holds one user (its own dataset directory, `--node-config data-dir=...`);
in simulation a node holds a shard of the users of the run's dataset (`partition-id` of
`num-partitions`). Both run the same code: sample the node's users for the round, train each
user separately (vectorised), keep every theta_u on the node, and reply with only the sum of the
users' shared-parameter updates and scalar metrics.
"""

from __future__ import annotations

import os

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.node import Node, node_for

__all__ = ["app", "train_reply", "evaluate_reply", "NODE_THREADS_ENV"]

#: Threads of TensorFlow's pools in this process (set by the simulation: one per Ray actor's CPU).
NODE_THREADS_ENV = "FEDCTX_NODE_THREADS"
if os.environ.get(NODE_THREADS_ENV):
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(os.environ[NODE_THREADS_ENV]))
        tf.config.threading.set_inter_op_parallelism_threads(int(os.environ[NODE_THREADS_ENV]))
    except RuntimeError:  # TensorFlow already running in this process: keep its pools
        pass

app = ClientApp()


def train_reply(node: Node, content: RecordDict) -> RecordDict:
    """What a node sends back after a training round: {"update": ArrayRecord, "metrics": MetricRecord}.

    Nothing else: no timing (a node's compute time grows with its users' numbers of engagements), so a reply is
    a function of the shared parameters, the node's data and its randomness only."""
    update, metrics = node.train_round(content)
    return RecordDict({"update": update, "metrics": MetricRecord(metrics)})


def evaluate_reply(node: Node, content: RecordDict) -> RecordDict:
    """What a node sends back after evaluation: {"metrics": MetricRecord} of per-user means."""
    return RecordDict({"metrics": MetricRecord(node.evaluate(content))})


def _reply(msg: Message, context: Context, handler) -> Message:
    node = node_for(context)
    reply = handler(node, msg.content)
    node.save(context)  # theta_u stays on the node, in its Context (and state-dir on a device)
    return Message(content=reply, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    return _reply(msg, context, train_reply)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _reply(msg, context, evaluate_reply)
