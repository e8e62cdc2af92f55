"""The public schema: what the server builds from public inputs only, and how nodes encode their data with it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from common.config import Config
from common.data import DataError, load_dataset, read_spec
from common.partition import partition_dataset
from common.schema import PublicSchema, SchemaMismatch, build_schema, declared_context


@pytest.fixture(scope="module")
def federation(small_synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("fed") / "fed"
    return out, partition_dataset(small_synthetic, out, devices=3)


def _schema(ds, item_h=None, content=None):
    h = np.arange(ds.n_items * 2, dtype=np.float32).reshape(-1, 2) if item_h is None else item_h
    return build_schema(ds.item_ids, ds.context_encoder, content or {"encoder": "test"}, h)


def test_the_hash_covers_every_part_and_a_tampered_schema_is_refused(small_synthetic):
    ds = load_dataset(small_synthetic)
    base = _schema(ds)
    assert PublicSchema.from_json(base.to_json()) == base and PublicSchema.from_json(base.to_json()).hash == base.hash
    h = np.arange(ds.n_items * 2, dtype=np.float32).reshape(-1, 2)
    others = [_schema(ds, h + 1e-3), _schema(ds, content={"encoder": "other"}),
              build_schema(ds.item_ids[::-1], ds.context_encoder, {"encoder": "test"}, h)]
    assert len({base.hash, *(o.hash for o in others)}) == 4
    doc = json.loads(base.to_json())
    doc["item_ids"][0] = "swapped"
    with pytest.raises(SchemaMismatch, match="does not match"):
        PublicSchema.from_json(json.dumps(doc))


def test_the_server_schema_needs_a_complete_declaration(small_synthetic, federation, tmp_path):
    with pytest.raises(DataError, match="values") as err:  # the generator's dataset.toml declares kinds only
        declared_context(read_spec(small_synthetic))
    assert "fedctx data declare" in str(err.value)
    out, _ = federation
    declared = declared_context(read_spec(out / "server", catalogue_only=True))  # partition fixes everything
    assert declared == load_dataset(small_synthetic).context_encoder
    path = tmp_path / "context.json"
    path.write_text(json.dumps(declared.to_dict()))
    assert declared_context(read_spec(small_synthetic), str(path)) == declared
    path.write_text(json.dumps({**declared.to_dict(), "from_time": []}))
    with pytest.raises(DataError, match="declare the columns"):
        declared_context(read_spec(small_synthetic), str(path))


def test_a_device_encodes_with_the_schema_never_with_its_own_fit(small_synthetic, tmp_path):
    """A device whose rows show one `device` value gets the federation's full context width and column order;
    values and items outside the schema are dropped or zeroed and counted."""
    full = load_dataset(small_synthetic)
    schema = _schema(full)
    one = tmp_path / "one"
    shutil.copytree(small_synthetic, one)
    rows = pd.read_parquet(one / "interactions.parquet")
    keep = rows[rows["device"] == "mobile"].copy()
    busiest = keep.index[keep["user_id"] == keep["user_id"].value_counts().index[0]]
    assert len(busiest) >= 5  # the changed rows' user keeps enough engagements to stay
    keep.loc[busiest[0], "device"] = "smartwatch"  # not in the declared vocabulary
    keep.loc[busiest[1], "item_id"] = "no-such-item"
    keep.to_parquet(one / "interactions.parquet", index=False)
    own_fit = load_dataset(one)
    assert own_fit.context_dim < full.context_dim  # what each device used to do: 11 features instead of 13
    ds = load_dataset(one, schema=schema)
    assert ds.context_names == full.context_names and ds.context_dim == full.context_dim
    assert ds.cleaning["unknown_context_values"] == 1 and ds.cleaning["unknown_items"] == 1
    col = list(full.context_names).index("device=mobile")
    assert ds.train.context[:, col].sum() > 0
    other = [i for i, n in enumerate(full.context_names) if n.startswith("device=") and i != col]
    assert ds.train.context[:, other].sum() == 0
    assert list(ds.item_ids) == list(full.item_ids)  # the catalogue's item index, not the device's


def test_the_server_never_opens_an_interactions_file(federation, small_synthetic, tmp_path, monkeypatch):
    """public_inputs (all the server reads) works on a catalogue directory without interactions, and on a
    dataset whose interactions file is garbage; reading interactions at all is made to fail."""
    import common.data
    from server.app import public_inputs

    out, fed = federation
    assert not any(p.name.startswith("interactions") for p in (out / "server").iterdir())

    def forbidden(*args, **kwargs):
        raise AssertionError("the server read an interactions file")

    monkeypatch.setattr(common.data, "_read_interactions", forbidden)
    cfg = Config(data=str(out / "server"), text_dim=8, text_epochs=1)
    schema, item_h = public_inputs(cfg)
    assert schema.n_items == item_h.shape[0] == 120 and schema.context_dim == 13
    broken = tmp_path / "broken"
    shutil.copytree(small_synthetic, broken)
    (broken / "interactions.parquet").write_bytes(b"not parquet at all")
    decl = tmp_path / "context.json"
    decl.write_text(json.dumps(schema.context.to_dict()))
    again, _ = public_inputs(Config(data=str(broken), text_dim=8, text_epochs=1, context_declaration=str(decl)))
    assert again.hash == schema.hash  # same public inputs, same schema
    assert fed["population"] == 24 and len(fed["devices"]) == 3
