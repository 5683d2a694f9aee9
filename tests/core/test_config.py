from dataclasses import dataclass, field
from typing import Literal

import pytest

from tallrec_cli.core.config import describe, from_dict, load_config, option, parse_overrides
from tallrec_cli.core.errors import ConfigError


@dataclass
class Lora:
    r: int = option(8, "LoRA rank.")
    targets: list[str] = option(["q_proj", "v_proj"], "Modules to adapt.")

    def check(self):
        return ["lora.r: must be positive"] if self.r <= 0 else []


@dataclass
class Recipe:
    lora: Lora = field(default_factory=Lora)
    mode: Literal["full", "answer"] = option("full", "Loss mode.")
    lr: float = option(1e-4, "Learning rate.")
    name: str | None = option(None, "Run name.")


def test_overrides_parse_as_yaml_and_nest():
    assert parse_overrides(["lora.r=16", "lr=3e-4", "name=null", "lora.targets=[a, b]"]) == {
        "lora": {"r": 16, "targets": ["a", "b"]}, "lr": 3e-4, "name": None}


def test_recipe_plus_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lora:\n  r: 4\nmode: answer\n")
    config = load_config(Recipe, recipe, parse_overrides(["lora.targets=q_proj,k_proj", "lr=1"]))
    assert config.lora.r == 4 and config.lora.targets == ["q_proj", "k_proj"]
    assert config.mode == "answer" and config.lr == 1.0


def test_every_problem_reported_in_one_pass():
    with pytest.raises(ConfigError) as error:
        from_dict(Recipe, {"lora": {"r": "x", "alpha": 3}, "mode": "half", "batch": 2})
    message = error.value.message
    assert "4 problems" in message
    assert "unknown key 'batch'; valid keys here: lora, mode, lr, name" in message
    assert "unknown key 'lora.alpha'; valid keys here: r, targets" in message
    assert "lora.r: expected an integer" in message and "mode: 'half' is not one of full, answer" in message


def test_checks_run_after_types():
    with pytest.raises(ConfigError, match="lora.r: must be positive"):
        from_dict(Recipe, {"lora": {"r": 0}})


def test_missing_and_malformed_recipe(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Recipe, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Recipe, bad)
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["lora.r"])


def test_describe_lists_leaf_fields_with_help():
    rows = {key: help_text for key, _, help_text in describe(Recipe)}
    assert rows["lora.r"] == "LoRA rank." and rows["lr"] == "Learning rate."
