"""A device's state directory as a product, offline: recommend from it, record feedback into it.

The state directory is written by the node during rounds (client/node.py): schema.json and content.npz (the
public schema and h(c)), global_model.npz (the latest global model received), node-state.npz (theta_u by user
key), device.json (the run's settings and the device's data-dir). Recorded engagements are appended to the
device's own interactions file, so the next round trains on them.

theta_u after feedback: a few steps on the user's own history against the stored global model
(`client.device.refresh_theta`). Without local DP the refreshed theta_u replaces the stored one (training goes on
from it). Under local DP a non-private refresh must not shape what the device later sends, so it is kept apart
in serving.npz and used for recommendations only, until the next round replaces the training theta_u.
"""

from __future__ import annotations

import dataclasses
import json
import time as _time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from client.state_files import CONTENT_FILE, DATA_INDEX_FILE, DEVICE_FILE, GLOBAL_MODEL_FILE, NODE_STATE_FILE
from common.config import Config, config_from_mapping
from common.data.spec import DataError, read_spec
from common.errors import FedctxError
from common.io import atomic_file, savez_atomic, write_atomic
from common.data.schema import SCHEMA_FILE, PublicSchema, SchemaMismatch
from common.model.scoring import SECONDS_PER_DAY, ials_solve_history, item_side_np, warm_start_theta

__all__ = ["DeviceError", "DeviceState", "DataIndex", "SERVING_FILE", "data_index", "catalogue_titles"]

SERVING_FILE = "serving.npz"  # theta_u refreshed by feedback under local DP: for recommendations only


class DeviceError(FedctxError, ValueError):
    """A device command cannot run: the message says what is missing and how to fix it."""


#: version of the data index's layout (part of its key: an index of another layout is rebuilt)
_INDEX_VERSION = 1


@dataclass(frozen=True)
class DataIndex:
    """A device's data as `DeviceState.history` reads it, for every user at once: one row per engagement of the
    interactions file (file order) that is at least min-label and whose item is in the schema's catalogue.
    users [n] str; items [n] int64 catalogue indices; ctx [n, schema context dim] float32 (encoded with the
    schema); time [n] int64 Unix seconds (0 without a time column); titles [n_items] display names from the
    device's items file, or None when it has none that matches the catalogue."""

    users: np.ndarray
    items: np.ndarray
    ctx: np.ndarray
    time: np.ndarray
    titles: tuple[str, ...] | None

    @classmethod
    def empty(cls, context_dim: int) -> "DataIndex":
        return cls(np.zeros(0, str), np.zeros(0, np.int64), np.zeros((0, context_dim), np.float32),
                   np.zeros(0, np.int64), None)


def _stamp(path: Path) -> list:
    """[path, size, mtime (ns), inode] of a file (`device record` replaces the file: its inode changes too), or
    [path, None] if there is none."""
    try:
        s = path.stat()
    except FileNotFoundError:
        return [str(path), None]
    return [str(path), s.st_size, s.st_mtime_ns, s.st_ino]


def _index_key(schema: PublicSchema, data_dir: Path) -> str | None:
    """What the index was built from: the schema's hash and the stamps of dataset.toml, the interactions and the
    items file (a device without an items file has no titles). None if dataset.toml cannot be read or a file
    cannot be looked at (the build then names the problem)."""
    try:
        spec = read_spec(data_dir)
        stamp = [_stamp(f) for f in (Path(data_dir) / "dataset.toml", spec.interactions_file, spec.items_file)]
    except (DataError, OSError):
        return None
    return json.dumps({"v": _INDEX_VERSION, "schema": schema.hash, "files": stamp})


def _read_index(path: Path, key: str) -> DataIndex | None:
    """The index stored at path if it was built under `key`, else None (stale, absent or unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            titles = json.loads(f["titles"].tobytes().decode()) if f["titles"].size else None
            return DataIndex(f["users"], f["items"], f["ctx"], f["time"], None if titles is None else tuple(titles))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _build_index(schema: PublicSchema, data_dir: Path) -> DataIndex:
    """Read the device's data files (pandas and pyarrow) into a DataIndex (see there)."""
    import pandas as pd

    from common.data.loader import _read_interactions, load_catalogue

    spec = dataclasses.replace(read_spec(data_dir), context_columns=schema.context.columns,
                               from_time=schema.context.from_time)
    raw = _read_interactions(spec)
    keep = np.ones(len(raw.user), bool)
    if raw.label is not None and spec.min_label is not None:
        keep &= raw.label >= spec.min_label
    items = pd.Index(schema.item_ids).get_indexer(raw.item[keep].astype(str))
    known = items >= 0
    time = (np.nan_to_num(raw.time[keep]).astype(np.int64) if raw.time is not None
            else np.zeros(int(keep.sum()), np.int64))
    ctx = schema.context.transform(raw.context[keep].reset_index(drop=True), time if spec.time_column else None)
    users = np.asarray(raw.user[keep].astype(str).to_numpy()[known], dtype=str)
    try:
        _, ids, texts = load_catalogue(data_dir)
        titles = (tuple(t.split("|")[0].strip() or i for i, t in zip(ids, texts))
                  if list(ids) == list(schema.item_ids) else None)
    except (DataError, OSError):
        titles = None
    return DataIndex(users, items[known].astype(np.int64), ctx[known], time[known], titles)


def data_index(state_dir: Path, schema: PublicSchema, data_dir: Path | None, keep: bool = True) -> DataIndex:
    """The device's DataIndex: the one kept in state_dir/DATA_INDEX_FILE while the data files and the schema are
    those it was built from (numpy only: no pandas), else built again from the files and, with keep, kept (when
    the state directory can be written; the answer does not depend on it). keep=False for a simulated device,
    whose data is the whole run's dataset: each of them would hold a copy."""
    if data_dir is None:
        return DataIndex.empty(schema.context.dim)
    path = Path(state_dir) / DATA_INDEX_FILE
    key = _index_key(schema, Path(data_dir))
    index = _read_index(path, key) if key is not None and keep else None
    if index is None:
        index = _build_index(schema, Path(data_dir))
        if key is not None and keep:  # stamped before the read: a change while reading makes it stale, not wrong
            titles = np.frombuffer(json.dumps(index.titles).encode(), np.uint8) if index.titles is not None \
                else np.zeros(0, np.uint8)
            try:
                savez_atomic(path, dict(key=np.array(key), users=index.users, items=index.items, ctx=index.ctx,
                                        time=index.time, titles=titles), private=True)
            except OSError:
                pass
    return index


def _damaged(path: Path, exc: BaseException) -> DeviceError:
    """A file of the state directory that cannot be read as what the node wrote."""
    return DeviceError(f"{path}: damaged, or not written by a fedctx node ({type(exc).__name__}: {exc}). Fix: "
                       f"restore it from a copy, or delete it and let the SuperNode take part in one more round "
                       f"with this state-dir (it writes the file again).")


@dataclass
class DeviceState:
    """What a device holds (see the module docstring). theta [U, dim] rows follow user_keys [U]."""

    state_dir: Path
    cfg: Config
    data_dir: Path | None
    schema: PublicSchema
    item_h: np.ndarray
    params: dict[str, np.ndarray]
    user_keys: np.ndarray
    theta: np.ndarray
    ready: np.ndarray
    taken: np.ndarray
    round: int
    simulated: bool = False
    _index: DataIndex | None = field(default=None, repr=False, compare=False)

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, state_dir: Path) -> "DeviceState":
        d = Path(state_dir)
        missing = [f for f in (SCHEMA_FILE, CONTENT_FILE, GLOBAL_MODEL_FILE, NODE_STATE_FILE, DEVICE_FILE)
                   if not (d / f).is_file()]
        if missing:
            raise DeviceError(f"{d}: not a device state directory with a global model (missing {', '.join(missing)}). "
                              f"Fix: pass the state-dir of a SuperNode (--node-config \"state-dir='...'\") that has "
                              f"taken part in at least one round.")
        try:
            info = json.loads((d / DEVICE_FILE).read_text())
            cfg = config_from_mapping(info["settings"])
            data_dir = Path(info["data-dir"]) if info.get("data-dir") else None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:  # ConfigError is a ValueError
            raise _damaged(d / DEVICE_FILE, exc) from None
        try:
            schema = PublicSchema.read(d / SCHEMA_FILE)
        except SchemaMismatch as exc:
            raise _damaged(d / SCHEMA_FILE, exc) from None
        try:
            with np.load(d / CONTENT_FILE, allow_pickle=False) as f:
                item_h = f["item_h"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise _damaged(d / CONTENT_FILE, exc) from None
        try:
            with np.load(d / GLOBAL_MODEL_FILE, allow_pickle=False) as f:
                params = {k.replace(".", "/"): f[k] for k in f.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise _damaged(d / GLOBAL_MODEL_FILE, exc) from None
        try:
            with np.load(d / NODE_STATE_FILE, allow_pickle=False) as f:
                keys, theta = f["user_keys"].astype(str), f["theta"]
                ready, taken = f["ready"].astype(bool), f["taken"].astype(np.int64)
                round_ = int(f["round"]) if "round" in f.files else 0
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise _damaged(d / NODE_STATE_FILE, exc) from None
        return cls(d, cfg, data_dir, schema, item_h, params, keys, theta, ready, taken, round_,
                   bool(info.get("simulated", False)))

    # -- the users it holds ---------------------------------------------------------------------
    def knows(self, user: str) -> bool:
        """True if the device holds `user`: a theta_u (trained or refreshed) or an engagement in its data."""
        return bool(np.any(self.user_keys == str(user))) or str(user) in self._serving() or len(self.history(user)[0]) > 0

    def check_user(self, user: str, new_user: bool = False) -> None:
        """Refuse a user id the device does not hold (a typo must not read as a cold start) unless new_user; and
        new_user for an id it does hold. The message names how many users it holds and one of their ids."""
        known = self.knows(user)
        if known and new_user:
            raise DeviceError(f"user {user!r}: --new-user asks for a user this device does not hold, but it holds "
                              f"{user!r}. Fix: leave out --new-user.")
        if not known and not new_user:
            held = sorted(set(self.user_keys.tolist()) | set(self._serving()))
            holds = f"it holds {len(held)} users, e.g. {held[0]!r}" if held else "it holds no users yet"
            raise DeviceError(f"user {user!r}: not on this device ({holds}; ids are compared as text). Fix: check "
                              f"the id, or pass --new-user for a user new to this device (no history: no personal "
                              f"term).")

    # -- what the user did, and the context now -------------------------------------------------
    def data_index(self) -> DataIndex:
        """The device's data, indexed (`data_index`); read once per DeviceState, again after a write."""
        if self._index is None:
            self._index = data_index(self.state_dir, self.schema, self.data_dir, keep=not self.simulated)
        return self._index

    def history(self, user: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The user's engagements in the device's data: item indices [n], contexts [n, context_dim] encoded with
        the schema, times [n] (Unix seconds; 0 without a time column). Rows below min-label and unknown items
        are left out."""
        index = self.data_index()
        rows = np.flatnonzero(index.users == str(user))
        return index.items[rows], index.ctx[rows][:, : self.context_dim], index.time[rows]

    @property
    def context_dim(self) -> int:
        return int(np.shape(self.params["context/shift"])[0])

    def context_vector(self, pairs: dict[str, str], time: int | None = None) -> np.ndarray:
        """x [context_dim] of a context given as column=value pairs (and a Unix time for time features)."""
        columns = {c.name: c for c in self.schema.context.columns}
        unknown = sorted(set(pairs) - set(columns))
        if unknown:
            raise DeviceError(f"context: {', '.join(unknown)} not in the schema's context columns "
                              f"({', '.join(columns) or 'none'}). Fix: use --context column=value with those names.")
        frame: dict[str, list] = {name: [pairs.get(name)] for name in columns}  # one row (no pandas)
        for name, c in columns.items():
            if c.kind != "categorical" and pairs.get(name) is not None:
                try:
                    frame[name] = [float(pairs[name])]
                except ValueError:
                    raise DeviceError(f"context: {name} is {c.kind}; {pairs[name]!r} is not a number.") from None
        t = np.array([int(_time.time()) if time is None else int(time)], np.int64)
        x = self.schema.context.transform(frame, t if self.schema.context.from_time else None)[0]
        return x[: self.context_dim]

    def theta_for(self, user: str) -> tuple[np.ndarray, str]:
        """(theta_u [dim], where it came from): the refreshed serving copy, the trained one, or a warm start from
        the user's history under the stored global model (a user new to this device)."""
        if self.cfg.ials:  # theta_u is a function of the history and the global model: solved afresh
            items, ctx, _ = self.history(user)
            if len(items):
                theta = ials_solve_history(self.params, self.item_h, items, ctx, self.cfg.unobserved_weight,
                                           self.cfg.l2)
                return theta, f"solved from the history under the global model of round {self.round}"
        serving = self._serving()
        if user in serving:
            return serving[user], "refreshed by recorded feedback"
        pos = np.flatnonzero(self.user_keys == user)
        if len(pos) and self.ready[pos[0]]:
            return self.theta[pos[0]].copy(), f"trained (round {self.round})"
        items, _, times = self.history(user)
        if len(items) == 0:
            return np.zeros(self.cfg.dim, np.float32), "new user without history (no personal term)"
        phi, _ = item_side_np(self.params, self.item_h)
        age = ((times.max() - times) / SECONDS_PER_DAY).astype(np.float32)
        return warm_start_theta(phi[items], age, self.cfg.half_life_days), "warm start from history"

    # -- writing --------------------------------------------------------------------------------
    def store_theta(self, user: str, theta_u: np.ndarray) -> str:
        """Keep a refreshed theta_u: in node-state.npz without local DP, else in serving.npz (see the module)."""
        if self.cfg.local_dp:
            serving = {**self._serving(), user: theta_u}
            savez_atomic(self.state_dir / SERVING_FILE, dict(
                round=np.array(self.round), users=np.array(list(serving), str),
                theta=np.stack(list(serving.values())).astype(np.float32)), private=True)
            return "serving copy (local DP: the trained theta_u is left as it is)"
        pos = np.flatnonzero(self.user_keys == user)
        if len(pos):
            self.theta[pos[0]], self.ready[pos[0]] = theta_u, True
        else:
            self.user_keys = np.append(self.user_keys, user)
            self.theta = np.vstack([self.theta, theta_u[None]]).astype(np.float32)
            self.ready = np.append(self.ready, True)
            self.taken = np.append(self.taken, 0)
        with np.load(self.state_dir / NODE_STATE_FILE) as f:
            extra = {k: f[k] for k in f.files if k not in ("user_keys", "theta", "ready", "taken")}
        savez_atomic(self.state_dir / NODE_STATE_FILE, dict(
            user_keys=self.user_keys, theta=self.theta, ready=self.ready, taken=self.taken, **extra), private=True)
        return "node-state (training goes on from it)"

    def _serving(self) -> dict[str, np.ndarray]:
        path = self.state_dir / SERVING_FILE
        if not path.is_file():
            return {}
        with np.load(path) as f:
            if int(f["round"]) != self.round:  # a round trained theta_u since: the serving copy is stale
                return {}
            return {str(u): t for u, t in zip(f["users"], f["theta"])}

    def append_engagement(self, user: str, item: str, pairs: dict[str, str], time: int | None,
                          label: float | None) -> dict:
        """Append one row to the device's interactions file atomically (a new file beside it, then renamed);
        returns the row. Rows of other users are untouched."""
        import pandas as pd
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self.data_dir is None or self.simulated:
            raise DeviceError(f"{self.state_dir} is a simulated device: its users' data is the run's dataset, shared "
                              f"by every simulated device. Fix: record into a real device's state-dir (a SuperNode "
                              f"started with --node-config \"data-dir='...' state-dir='...'\").")
        if str(item) not in set(self.schema.item_ids):
            raise DeviceError(f"item {item!r} is not in the catalogue of the schema ({self.schema.n_items} items). "
                              f"Fix: use an item_id of the catalogue (new items reach devices with a new schema).")
        self.context_vector(pairs, time)  # validates the names and numbers
        spec = read_spec(self.data_dir)
        row: dict = {"user_id": str(user), "item_id": str(item)}
        if spec.time_column:
            row[spec.time_column] = int(_time.time()) if time is None else int(time)
        if spec.label_column:
            row[spec.label_column] = float(label if label is not None else (spec.min_label or 1.0))
        for c in self.schema.context.columns:
            value = pairs.get(c.name)
            row[c.name] = None if value is None else (value if c.kind == "categorical" else float(value))
        path = spec.interactions_file
        if path.suffix.lower() == ".parquet":
            table = pq.read_table(path)
            new = pa.Table.from_pylist([{k: row.get(k) for k in table.column_names}])
            table = pa.concat_tables([table, new.cast(table.schema)])
            with atomic_file(path, private=True) as tmp:
                pq.write_table(table, tmp)
        else:
            header = pd.read_csv(path, nrows=0).columns
            line = pd.DataFrame([{k: row.get(k) for k in header}]).to_csv(index=False, header=False)
            body = path.read_bytes()
            sep = b"" if body.endswith(b"\n") or not body else b"\n"
            write_atomic(path, body + sep + line.encode(), private=True)
        self._index = None  # the data changed: read (and index) it again
        return row


def catalogue_titles(state: DeviceState) -> list[str] | None:
    """Item texts from the device's copy of the catalogue, for display (None if it has none)."""
    titles = state.data_index().titles
    return None if titles is None else list(titles)
