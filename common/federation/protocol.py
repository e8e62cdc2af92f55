"""Every name of the messages between the server and the nodes, in one place: records, the keys inside them and
the metric names. Both sides and the tests use these; none is written as a literal elsewhere
(tests/federation/test_protocol.py checks server/, client/ and common/).

Server -> node (train and evaluate): ARRAYS (the global shared parameters), CONFIG (the round's settings:
SERVER_ROUND, SCHEMA_HASH, RUN_TOKEN (a public id of the run; a device's local-DP counts are per run), and for
training SAMPLE_RATE, SAMPLING_SEED (this node's own), CLIP_NORM; in a SecAgg+ round SECAGG_MAX_USERS and, for the
rounds that are not the update's, SECAGG_PHASE); to a node not known to hold them also CONTENT ({ITEM_VECTORS:
h(c) [n_items, text_dim]}) and SCHEMA ({SCHEMA_JSON: the public schema}).
Node -> server: train replies UPDATE (the sum of the sampled users' updates) and METRICS (NUM_USERS, and without
local DP NUM_EXAMPLES, TRAIN_LOSS_SUM; with adaptive clipping CLIP_SHIFTED_COUNT); evaluate replies METRICS (per-user
means, `evaluation_keys`, and NUM_USERS). In a SecAgg+ round replies are masked vectors instead (common.federation.secagg).
"""

from __future__ import annotations

# -- records ----------------------------------------------------------------------------------------------------
ARRAYS = "arrays"
CONFIG = "config"
CONTENT = "content"
SCHEMA = "schema"
UPDATE = "update"
METRICS = "metrics"

# -- keys inside CONTENT and SCHEMA ------------------------------------------------------------------------------
ITEM_VECTORS = "item-vectors"
SCHEMA_JSON = "json"

# -- keys inside CONFIG --------------------------------------------------------------------------------------------
SERVER_ROUND = "server-round"  # the run's round number (a resumed run goes on counting)
SCHEMA_HASH = "schema-hash"
RUN_TOKEN = "run-token"
SAMPLE_RATE = "sample-rate"  # q of the round's Poisson sampling of users
SAMPLING_SEED = "sampling-seed"  # this node's secret seed of the round
CLIP_NORM = "clip-norm"  # C of the round: each user's whole update is clipped to it (central DP, SecAgg+)
SECAGG_MAX_USERS = "secagg-max-users"  # U: the most users one node trains in a round (SecAgg+'s public bound)
SECAGG_PHASE = "secagg-phase"  # which sum a SecAgg+ round on train messages is for (absent: the update)
SECAGG_PHASE_COUNT = "count"  # ... the round's sampled-user count (the secagg-min-users floor)
SECAGG_PHASE_EVALUATE = "evaluate"  # ... the evaluation metrics

# -- keys inside METRICS -------------------------------------------------------------------------------------------
NUM_USERS = "num-users"
NUM_EXAMPLES = "num-examples"
TRAIN_LOSS_SUM = "train-loss-sum"
CLIP_SHIFTED_COUNT = "clip-shifted-count"  # sum over the sampled users of 1[norm <= C] - 1/2

#: every key inside a record (not the record names): tests/federation/test_protocol.py checks that none of these is written
#: as a string literal outside this module
RECORD_KEYS = (ITEM_VECTORS, SCHEMA_JSON, SERVER_ROUND, SCHEMA_HASH, RUN_TOKEN, SAMPLE_RATE, SAMPLING_SEED, CLIP_NORM,
               SECAGG_MAX_USERS, SECAGG_PHASE, NUM_USERS, NUM_EXAMPLES, TRAIN_LOSS_SUM, CLIP_SHIFTED_COUNT)

# -- evaluation metric names -------------------------------------------------------------------------------------
SPLITS = ("val", "test")
#: the per-user ranking metrics of common.evaluation.evaluate.evaluate_users, in the order a reply lists them
RANKING = ("hr", "ndcg", "hr-sampled", "ndcg-sampled")
SQUARES = "-sq"  # <key>-sq: the mean of the squared per-user values (a sub-sampled evaluation)
STANDARD_ERROR = "-se"  # <key>-se: the standard error of the mean <key> (the server's, from <key>-sq)
EVALUATED_USERS = "evaluated-users"  # the users a sub-sampled evaluation's means are over (the round's row)


def ranking_metric(name: str, k: int) -> str:
    """"hr" -> "hr@k", "hr-sampled" -> "hr@k-sampled" (a name of RANKING at cut-off k)."""
    base, _, variant = name.partition("-")
    return f"{base}@{k}" + (f"-{variant}" if variant else "")


def eval_metric(split: str, name: str, k: int) -> str:
    """The reply's (and the round row's) key of a ranking metric on a split: ("val", "hr", 10) -> "val-hr@10"."""
    return f"{split}-{ranking_metric(name, k)}"


def evaluation_keys(k: int, squares: bool = False) -> list[str]:
    """The per-user mean metrics a node's evaluation reports, in a fixed order (secure aggregation packs them);
    squares (sub-sampled evaluation, eval-users > 0): each one's mean of squares too, as `<key>-sq`."""
    keys = [eval_metric(split, name, k) for split in SPLITS for name in RANKING]
    return keys + [key + SQUARES for key in keys] if squares else keys


# -- the node's own records in its Flower Context (never sent) ------------------------------------------------------
NODE_STATE = "theta"  # theta_u and the per-user counts (client.node.Node.save)
NODE_RUN = "run"  # {NODE_RUN_TOKEN: the run the counts belong to}
NODE_RUN_TOKEN = "token"

# -- the server's row of each round (rounds.csv, federated.json's "rounds") ----------------------------------------
ROUND = "round"
USERS = "users"  # the users whose updates were summed
NODES_ASKED = "nodes-asked"
NODES_REPLIED = "nodes-replied"
NODES_FAILED = "nodes-failed"
SKIPPED = "skipped"  # 1: the round was skipped (too few good replies, or an aborted secure round)
EXAMPLES = "examples"
TRAIN_LOSS = "train-loss"  # the mean over the round's users of their summed training loss
EPSILON = "epsilon"  # the ledger's cumulative epsilon after the round (central DP)
ROW_CLIP_NORM = CLIP_NORM  # the round's C (central DP; it moves with adaptive clipping)
UNCLIPPED_SHARE = "unclipped-share"  # adaptive clipping's noisy share of users whose update was not clipped
SECAGG_DROPPED = "secagg-dropped"  # nodes that shared keys and sent no masked vector
SECAGG_ERROR_BOUND = "secagg-error-bound"  # |secure sum - exact sum| bound of each value (common.federation.secagg)
TRAIN_SECONDS = "train-seconds"
SECONDS = "seconds"


def secagg_seconds(stage: str) -> str:
    """The row's wall seconds of a SecAgg+ stage of the server ("setup", "share-keys", "collect", "unmask", "count")."""
    return f"secagg-{stage}-seconds"
