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
    (["loss=hinge"], "loss: must be 'auto', 'bce', 'softmax' or 'ials'. Found 'hinge'."),
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
    assert set(LOSSES) == {"auto", "softmax", "bce", "ials"}
    assert [Config(loss=loss).ials for loss in ("softmax", "bce", "ials")] == [False, False, True]


def test_loss_auto_chooses_between_softmax_and_the_ials_recipe_without_dp_only():
    from common.config import IALS_RECIPE

    cfg = Config()
    assert cfg.loss == "auto" and cfg.model_loss == "softmax" and not cfg.ials  # one model: softmax
    assert cfg.item_lr == 50.0  # server-item-lr's auto value follows the model's loss
    (n1, softmax), (n2, ials) = cfg.loss_candidates()
    assert (n1, n2) == ("softmax", "ials")
    assert softmax == cfg.replace(loss="softmax")
    # the ials candidate takes the recipe where a setting is at its default, and nothing else changes
    assert ials == cfg.replace(loss="ials", **IALS_RECIPE)
    assert ials.num_rounds == 100 and ials.server_lr == 0.01 and ials.item_lr == 0.0
    # a setting the user changed is kept in both candidates
    mine = Config(num_rounds=7, server_lr=0.2)
    _, ials = mine.loss_candidates()[1]
    assert (ials.num_rounds, ials.server_lr, ials.context_l2) == (7, 0.2, IALS_RECIPE["context_l2"])
    # a named loss, or any privacy mode: one model and no selection (a choice on validation is not accounted)
    assert [n for n, _ in Config(loss="ials").loss_candidates()] == ["ials"]
    for privacy in ("central", "local", "local+central"):
        [(name, c)] = Config(privacy=privacy, item_embedding=privacy.endswith("central")
                             and privacy != "local+central").loss_candidates()
        assert name == "softmax" and c.loss == "softmax" and c.privacy == privacy
    with pytest.raises(ConfigError, match="loss: must be 'auto', 'bce', 'softmax' or 'ials'"):
        Config(loss="als")


def test_a_model_never_trains_with_loss_auto():
    from common.model.formula import candidate_loss, trainable_dense

    with pytest.raises(ValueError, match="one model.s loss"):
        trainable_dense("auto")
    with pytest.raises(ValueError, match="auto"):
        candidate_loss([[0.0, 0.0, 0.0]], "auto")
