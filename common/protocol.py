"""Every key of the messages between the server and the nodes, in one place.

Server -> node (train and evaluate): ARRAYS (the global shared parameters), CONFIG (the round's settings:
"server-round", SCHEMA_HASH, RUN_TOKEN (a public id of the run; a
device's local-DP counts are per run), and for training "sample-rate", "sampling-seed", "clip-norm"); to a node not
known to hold them also CONTENT ({ITEM_VECTORS: h(c) [n_items, text_dim]}) and SCHEMA ({SCHEMA_JSON: the
public schema}).
Node -> server: train replies UPDATE (the sum of the sampled users' updates) and METRICS ("num-users", and
without local DP "num-examples", "train-loss-sum"; with adaptive clipping "clip-shifted-count"); evaluate
replies METRICS (per-user means and "num-users").
"""

ARRAYS = "arrays"
CONFIG = "config"
CONTENT = "content"
ITEM_VECTORS = "item-vectors"
SCHEMA = "schema"
SCHEMA_JSON = "json"
SCHEMA_HASH = "schema-hash"
UPDATE = "update"
METRICS = "metrics"
RUN_TOKEN = "run-token"
