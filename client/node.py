"""On-node state and work: the local user store, theta_u persistence, local training, evaluation."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict

from common.config import Config, config_from_mapping
from common.data.loader import load_dataset
from common.data.cache import load_prepared
from common.data.datasets import cache_dir, resolve_dataset
from common.federation.users import UserStore
from common.federation.updates import dp_init_theta, ials_user_theta, init_theta, item_representations, user_updates
from common.evaluation.evaluate import eval_sample, evaluate_users
from common.privacy.sampling import poisson_sample, training_members
from common.model.scoring import DENSE_NAMES, ITEM_NAMES
from common.federation.params import from_record, to_record
from common.privacy.noise import SecureGaussian
from common.privacy.accounting import local_epsilon
from common.privacy.statements import local_report
from common.federation.protocol import (ARRAYS, CLIP_NORM, CLIP_SHIFTED_COUNT, CONFIG, CONTENT, ITEM_VECTORS, NODE_RUN,
                             NODE_RUN_TOKEN, NODE_STATE, NUM_EXAMPLES, NUM_USERS, RANKING, RUN_TOKEN, SAMPLE_RATE,
                             SAMPLING_SEED, SCHEMA, SCHEMA_HASH, SCHEMA_JSON, SECAGG_MAX_USERS, SERVER_ROUND, SPLITS,
                             SQUARES, TRAIN_LOSS_SUM, eval_metric)
from common.federation.secagg import check_users
from common.data.schema import SCHEMA_FILE, PublicSchema, SchemaMismatch, content_digest
from client.clipping import clip_users
from client.device_state import data_index
from client.state_files import CONTENT_FILE, DEVICE_FILE, DEVICES_DIR, GLOBAL_MODEL_FILE, NODE_STATE_FILE, STORE_FILE
from common.io import atomic_file, savez_atomic, write_atomic

__all__ = ["Node", "node_for", "build_store", "NODE_STATE_FILE", "CONTENT_FILE", "GLOBAL_MODEL_FILE", "STORE_FILE",
           "DEVICES_DIR", "DEVICE_FILE"]


@functools.lru_cache(maxsize=4)
def _prepared(data_dir: str, schema_json: str, shared: bool = False):
    """The dataset at data_dir encoded with the schema, once per process (simulated nodes share it); shared (a
    simulation's dataset, not a device's own data): once per content on this machine too, kept by content hash
    under cache_dir()/prepared and memory-mapped (`common.data.cache`). What does not fit the schema is dropped
    or zeroed and counted in the node's own log (never sent: counts of a user's rows are data)."""
    schema = PublicSchema.from_json(schema_json)
    ds = load_prepared(data_dir, cache_dir() / "prepared", schema) if shared else load_dataset(data_dir, schema=schema)
    unfit = {k: ds.cleaning.get(k, 0) for k in ("unknown_items", "unknown_context_values")}
    if any(unfit.values()):
        print(f"fedctx node: {data_dir}: {unfit['unknown_items']} rows with items outside the schema's catalogue "
              f"dropped, {unfit['unknown_context_values']} context values outside its vocabularies encoded as "
              f"missing", file=sys.stderr, flush=True)
    return ds


def build_store(data_dir: str, partition: int, partitions: int, use_context: bool, schema: PublicSchema,
                cache: Path | None = None, shared: bool = False) -> UserStore:
    """The users of one node, encoded with the public schema: shard `partition` of `partitions` contiguous
    blocks of the dataset's users. With `cache` (a device's state-dir) the encoded store is kept in one file
    and reused while the data files and the schema are unchanged (no re-parsing per message). shared (a
    simulation's dataset): the prepared dataset is kept by content hash for every process (`_prepared`)."""
    key = None
    if cache is not None:
        files = sorted(p for p in Path(data_dir).iterdir() if p.is_file() and not p.name.startswith("."))
        key = json.dumps({"v": 1, "schema": schema.hash, "use-context": use_context, "part": [partition, partitions],
                          "files": [[p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]})
        hit = _load_store(cache / STORE_FILE, key)
        if hit is not None:
            return hit
    ds = _prepared(str(data_dir), schema.to_json(), shared)
    users = np.array_split(np.arange(ds.n_users), partitions)[partition]
    store = UserStore.from_prepared(ds, users, use_context=use_context)
    if cache is not None:
        savez_atomic(cache / STORE_FILE, {"key": np.array(key), "cleaning": np.array(json.dumps(ds.cleaning)),
                                          **{f.name: getattr(store, f.name) for f in dataclasses.fields(store)}},
                     private=True)
    return store


@functools.lru_cache(maxsize=4)
def _shard(data_dir: str, partition: int, partitions: int, use_context: bool, schema_json: str) -> UserStore:
    """A simulated node's store, built once per process: a Node is rebuilt for every message, its users are not."""
    return build_store(data_dir, partition, partitions, use_context, PublicSchema.from_json(schema_json), shared=True)


def _load_store(path: Path, key: str) -> UserStore | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            return UserStore(**{fl.name: f[fl.name] for fl in dataclasses.fields(UserStore)})
    except (OSError, KeyError, ValueError):
        return None


_MEMBERS: dict[tuple[int, float, int], tuple[UserStore, np.ndarray]] = {}


def _members(store: UserStore, audit_fraction: float, seed: int) -> np.ndarray:
    """training_members of a store, computed once per (store, fraction, seed): a Node is rebuilt every
    round, its store comes from build_store's cache."""
    key = (id(store), audit_fraction, seed)
    hit = _MEMBERS.get(key)
    if hit is None or hit[0] is not store:
        hit = _MEMBERS[key] = (store, training_members(store.user_keys, audit_fraction, seed))
    return hit[1]


@dataclass
class Node:
    """A node's users and their private state. theta [U, dim], `ready` [U] and `taken` [U] (rounds each
    user took part in) never leave the node."""

    cfg: Config
    store: UserStore
    theta: np.ndarray
    ready: np.ndarray
    taken: np.ndarray
    item_h: np.ndarray
    schema: PublicSchema
    state_dir: Path | None = None
    data_dir: Path | None = None  # a device's own dataset directory (simulation: the run's, shared)
    simulated: bool = False  # a shard of a simulation's dataset, not a device's own data
    content_received: bool = False  # this message brought h(c) and the schema
    round: int = 0  # the last server round this node worked on
    params: dict[str, np.ndarray] | None = None  # the latest global model received
    warmed: np.ndarray | None = None  # [U] warm starts of theta_u in this run (each one a DP release under local DP)
    run_token: str = ""  # the run these counts belong to (sent by the server; a new run starts them at 0)

    def __post_init__(self) -> None:
        if self.warmed is None:
            self.warmed = np.zeros(self.store.n_users, np.int64)

    # -- inputs from the server ---------------------------------------------------------------
    def _receive(self, content: RecordDict) -> dict[str, np.ndarray]:
        params = from_record(content.array_records[ARRAYS])
        expected = set(DENSE_NAMES) | (set(ITEM_NAMES) if self.cfg.item_embedding else set())
        if set(params) != expected:
            raise ValueError(f"server sent parameters {sorted(params)}, this node expects {sorted(expected)}")
        self.round = int(content.config_records[CONFIG][SERVER_ROUND])
        self.params = params  # the latest global model (a device keeps it to recommend between rounds)
        return params

    def _warm_start(self, users: np.ndarray, params: dict[str, np.ndarray]) -> None:
        cold = users[~self.ready[users]]
        if len(cold):
            phi = item_representations(params, self.item_h)
            c = self.cfg
            if c.local_dp and c.local_dp_theta:  # exact local DP: theta_u shapes every update, so it is DP too
                self.theta[cold] = dp_init_theta(self.store, cold, phi, c.local_clip_norm,
                                                 c.local_noise_multiplier * c.local_clip_norm, SecureGaussian())
            else:
                self.theta[cold] = init_theta(self.store, cold, phi, c.half_life_days)
            self.ready[cold] = True
            self.warmed[cold] += 1

    # -- work ---------------------------------------------------------------------------------
    def train_round(self, content: RecordDict) -> tuple[ArrayRecord, dict[str, float | int]]:
        """Train this round's sampled users; return the SUM of their shared-parameter updates."""
        params = self._receive(content)
        conf = content.config_records[CONFIG]
        round_ = int(conf[SERVER_ROUND])
        sampled = self.sampled(conf)
        secure = SECAGG_MAX_USERS in conf  # secure aggregation: a public bound on every value (common.federation.secagg)
        if secure:
            check_users(len(sampled), int(conf[SECAGG_MAX_USERS]))
        if len(sampled) == 0:
            zero = {k: np.zeros_like(v) for k, v in params.items()}
            return to_record(zero), self._train_metrics(0, 0, 0.0)
        self._warm_start(sampled, params)
        self.taken[sampled] += 1
        updates, new_theta = user_updates(params, self.theta[sampled], self.store, sampled, self.item_h,
                                          self.cfg, round_)
        self.theta[sampled] = new_theta
        shapes = {k: v.shape for k, v in params.items()}
        metrics = self._train_metrics(len(sampled), int(updates.n_examples.sum()), float(updates.loss.sum()))
        if not (self.cfg.central_dp or secure):
            total = updates.total(shapes)
            return to_record({k: total[k] for k in params}), metrics
        # each user's whole update is clipped to the server's C of this round (DP-FedAvg; SecAgg's bound)
        clipping = clip_users(updates, float(conf.get(CLIP_NORM, self.cfg.clip_norm)), self.cfg.adaptive_clip)
        if clipping.shifted_count is not None:
            metrics[CLIP_SHIFTED_COUNT] = clipping.shifted_count
        total = updates.total(shapes, clipping.scale)
        return to_record({k: total[k] for k in params}), metrics

    def sampled(self, conf) -> np.ndarray:
        """The node's users sampled in the round of the train config `conf` (its seed, rate and round)."""
        return np.flatnonzero(poisson_sample(self.store.user_keys, float(conf[SAMPLE_RATE]),
                                             int(conf[SAMPLING_SEED]), int(conf[SERVER_ROUND])) & self.members)

    def _train_metrics(self, users: int, examples: int, loss_sum: float) -> dict[str, float | int]:
        """The scalars a training reply carries. Under local DP only the user count: the example count and the
        loss are exact functions of the users' engagements, which the example-level guarantee must cover."""
        if self.cfg.local_dp:
            return {NUM_USERS: int(users)}
        return {NUM_USERS: int(users), NUM_EXAMPLES: int(examples), TRAIN_LOSS_SUM: float(loss_sum)}

    @property
    def members(self) -> np.ndarray:
        """[U] users that take part in training (all, unless audit-fraction holds some out)."""
        return _members(self.store, self.cfg.audit_fraction, self.cfg.seed)

    def evaluate(self, content: RecordDict) -> dict[str, float | int]:
        """Mean HR/NDCG@k of this node's training members on validation and test (full ranking and sampled)."""
        params = self._receive(content)
        users = np.flatnonzero(self.members)
        if self.cfg.eval_users > 0:  # a fixed random sub-sample; the means come with their squares (standard errors)
            users = users[eval_sample(self.store.user_keys[users], self.cfg)]
        self._warm_start(users, params)
        theta = self.theta
        if self.cfg.ials:  # theta_u is a function of the shared parameters: solved for the ones evaluated
            theta = self.theta.copy()
            theta[users] = ials_user_theta(params, self.store, users, self.item_h, self.cfg)
        k = self.cfg.top_k
        out: dict[str, float | int] = {NUM_USERS: int(len(users))}
        for split in SPLITS:
            m = evaluate_users(params, theta, self.store, self.item_h, self.cfg, split, users)
            for name in RANKING:
                key = eval_metric(split, name, k)
                out[key] = float(m[name].mean()) if len(users) else 0.0
                if self.cfg.eval_users > 0:
                    out[key + SQUARES] = float(np.square(m[name]).mean()) if len(users) else 0.0
        return out

    # -- persistence ----------------------------------------------------------------------------
    def save(self, context: Context) -> None:
        """Persist theta_u: in the Flower Context and, with a state-dir (a device, or a simulated node of a run
        with a run-dir), on disk: node-state.npz (theta_u by user key, round counts, the round reached),
        content.npz (h(c) and the schema) and global_model.npz (the latest global model)."""
        context.state[NODE_STATE] = to_record({"theta": self.theta, "ready": self.ready.astype(np.float32),
                                            "taken": self.taken.astype(np.float32),
                                            "warmed": self.warmed.astype(np.float32),
                                            "round": np.array([self.round], np.float32)})
        context.state[NODE_RUN] = ConfigRecord({NODE_RUN_TOKEN: self.run_token})
        context.state[CONTENT] = to_record({ITEM_VECTORS: self.item_h})
        context.state[SCHEMA] = ConfigRecord({SCHEMA_JSON: self.schema.to_json()})
        if self.state_dir is None:
            return
        d = self.state_dir
        savez_atomic(d / NODE_STATE_FILE, dict(theta=self.theta, ready=self.ready, taken=self.taken, warmed=self.warmed,
                     user_keys=self.store.user_keys, round=np.array(self.round), schema_hash=np.array(self.schema.hash),
                     run_token=np.array(self.run_token)), private=True)
        if self.content_received or not (d / SCHEMA_FILE).is_file():  # h(c) and the schema change only then
            savez_atomic(d / CONTENT_FILE, {"item_h": self.item_h}, private=True)
            self.schema.write(d / SCHEMA_FILE)
        if self.params is not None:
            savez_atomic(d / GLOBAL_MODEL_FILE, {k.replace("/", "."): v for k, v in self.params.items()}, private=True)
        device = json.dumps({"settings": self.cfg.to_flwr(), "data-dir": str(self.data_dir) if self.data_dir else None,
                             "simulated": self.simulated, "node-id": int(context.node_id)}, indent=1)
        if not (d / DEVICE_FILE).is_file() or (d / DEVICE_FILE).read_text() != device:
            write_atomic(d / DEVICE_FILE, device)
        if self.data_dir is not None and not self.simulated:  # `fedctx device ...` reads the data from its index
            data_index(d, self.schema, self.data_dir)
        if self.cfg.local_dp:
            self._write_local_privacy()

    def snapshot(self, round_: int) -> None:
        """Keep the state at the end of `round_` (a server checkpoint round) so a resumed run starts from it."""
        if self.state_dir is not None and (self.state_dir / NODE_STATE_FILE).is_file():
            # theta_u and the counts: owner-only (private), like node-state.npz
            with atomic_file(self.state_dir / f"checkpoint-{round_}.npz", private=True) as tmp:
                shutil.copyfile(self.state_dir / NODE_STATE_FILE, tmp)
            for old in self.state_dir.glob("checkpoint-*.npz"):
                if old.stem != f"checkpoint-{round_}":
                    old.unlink(missing_ok=True)

    def _write_local_privacy(self) -> None:
        """state-dir/local_privacy.json: each of this device's users' example-level epsilon in this run, from the
        rounds it took part in and its warm starts (it stays on the device, like theta_u). A new run starts the
        counts at 0 and keeps the previous run's report as local_privacy-<run>.json."""
        c = self.cfg
        members = np.flatnonzero(self.members)
        warm = (self.warmed[members] if c.local_dp_theta else np.zeros(len(members))).astype(np.int64)
        report = local_report(self.taken[members], c.local_noise_multiplier, c.local_steps, c.local_delta,
                              c.local_clip_norm, c.local_denominator, c.accountant, c.local_dp_theta, warm)
        report["users"] = [{"user": str(self.store.user_keys[u]), "rounds": int(self.taken[u]),
                            "epsilon": local_epsilon(float(c.local_noise_multiplier), int(c.local_steps),
                                                     int(self.taken[u]), float(c.local_delta), c.accountant,
                                                     int(w))}
                           for u, w in zip(members, warm)]
        report.update({"run": self.run_token, "privacy": c.privacy, "schema": self.schema.hash})
        write_atomic(self.state_dir / "local_privacy.json", json.dumps(report, indent=1))


def _message_schema(content: RecordDict | None) -> tuple[PublicSchema | None, np.ndarray | None, str | None]:
    """(schema, h(c)) the message carries, if any, and the schema hash of the round."""
    if content is None:
        return None, None, None
    want = content.config_records[CONFIG].get(SCHEMA_HASH) if CONFIG in content.config_records else None
    if SCHEMA in content.config_records and CONTENT in content.array_records:
        schema = PublicSchema.from_json(str(content.config_records[SCHEMA][SCHEMA_JSON]))
        item_h = from_record(content.array_records[CONTENT])[ITEM_VECTORS]
        if content_digest(item_h) != schema.content_digest:
            raise SchemaMismatch("the item vectors h(c) received do not match the schema's digest")
        return schema, item_h, want
    return None, None, want


def _stored_schema(context: Context, state_dir: Path | None) -> tuple[PublicSchema | None, np.ndarray | None]:
    if SCHEMA in context.state.config_records and CONTENT in context.state.array_records:
        return (PublicSchema.from_json(str(context.state.config_records[SCHEMA][SCHEMA_JSON])),
                from_record(context.state.array_records[CONTENT])[ITEM_VECTORS])
    if state_dir is not None and (state_dir / SCHEMA_FILE).is_file() and (state_dir / CONTENT_FILE).is_file():
        try:
            with np.load(state_dir / CONTENT_FILE, allow_pickle=False) as f:
                return PublicSchema.read(state_dir / SCHEMA_FILE), f["item_h"]
        except (OSError, KeyError, ValueError, SchemaMismatch):
            return None, None
    return None, None


def _state_dir(cfg: Config, nc) -> Path | None:
    if "data-dir" in nc:  # a device: its own state directory
        return Path(str(nc.get("state-dir", Path(str(nc["data-dir"])) / ".fedctx-state")))
    if cfg.run_dir:  # a simulated device keeps its state under the run directory, as a real one does
        return Path(cfg.run_dir) / DEVICES_DIR / f"node-{int(nc.get('partition-id', 0))}"
    return None


def _saved_state(context: Context, state_dir: Path | None, user_keys: np.ndarray, dim: int,
                 round_: int | None, token: str = "") -> dict:
    """theta [U, dim], ready [U], taken [U], warmed [U], round and run_token of the node's users. With a
    state-dir (a device, or a simulated node of a run with a run-dir) the state-dir is the truth, matched by
    user key (users new to the data start cold, the others keep theirs; `fedctx device record` may have
    refreshed some); a state ahead of the training round `round_` (a resumed run) is replaced by the snapshot of
    the round before (round numbers of another run, `token`, do not count). Without one, the Flower Context."""
    n = len(user_keys)
    out = {"theta": np.zeros((n, dim), np.float32), "ready": np.zeros(n, bool), "taken": np.zeros(n, np.int64),
           "warmed": np.zeros(n, np.int64), "round": 0, "run_token": ""}
    if state_dir is None:
        if NODE_STATE in context.state.array_records:
            saved = from_record(context.state.array_records[NODE_STATE])
            out.update(theta=saved["theta"].copy(), ready=saved["ready"].astype(bool),
                       taken=saved["taken"].astype(np.int64), warmed=saved["warmed"].astype(np.int64),
                       round=int(saved["round"][0]), run_token=str(context.state.config_records[NODE_RUN][NODE_RUN_TOKEN]))
        return out
    released: dict[str, np.ndarray] = {}  # the newest state's counts when a resumed run goes back to a snapshot
    for candidate in (state_dir / NODE_STATE_FILE, state_dir / f"checkpoint-{(round_ or 1) - 1}.npz"):
        if not candidate.is_file():
            continue
        with np.load(candidate, allow_pickle=False) as f:
            at = int(f["round"]) if "round" in f.files else 0
            same_run = not token or ("run_token" in f.files and str(f["run_token"]) in ("", token))
            pos = pd.Index(f["user_keys"].astype(str)).get_indexer(user_keys)
            hit = pos >= 0
            if round_ is not None and at >= round_ and same_run:
                # ahead of this round of the same run: a resumed run goes back to the snapshot for theta_u, but
                # the releases made since stay counted (a participation count only grows)
                released = {key: np.where(hit, f[key][np.maximum(pos, 0)], 0) for key in ("taken", "warmed")
                            if key in f.files}
                continue
            if f["theta"].shape[1] != dim:
                break
            for key in ("theta", "ready", "taken", "warmed"):
                if key in f.files:
                    out[key][hit] = f[key][pos[hit]]
            out["round"] = at
            out["run_token"] = str(f["run_token"]) if "run_token" in f.files else ""
            break
    for key, counts in released.items():
        out[key] = np.maximum(out[key], counts.astype(np.int64))
    return out


def node_for(context: Context, content: RecordDict | None = None, training: bool = False) -> Node:
    """Build the node from Flower's run config (settings), node config (where its data and state live), its
    saved state and the message `content` (which brings h(c) and the schema to a node that lacks them).

    Raises SchemaMismatch when the node holds no content for the round's schema: the server then sends it
    with the node's next message."""
    cfg = config_from_mapping(context.run_config)
    nc = context.node_config
    state_dir = _state_dir(cfg, nc)
    schema, item_h, want = _message_schema(content)
    received = schema is not None
    if schema is None:
        schema, item_h = _stored_schema(context, state_dir)
    if schema is None:
        raise SchemaMismatch("this node holds no item vectors h(c) and no schema yet (it joined late or restarted "
                             "without its state); the server sends them with its next message")
    if want is not None and schema.hash != want:
        raise SchemaMismatch(f"this node holds schema {schema.hash[:12]}, the server's round uses {str(want)[:12]}; "
                             f"the server sends its schema with the next message")
    if "data-dir" in nc:  # a device (or any node with its own local store)
        store = build_store(str(nc["data-dir"]), 0, 1, cfg.use_context, schema, cache=state_dir)
    else:  # simulation: a shard of the run's dataset
        store = _shard(str(resolve_dataset(cfg)), int(nc.get("partition-id", 0)), int(nc.get("num-partitions", 1)),
                       cfg.use_context, schema.to_json())
    round_ = int(content.config_records[CONFIG][SERVER_ROUND]) if training and content is not None else None
    token = str(content.config_records[CONFIG].get(RUN_TOKEN, "")) if content is not None and \
        CONFIG in content.config_records else ""
    saved = _saved_state(context, state_dir, store.user_keys, cfg.dim, round_, token)
    at = saved["round"]
    if token and saved["run_token"] and token != saved["run_token"]:  # another run: its own privacy counts
        saved["taken"][:], saved["warmed"][:] = 0, 0
        if state_dir is not None and (state_dir / "local_privacy.json").is_file():
            # a move of the whole file, not a write: the last run's report is kept under its run's name
            os.replace(state_dir / "local_privacy.json", state_dir / f"local_privacy-{saved['run_token']}.json")
    node = Node(cfg=cfg, store=store, theta=saved["theta"], ready=saved["ready"], taken=saved["taken"],
                item_h=item_h, schema=schema, state_dir=state_dir,
                data_dir=Path(str(nc["data-dir"] if "data-dir" in nc else resolve_dataset(cfg))), round=at,
                warmed=saved["warmed"], run_token=token or saved["run_token"], simulated="data-dir" not in nc,
                content_received=received)
    if round_ is not None and round_ > 1 and cfg.checkpoint_every and (round_ - 1) % cfg.checkpoint_every == 0 \
            and at == round_ - 1:
        node.snapshot(round_ - 1)
    return node
