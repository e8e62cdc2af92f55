"""One configuration: defaults in code and in pyproject agree; bad settings give clear errors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from common.config import Config, ConfigError, config_from_mapping, parse_overrides

ROOT = Path(__file__).resolve().parents[2]


def test_pyproject_holds_every_setting_with_its_default():
    flwr_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    assert flwr_config == Config().to_flwr()


def test_overrides_are_typed():
    cfg = config_from_mapping(parse_overrides(["num-rounds=3", "use-context=false", "server-lr=0.5"]))
    assert (cfg.num_rounds, cfg.use_context, cfg.server_lr) == (3, False, 0.5)


@pytest.mark.parametrize("items, message", [
    (["num-round=3"], "unknown setting 'num-round'"),
    (["num-rounds=abc"], "num-rounds: must be an integer. Found 'abc'"),
    (["sample-rate=1.5"], "sample-rate: must be in (0, 1]. Found 1.5"),
    (["use-context=maybe"], "use-context: must be true or false"),
    (["norounds"], "--set expects key=value"),
    (["loss=ials", "privacy=local"], "loss: 'ials' is not available with local DP"),
    (["unobserved-weight=0"], "unobserved-weight: must be > 0. Found 0.0"),
    (["privacy=global"], "privacy: must be one of ('none', 'central', 'local', 'local+central'). Found 'global'."),
    (["loss=hinge"], "loss: must be 'bce', 'softmax' or 'ials'. Found 'hinge'."),
    (["privacy=local", "local-optimizer=adam"], "local-optimizer: must be 'sgd' with local DP (DP-SGD). Found 'adam'."),
    (["privacy=local+central"], "item-embedding: must be false with privacy=local+central"),
    (["privacy=local", "secure-aggregation=true"], "item-embedding: must be false with secure-aggregation and "
                                                   "privacy=local"),
])
def test_bad_settings_name_the_rule_and_value(items, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from_mapping(parse_overrides(items))


def test_every_setting_is_documented_in_the_configuration_page():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    missing = [k for k in Config().to_flwr() if f"`{k}`" not in page]
    assert missing == [], f"docs/configuration.md does not name {missing}"


@pytest.mark.parametrize("mode, central, local", [("none", False, False), ("central", True, False),
                                                  ("local", False, True), ("local+central", True, True)])
def test_the_privacy_mode_is_asked_as_questions(mode, central, local):
    cfg = Config(privacy=mode, item_embedding=mode != "local+central")
    assert (cfg.central_dp, cfg.local_dp, cfg.private) == (central, local, mode != "none")


def test_privacy_mode_and_loss_are_literal_types_checked_by_config():
    import typing

    from common.config import LOSSES, PRIVACY_MODES, Loss, PrivacyMode

    hints = typing.get_type_hints(Config)
    assert hints["privacy"] == PrivacyMode and hints["loss"] == Loss
    assert set(PRIVACY_MODES) == {"none", "central", "local", "local+central"}
    assert set(LOSSES) == {"softmax", "bce", "ials"}
    assert [Config(loss=loss).ials for loss in ("softmax", "bce", "ials")] == [False, False, True]
