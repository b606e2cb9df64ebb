"""Run configs: every shipped YAML loads, and mistakes are clear errors."""

from pathlib import Path

import pytest

from dtray import config as cfg
from dtray.errors import DtrayError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_run_configs_load(path):
    config = cfg.load(path)
    assert config.data.paths, "a shipped config names its dataset"


def test_overrides_parse_yaml_values_and_round_trip(tmp_path):
    config = cfg.load(ROOT / "configs/pendulum.yaml", ["train.lr=3e-4", "data.sampling=boltzmann", "eval.targets=[1, 2]"])
    assert (config.train.lr, config.data.sampling, config.eval.targets) == (3e-4, "boltzmann", [1.0, 2.0])
    cfg.save(config, tmp_path / "c.yaml")
    assert cfg.load(tmp_path / "c.yaml") == config


@pytest.mark.parametrize("override, message", [
    (["train.lrr=1"], "lrr"),
    (["data.sampling=best"], "data.sampling"),
    (["lr=1"], "section.key=value"),
    (["eval.temperature=0"], "eval.temperature must be > 0"),
    (["eval.top_p=0"], r"eval.top_p must be in \(0, 1\]"),
    (["eval.top_p=1.5"], r"eval.top_p must be in \(0, 1\]"),
    (["model.return_loss_weight=2"], r"model.return_loss_weight must be in \[0, 1\]"),
])
def test_bad_keys_and_values_name_the_field(override, message):
    with pytest.raises(DtrayError, match=message):
        cfg.load(None, override)


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(DtrayError, match="no such config file"):
        cfg.load(tmp_path / "nope.yaml")


@pytest.mark.parametrize("name, sampling", [("greedy", cfg.ActionSampling()),
                                            ("T0.5", cfg.ActionSampling(False, 0.5, 1.0)),
                                            ("T1p0.9", cfg.ActionSampling(False, 1.0, 0.9))])
def test_ways_of_acting_parse_from_their_short_names_and_back(name, sampling):
    assert cfg.ActionSampling.parse(name) == sampling and sampling.name == name


@pytest.mark.parametrize("name", ["T0", "T1p0", "T1p1.5", "top-p", ""])
def test_a_bad_way_of_acting_is_a_clear_error(name):
    with pytest.raises(DtrayError, match=f"way of acting '{name}': expected greedy"):
        cfg.ActionSampling.parse(name)
