"""Split one dataset into a federation on one machine: a server directory that holds only the public catalogue
and the context declaration, and one dataset directory per device with its own users' engagements.

    OUT/server/dataset.toml   the catalogue (no interactions file) and the complete context declaration
    OUT/server/items.<fmt>
    OUT/device-<k>/dataset.toml, interactions.<fmt>, items.<fmt>   device k's users (contiguous blocks of
                                                                   the sorted user ids)
    OUT/federation.json       devices, users per device, and N (`population`, for central DP)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from common.data.context import ContextEncoder
from common.data.loader import DatasetSpec, load_dataset, read_spec
from common.io import atomic_output_dir, write_dataset_toml, write_table

__all__ = ["partition_dataset", "declaration_columns"]


def declaration_columns(encoder) -> dict[str, dict]:
    """A context encoder's columns as dataset.toml entries with everything fixed (values, mean/std, period)."""
    out: dict[str, dict] = {}
    for c in encoder.column_declarations():
        if c.kind == "categorical":
            out[c.name] = {"kind": "categorical", "values": list(c.values or ())}
        elif c.kind == "numeric":
            out[c.name] = {"kind": "numeric", "mean": float(c.mean), "std": float(c.std)}
        else:
            out[c.name] = {"kind": "cyclic", "period": float(c.period)}
    return out


def _read_raw(path: Path) -> pd.DataFrame:
    if path.suffix.lower() == ".parquet":
        return pq.read_table(path).to_pandas()
    # every column as text, so that ids and values are written back exactly as they were
    table = pa_csv.read_csv(path, convert_options=pa_csv.ConvertOptions(
        column_types={n: "string" for n in pa_csv.read_csv(path).column_names}))
    return table.to_pandas()


def _toml_fields(spec: DatasetSpec, columns: dict[str, dict], fitted: bool) -> dict:
    return {"time_column": spec.time_column, "label_column": spec.label_column, "min_label": spec.min_label,
            "context_columns": columns, "from_time": list(spec.from_time), "harmonics": spec.harmonics,
            "fitted": fitted}


def partition_dataset(src: Path, out: Path, devices: int, overwrite: bool = False) -> dict:
    """Write OUT (see the module docstring) atomically; returns federation.json's content."""
    if devices < 1:
        raise ValueError(f"devices must be >= 1, got {devices}")
    spec = read_spec(src)
    ds = load_dataset(src)  # validates everything, and fits the declaration the way a simulation does
    columns = declaration_columns(ds.context_encoder)
    try:  # complete in the source: public; else fitted on the rows, and marked so (refused under a privacy mode)
        ContextEncoder.declared(spec.context_columns, spec.from_time, spec.harmonics)
        fitted = spec.fitted
    except ValueError:
        fitted = True
    raw = _read_raw(spec.interactions_file)
    users = np.asarray(ds.user_ids).astype(str)  # users that survive cleaning, sorted
    if devices > len(users):
        raise ValueError(f"devices: {devices} devices for {len(users)} users; give each device at least one user")
    blocks = np.array_split(users, devices)
    fmt = spec.interactions_file.suffix.lstrip(".").lower()
    items_name = f"items{spec.items_file.suffix.lower()}"
    federation = {"population": int(len(users)), "devices": []}
    with atomic_output_dir(Path(out), overwrite=overwrite) as tmp:
        server = tmp / "server"
        server.mkdir()
        shutil.copyfile(spec.items_file, server / items_name)
        write_dataset_toml(server, name=f"{spec.name}-catalogue", interactions=None, items=items_name,
                           **_toml_fields(spec, columns, fitted))
        user_col = raw["user_id"].astype(str)
        for k, block in enumerate(blocks):
            d = tmp / f"device-{k}"
            d.mkdir()
            write_table(raw[user_col.isin(set(block))], d / f"interactions.{fmt}")
            shutil.copyfile(spec.items_file, d / items_name)
            write_dataset_toml(d, name=f"{spec.name}-device-{k}", interactions=f"interactions.{fmt}",
                               items=items_name, **_toml_fields(spec, columns, fitted))
            federation["devices"].append({"dir": f"device-{k}", "users": int(len(block))})
        (tmp / "federation.json").write_text(json.dumps(federation, indent=2))
    return federation
