"""Shared fixtures: small generated datasets (never real data)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import pytest
from hypothesis import settings

# CI (.ci/run) explores the same examples on every run, so that a property test cannot fail there by chance;
# a local run draws new examples each time and can still find new counterexamples.
settings.register_profile("ci", derandomize=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory) -> Path:
    """A 24-user, 120-item synthetic dataset directory."""
    from common.data.sources.synthetic import SyntheticConfig, write_synthetic

    out = tmp_path_factory.mktemp("data") / "small"
    return write_synthetic(out, SyntheticConfig(users=24, items=120, topics=6, min_events=6, mean_events=8.0,
                                                seed=3))


@pytest.fixture(scope="session")
def undeclared_synthetic(small_synthetic, tmp_path_factory) -> Path:
    """small_synthetic with a dataset.toml that declares the context columns' kinds only (no `device` values), as
    a dataset whose owner declared nothing public: its vocabulary can only be fitted on the rows."""
    import shutil

    from common.data.loader import read_spec
    from common.io import write_dataset_toml

    out = tmp_path_factory.mktemp("data") / "undeclared"
    shutil.copytree(small_synthetic, out)
    spec = read_spec(out)
    write_dataset_toml(out, name=spec.name, interactions=spec.interactions_file.name, items=spec.items_file.name,
                       time_column=spec.time_column, context_columns={c.name: c.kind for c in spec.context_columns},
                       from_time=list(spec.from_time))
    return out


@pytest.fixture(scope="session")
def small_cache(tmp_path_factory) -> Path:
    """FEDCTX_CACHE for tests that use data=synthetic."""
    return tmp_path_factory.mktemp("cache")
