"""The public schema: what the server builds from public inputs only, and how nodes encode their data with it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from common.config import Config
from common.data.context import DEFAULT_HARMONICS
from common.data.loader import DataError, load_dataset, read_spec
from common.data.partition import partition_dataset
from common.data.schema import PublicSchema, SchemaMismatch, build_schema, declared_context


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
    with pytest.raises(SchemaMismatch, match=r"^schema hash [0-9a-f]{64} does not match its content \([0-9a-f]{64}\)$"):
        PublicSchema.from_json(json.dumps(doc))


def test_the_server_schema_needs_a_complete_declaration(undeclared_synthetic, tmp_path):
    # this dataset.toml declares kinds only
    with pytest.raises(DataError, match=r"Found 'the context declaration is incomplete \(device: values\)'") as err:
        declared_context(read_spec(undeclared_synthetic))
    assert "fedctx data declare" in str(err.value)
    out = tmp_path / "fed"
    partition_dataset(undeclared_synthetic, out, devices=3)
    declared = declared_context(read_spec(out / "server", catalogue_only=True))  # partition fixes everything
    assert declared == load_dataset(undeclared_synthetic).context_encoder
    path = tmp_path / "context.json"
    path.write_text(json.dumps(declared.to_dict()))
    assert declared_context(read_spec(undeclared_synthetic), str(path)) == declared
    path.write_text(json.dumps({**declared.to_dict(), "from_time": []}))
    with pytest.raises(DataError, match="declare the columns"):
        declared_context(read_spec(undeclared_synthetic), str(path))


def test_a_device_encodes_with_the_schema_never_with_its_own_fit(undeclared_synthetic, tmp_path):
    """A device whose rows show one `device` value gets the federation's full context width and column order;
    values and items outside the schema are dropped or zeroed and counted."""
    full = load_dataset(undeclared_synthetic)
    schema = _schema(full)
    one = tmp_path / "one"
    shutil.copytree(undeclared_synthetic, one)
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
    import common.data.loader
    from server.app import public_inputs

    out, fed = federation
    assert not any(p.name.startswith("interactions") for p in (out / "server").iterdir())

    def forbidden(*args, **kwargs):
        raise AssertionError("the server read an interactions file")

    monkeypatch.setattr(common.data.loader, "_read_interactions", forbidden)
    cfg = Config(data=str(out / "server"), text_dim=8, text_epochs=1)
    schema, item_h = public_inputs(cfg)
    assert schema.n_items == item_h.shape[0] == 120 and schema.context_dim == 3 + 2 * DEFAULT_HARMONICS + 7 + 1
    broken = tmp_path / "broken"
    shutil.copytree(small_synthetic, broken)
    (broken / "interactions.parquet").write_bytes(b"not parquet at all")
    decl = tmp_path / "context.json"
    decl.write_text(json.dumps(schema.context.to_dict()))
    again, _ = public_inputs(Config(data=str(broken), text_dim=8, text_epochs=1, context_declaration=str(decl)))
    assert again.hash == schema.hash  # same public inputs, same schema
    assert fed["population"] == 24 and len(fed["devices"]) == 3


def _with_rare_user(src, dst, declared: bool, rare: bool):
    """A copy of `src` with a numeric `temperature` column (0..99); with `rare`, one user's oldest row has
    device "smart-fridge" (no one else's) and temperature 1000; without it, that user is absent. `declared`:
    dataset.toml fixes the device values and the temperature scale (public), else it declares the kinds only."""
    from common.io import write_dataset_toml, write_table

    shutil.copytree(src, dst)
    spec = read_spec(dst)
    rows = pd.read_parquet(spec.interactions_file)
    rows["temperature"] = (np.arange(len(rows)) % 100).astype(np.float64)
    user = sorted(rows["user_id"].unique())[0]
    if rare:
        first = rows.index[rows["user_id"] == user][rows.loc[rows["user_id"] == user, "timestamp"].argmin()]
        rows.loc[first, ["device", "temperature"]] = ["smart-fridge", 1000.0]
    else:
        rows = rows[rows["user_id"] != user]
    write_table(rows, spec.interactions_file)
    columns = ({"device": {"kind": "categorical", "values": ["desktop", "mobile", "tablet"]},
                "temperature": {"kind": "numeric", "mean": 50.0, "std": 28.9}} if declared
               else {"device": "categorical", "temperature": "numeric"})
    write_dataset_toml(dst, name=spec.name, interactions=spec.interactions_file.name, items=spec.items_file.name,
                       time_column=spec.time_column, context_columns=columns, from_time=list(spec.from_time))
    return dst


def _inputs_cfg(data, privacy="central"):
    return Config(data=str(data), dim=4, text_dim=8, text_epochs=2, negatives=3, privacy=privacy,
                  noise_multiplier=1.0, sample_rate=0.5)


def test_central_dp_refuses_a_context_declaration_fitted_on_the_users_rows(small_synthetic, tmp_path):
    """One user alone has device "smart-fridge" and temperature 1000. Fitted on the rows, the vocabulary would
    gain the value and the scale would move (read with certainty from schema.json and the model's shapes): under
    a privacy mode the run is refused, naming dataset.toml and the public declaration as the fix; without
    privacy the fit is allowed, and it does show the user (which is why it is refused)."""
    from simulations.simulate import simulation_inputs

    data = _with_rare_user(small_synthetic, tmp_path / "rare", declared=False, rare=True)
    for privacy in ("central", "local"):
        with pytest.raises(DataError, match=r"dataset.toml.*must fix it") as err:
            simulation_inputs(_inputs_cfg(data, privacy))
        assert "public knowledge" in str(err.value) and "fedctx data declare" not in str(err.value)
    cfg = simulation_inputs(_inputs_cfg(data, "none"))
    fitted = json.loads(open(cfg.context_declaration).read())
    assert fitted["fitted-on-private-rows"] is True
    assert "smart-fridge" in fitted["columns"][0]["vocabulary"]
    # the marked file (what `fedctx data declare` writes too) is refused by a server under a privacy mode
    with pytest.raises(DataError, match="fitted on users' interactions without noise") as err:
        declared_context(read_spec(data), cfg.context_declaration, "central")
    assert "dataset.toml" in str(err.value) and "context-declaration" in str(err.value)
    assert declared_context(read_spec(data), cfg.context_declaration, "none").dim == 5 + 2 * DEFAULT_HARMONICS + 7 + 1


def test_under_central_dp_a_public_declaration_makes_the_released_schema_independent_of_one_user(
        small_synthetic, tmp_path):
    """With the values declared in dataset.toml, the released schema.json and the model's context width are the
    same with the rare user and without them (the user's rare value is encoded as zeros)."""
    from server.app import public_inputs
    from simulations.simulate import simulation_inputs

    with_user = simulation_inputs(_inputs_cfg(_with_rare_user(small_synthetic, tmp_path / "a", True, True)))
    without = simulation_inputs(_inputs_cfg(_with_rare_user(small_synthetic, tmp_path / "b", True, False)))
    assert not with_user.context_declaration and not without.context_declaration  # dataset.toml's, nothing fitted
    schema_a, h_a = public_inputs(with_user)
    schema_b, h_b = public_inputs(without)
    assert schema_a.to_json() == schema_b.to_json() and np.array_equal(h_a, h_b)
    assert schema_a.context_dim == 3 + 1 + 2 * DEFAULT_HARMONICS + 7 + 1  # devices, temperature, hour, weekday, weekend
    assert "smart-fridge" not in schema_a.to_json()


def test_the_generator_declares_its_device_values_as_a_fit_on_its_rows_would(small_synthetic, undeclared_synthetic):
    """The generated data needs no fitting: dataset.toml lists DEVICES, and the encoding (features, order,
    width, values) is the one a fit on the training rows gives when every device occurs."""
    from common.data.sources.synthetic import DEVICES

    spec = read_spec(small_synthetic)
    assert spec.context_columns[0].values == tuple(sorted(DEVICES)) and not spec.fitted
    declared, fitted = load_dataset(small_synthetic), load_dataset(undeclared_synthetic)
    assert declared.context_encoder == fitted.context_encoder == declared_context(spec, "", "central")
    assert np.array_equal(declared.train.context, fitted.train.context)


def test_a_partition_of_undeclared_data_marks_its_fitted_declaration(undeclared_synthetic, small_synthetic, tmp_path):
    partition_dataset(undeclared_synthetic, tmp_path / "fitted", devices=2)
    server = read_spec(tmp_path / "fitted" / "server", catalogue_only=True)
    assert server.fitted
    with pytest.raises(DataError, match="fitted on users' interactions") as err:
        declared_context(server, "", "central")
    assert "remove fitted-on-private-rows" in str(err.value)
    assert declared_context(server, "", "none").dim == load_dataset(undeclared_synthetic).context_encoder.dim
    partition_dataset(small_synthetic, tmp_path / "public", devices=2)  # declared in the source: public
    assert not read_spec(tmp_path / "public" / "server", catalogue_only=True).fitted
