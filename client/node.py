"""On-node state and work: the local user store, theta_u persistence, local training, evaluation."""

from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, Context, RecordDict

from common.config import Config, config_from_mapping
from common.datasets import load_cached, resolve_dataset
from common.federated import (UserStore, dp_init_theta, evaluate_users, init_theta, item_representations,
                              poisson_sample, training_members, user_updates)
from common.model import DENSE_NAMES, ITEM_NAMES
from common.params import from_record, to_record
from common.privacy import SecureGaussian, clip_factors, local_epsilon, local_report

__all__ = ["Node", "node_for", "build_store"]


@functools.lru_cache(maxsize=16)
def build_store(data_dir: str, partition: int, partitions: int, use_context: bool) -> UserStore:
    """The users of one node: shard `partition` of `partitions` contiguous blocks of the dataset's users."""
    ds = load_cached(data_dir)
    users = np.array_split(np.arange(ds.n_users), partitions)[partition]
    return UserStore.from_prepared(ds, users, use_context=use_context)


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
    item_h: np.ndarray | None
    state_dir: Path | None = None

    # -- inputs from the server ---------------------------------------------------------------
    def _receive(self, content: RecordDict) -> dict[str, np.ndarray]:
        if "content" in content.array_records:
            self.item_h = from_record(content.array_records["content"])["item-vectors"]
        if self.item_h is None:
            raise RuntimeError("this node has no item vectors h(c) yet: the server sends them with the "
                               "first training round; start the node before the run begins.")
        params = from_record(content.array_records["arrays"])
        expected = set(DENSE_NAMES) | (set(ITEM_NAMES) if self.cfg.item_embedding else set())
        if set(params) != expected:
            raise ValueError(f"server sent parameters {sorted(params)}, this node expects {sorted(expected)}")
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

    # -- work ---------------------------------------------------------------------------------
    def train_round(self, content: RecordDict) -> tuple[ArrayRecord, dict[str, float | int]]:
        """Train this round's sampled users; return the SUM of their shared-parameter updates."""
        params = self._receive(content)
        conf = content.config_records["config"]
        round_ = int(conf["server-round"])
        sampled = np.flatnonzero(poisson_sample(self.store.user_keys, float(conf["sample-rate"]),
                                                int(conf["sampling-seed"]), round_) & self.members)
        if len(sampled) == 0:
            zero = {k: np.zeros_like(v) for k, v in params.items()}
            return to_record(zero), self._train_metrics(0, 0, 0.0)
        self._warm_start(sampled, params)
        self.taken[sampled] += 1
        updates, new_theta = user_updates(params, self.theta[sampled], self.store, sampled, self.item_h,
                                          self.cfg, round_)
        self.theta[sampled] = new_theta
        shapes = {k: v.shape for k, v in params.items()}
        scale, extra = None, {}
        if self.cfg.central_dp:  # each user's whole update is clipped (DP-FedAvg)
            clip = float(conf.get("clip-norm", self.cfg.clip_norm))  # the server's C of this round
            norms = updates.norms()
            scale = clip_factors(norms, clip)
            if self.cfg.adaptive_clip:  # sum of 1[norm <= C] - 1/2 (sensitivity 1/2; the server adds the noise)
                extra["clip-shifted-count"] = float((norms <= clip).sum() - 0.5 * len(norms))
        total = updates.total(shapes, scale)
        return to_record({k: total[k] for k in params}), {
            **self._train_metrics(len(sampled), int(updates.n_examples.sum()), float(updates.loss.sum())), **extra}

    def _train_metrics(self, users: int, examples: int, loss_sum: float) -> dict[str, float | int]:
        """The scalars a training reply carries. Under local DP only the user count: the example count and the
        loss are exact functions of the users' engagements, which the example-level guarantee must cover."""
        if self.cfg.local_dp:
            return {"num-users": int(users)}
        return {"num-users": int(users), "num-examples": int(examples), "train-loss-sum": float(loss_sum)}

    @property
    def members(self) -> np.ndarray:
        """[U] users that take part in training (all, unless audit-fraction holds some out)."""
        return _members(self.store, self.cfg.audit_fraction, self.cfg.seed)

    def evaluate(self, content: RecordDict) -> dict[str, float | int]:
        """Mean HR/NDCG@k of this node's training members on validation and test (full ranking and sampled)."""
        params = self._receive(content)
        users = np.flatnonzero(self.members)
        self._warm_start(users, params)
        k = self.cfg.top_k
        out: dict[str, float | int] = {"num-users": int(len(users))}
        for split in ("val", "test"):
            m = evaluate_users(params, self.theta, self.store, self.item_h, self.cfg, split, users)
            for name, key in (("hr", f"hr@{k}"), ("ndcg", f"ndcg@{k}"), ("hr-sampled", f"hr@{k}-sampled"),
                              ("ndcg-sampled", f"ndcg@{k}-sampled")):
                out[f"{split}-{key}"] = float(m[name].mean()) if len(users) else 0.0
        return out

    # -- persistence ----------------------------------------------------------------------------
    def save(self, context: Context) -> None:
        """Persist theta_u: in the Flower Context (simulation) and, on a device, in state-dir."""
        context.state["theta"] = to_record({"theta": self.theta, "ready": self.ready.astype(np.float32),
                                            "taken": self.taken.astype(np.float32)})
        if self.item_h is not None:
            context.state["content"] = to_record({"item-vectors": self.item_h})
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.state_dir, suffix=".npz")
            os.close(fd)
            np.savez(tmp, theta=self.theta, ready=self.ready, taken=self.taken, user_keys=self.store.user_keys,
                     **({"item_h": self.item_h} if self.item_h is not None else {}))
            os.replace(tmp, self.state_dir / "node-state.npz")
            if self.cfg.privacy in ("local", "local+central"):
                self._write_local_privacy()

    def _write_local_privacy(self) -> None:
        """state-dir/local_privacy.json: each of this device's users' example-level epsilon, from the rounds
        it took part in (it stays on the device, like theta_u)."""
        c = self.cfg
        members = np.flatnonzero(self.members)
        warm = (self.ready[members] if c.local_dp_theta else np.zeros(len(members), bool)).astype(np.int64)
        report = local_report(self.taken[members], c.local_noise_multiplier, c.local_steps, c.local_delta,
                              c.local_clip_norm, c.local_denominator, c.accountant, c.local_dp_theta, warm)
        report["users"] = [{"user": str(self.store.user_keys[u]), "rounds": int(self.taken[u]),
                            "epsilon": local_epsilon(float(c.local_noise_multiplier), int(c.local_steps),
                                                     int(self.taken[u]), float(c.local_delta), c.accountant,
                                                     int(w))}
                           for u, w in zip(members, warm)]
        tmp = self.state_dir / f".local_privacy.json.tmp-{os.getpid()}"
        tmp.write_text(json.dumps(report, indent=1))
        os.replace(tmp, self.state_dir / "local_privacy.json")


def node_for(context: Context) -> Node:
    """Build the node from Flower's run config (settings) and node config (where its data lives)."""
    cfg = config_from_mapping(context.run_config)
    nc = context.node_config
    if "data-dir" in nc:  # a device (or any node with its own local store)
        store = build_store(str(nc["data-dir"]), 0, 1, cfg.use_context)
        state_dir = Path(str(nc.get("state-dir", Path(str(nc["data-dir"])) / ".fedctx-state")))
    else:  # simulation: a shard of the run's dataset
        store = build_store(str(resolve_dataset(cfg)), int(nc.get("partition-id", 0)),
                            int(nc.get("num-partitions", 1)), cfg.use_context)
        state_dir = None
    theta = np.zeros((store.n_users, cfg.dim), np.float32)
    ready = np.zeros(store.n_users, bool)
    taken = np.zeros(store.n_users, np.int64)
    item_h = None
    if "theta" in context.state.array_records:
        saved = from_record(context.state.array_records["theta"])
        theta, ready = saved["theta"].copy(), saved["ready"].astype(bool)
        taken = saved["taken"].astype(np.int64) if "taken" in saved else taken
    elif state_dir is not None and (state_dir / "node-state.npz").is_file():
        with np.load(state_dir / "node-state.npz") as f:
            if list(f["user_keys"]) == list(store.user_keys):
                theta, ready = f["theta"].copy(), f["ready"].astype(bool)
                taken = f["taken"].astype(np.int64) if "taken" in f else taken
                item_h = f["item_h"] if "item_h" in f else None
    if "content" in context.state.array_records:
        item_h = from_record(context.state.array_records["content"])["item-vectors"]
    return Node(cfg=cfg, store=store, theta=theta, ready=ready, taken=taken, item_h=item_h, state_dir=state_dir)
