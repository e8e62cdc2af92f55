"""The Flower ClientApp: a node that serves a local user store.

On a device the store holds one user (its own dataset directory, `--node-config data-dir=...`);
in simulation a node holds a shard of the users of the run's dataset (`partition-id` of
`num-partitions`). Both run the same code: sample the node's users for the round, train each
user separately (vectorised), keep every theta_u on the node, and reply with only the sum of the
users' shared-parameter updates and scalar metrics.
"""

from __future__ import annotations

import importlib
import os
import sys
import time

from flwr.app import Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.recorddict_compat import fitres_to_recorddict
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

from client.node import Node, node_for
from common.federation.params import from_record
from common.federation.protocol import (CLIP_NORM, CLIP_SHIFTED_COUNT, CONFIG, METRICS, NUM_USERS, SECAGG_MAX_USERS,
                             SECAGG_PHASE, SECAGG_PHASE_COUNT, SECAGG_PHASE_EVALUATE, UPDATE, evaluation_keys)
from common.federation.secagg import bytes_to_private_key, pack, pack_metrics, private_key_to_bytes

__all__ = ["app", "train_reply", "evaluate_reply", "secure_aggregation_mod", "NODE_THREADS_ENV", "TIMINGS_FILE",
           "REQUIRE_SECURE_AGGREGATION"]

#: state-dir/timings.csv: where each message's time went on this node (stays on the node)
TIMINGS_FILE = "timings.csv"

#: Threads of TensorFlow's pools in this process (set by the simulation: one per Ray actor's CPU).
NODE_THREADS_ENV = "FEDCTX_NODE_THREADS"
if os.environ.get(NODE_THREADS_ENV):
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(int(os.environ[NODE_THREADS_ENV]))
        tf.config.threading.set_inter_op_parallelism_threads(int(os.environ[NODE_THREADS_ENV]))
    except RuntimeError:  # TensorFlow already running in this process: keep its pools
        pass

#: node-config key: "true" makes the node refuse every training message that is not part of a SecAgg+ round
REQUIRE_SECURE_AGGREGATION = "require-secure-aggregation"


def secure_aggregation_mod(msg: Message, context: Context, call_next):
    """Flower's own `secaggplus_mod` for the training messages of a SecAgg+ round (they carry its record);
    other messages pass. With node-config require-secure-aggregation=true a plain training message is refused:
    the device's owner, not the server, decides that its update is never sent in clear."""
    if msg.metadata.message_type == MessageType.TRAIN:
        if RECORD_KEY_CONFIGS in msg.content.config_records:
            return secaggplus_mod(msg, context, call_next)
        if str(context.node_config.get(REQUIRE_SECURE_AGGREGATION, "false")).lower() == "true":
            raise PermissionError("this node requires secure aggregation (node-config require-secure-aggregation="
                                  "true) and the server asked for a plain training reply; nothing was sent. Run "
                                  "the federation with --run-config secure-aggregation=true.")
    return call_next(msg, context)


def _compact_secagg_keys() -> None:
    """Two changes to how Flower's `secaggplus_mod` handles the node's own private keys, nothing else:

    * serialised as the 48-byte scalar (common.federation.secagg.private_key_to_bytes) instead of 306 bytes of PEM: the key
      is Shamir-shared in 16-byte chunks by pycryptodome's pure-Python arithmetic, 4 chunks instead of 20;
    * parsed once per session instead of once per neighbour (memoised; ~1.2 ms a parse, half of each key
      agreement).

    The protocol, its stages, messages and key agreement are Flower's, unchanged; the server rebuilds a dropped
    node's key with the same functions (server.secagg). docs/benchmarks.md, "Secure aggregation"."""
    flower = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    flower.private_key_to_bytes = private_key_to_bytes
    flower.bytes_to_private_key = bytes_to_private_key


_compact_secagg_keys()
app = ClientApp(mods=[secure_aggregation_mod])


def train_reply(node: Node, content: RecordDict) -> RecordDict:
    """What a node sends back after a training round: {"update": ArrayRecord, "metrics": MetricRecord}.

    Nothing else: no timing (a node's compute time grows with its users' numbers of engagements), so a reply is
    a function of the shared parameters, the node's data and its randomness only. In a SecAgg+ round the reply
    is instead the packed vector (common.federation.secagg.pack) in Flower's FitRes layout, which secaggplus_mod masks:
    its arrays are cleared before the reply leaves, and it carries no metric in clear."""
    update, metrics = node.train_round(content)
    if RECORD_KEY_CONFIGS not in content.config_records:
        return RecordDict({UPDATE: update, METRICS: MetricRecord(metrics)})
    conf = content.config_records[CONFIG]
    packed = pack(from_record(update), int(metrics[NUM_USERS]), float(metrics.get(CLIP_SHIFTED_COUNT, 0.0)),
                  int(conf[SECAGG_MAX_USERS]), float(conf[CLIP_NORM]))
    return _masked_layout(packed)


def secure_evaluate_reply(node: Node, content: RecordDict) -> RecordDict:
    """Evaluation inside a SecAgg+ round (server config SECAGG_PHASE = SECAGG_PHASE_EVALUATE): the node's metric sums,
    packed (common.federation.secagg.pack_metrics) for secaggplus_mod to mask; nothing in clear."""
    conf = content.config_records[CONFIG]
    return _masked_layout(pack_metrics(node.evaluate(content), evaluation_keys(node.cfg.top_k, node.cfg.eval_users > 0),
                                       int(conf[SECAGG_MAX_USERS])))


def secure_count_reply(node: Node, content: RecordDict) -> RecordDict:
    """The user-count round of a secure training round (server config SECAGG_PHASE = SECAGG_PHASE_COUNT, for the
    server's secagg-min-users floor): the number of this node's users the round samples, [users] / U, for
    secaggplus_mod to mask. Nothing is trained."""
    conf = content.config_records[CONFIG]
    return _masked_layout(pack_metrics({NUM_USERS: len(node.sampled(conf))}, (), int(conf[SECAGG_MAX_USERS])))


def _masked_layout(packed: list) -> RecordDict:
    """Flower's FitRes layout, which secaggplus_mod reads (weight 1: the server gets the plain sum)."""
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(packed), num_examples=1, metrics={})
    return fitres_to_recorddict(fitres, keep_input=False)


def evaluate_reply(node: Node, content: RecordDict) -> RecordDict:
    """What a node sends back after evaluation: {"metrics": MetricRecord} of per-user means."""
    return RecordDict({METRICS: MetricRecord(node.evaluate(content))})


def _process_age() -> float:
    """Seconds since this process started (the fresh flwr-clientapp process of a deployed message)."""
    try:  # Linux: start time in clock ticks after boot (field 22 of /proc/self/stat), boot time in /proc/stat
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return time.time() - (boot + ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, StopIteration):  # not Linux: the figure is left out
        return float("nan")


def _eager_on_devices(context: Context) -> None:
    """A device (a node with its own data-dir) runs TensorFlow eagerly. Flower 1.23 starts a fresh
    flwr-clientapp process for every message, so a traced graph is never reused: tracing the local training
    step cost more than it saved (a 20-user train message: 2.65 s with tf.function, 0.99 s eager; measured in
    docs/benchmarks.md). Simulated nodes are long-lived Ray actors and keep their traced graphs."""
    if "data-dir" in context.node_config:
        import tensorflow as tf

        tf.config.run_functions_eagerly(True)


def _reply(msg: Message, context: Context, handler, training: bool = False) -> Message:
    t0, started = time.perf_counter(), _process_age()
    _eager_on_devices(context)
    node = node_for(context, msg.content, training)
    t1 = time.perf_counter()
    reply = handler(node, msg.content)
    t2 = time.perf_counter()
    node.save(context)  # theta_u stays on the node, in its Context (and state-dir on a device)
    t3 = time.perf_counter()
    # the node's own log, never the reply (a node's compute time depends on its users' data)
    kind = "train" if training else "evaluate"
    print(f"fedctx node: {kind} round {node.round}: process start to handler {started:.2f}s, state load "
          f"{t1 - t0:.2f}s, compute {t2 - t1:.2f}s, save {t3 - t2:.2f}s", file=sys.stderr, flush=True)
    if node.state_dir is not None:  # one line per message, for the device's owner (docs/benchmarks.md)
        path = node.state_dir / TIMINGS_FILE
        new = not path.is_file()
        with path.open("a") as f:
            if new:
                f.write("round,message,process_start_to_handler_s,state_load_s,compute_s,save_s\n")
            f.write(f"{node.round},{kind},{started:.3f},{t1 - t0:.3f},{t2 - t1:.3f},{t3 - t2:.3f}\n")
    return Message(content=reply, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    phase = msg.content.config_records[CONFIG].get(SECAGG_PHASE)
    if phase == SECAGG_PHASE_EVALUATE:  # SecAgg+ runs on train messages
        return _reply(msg, context, secure_evaluate_reply)
    if phase == SECAGG_PHASE_COUNT:
        return _reply(msg, context, secure_count_reply)
    return _reply(msg, context, train_reply, training=True)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return _reply(msg, context, evaluate_reply)
