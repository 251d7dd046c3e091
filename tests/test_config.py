"""`load_config`: every key is checked before any model loads, and every bad recipe or override is one
ConfigError naming the key, the value and where it came from (the recipe file or the command line)."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from alignkit.train import config as config_module
from alignkit.train.config import ConfigError, TrainConfig, load_config, to_yaml

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))

# (recipe text or None, overrides, fragments the message must contain besides the source)
BAD = {
    # the reliability issue's cases
    "unknown objective": (None, ["objective.name=dpoo"], ["objective.name", "dpoo", "registered", "simpo"]),
    "unknown schedule": (None, ["optim.schedule=cosinee"], ["optim.schedule", "cosinee", "cosine_with_restarts"]),
    "log_every 0": (None, ["log_every=0"], ["log_every", "0", ">= 1"]),
    "max_prompt_length 0": (None, ["data.max_prompt_length=0"], ["data.max_prompt_length", "0"]),
    "negative lr": (None, ["optim.lr=-1"], ["optim.lr", "-1"]),
    "one beta": (None, ["optim.betas=[0.9]"], ["optim.betas", "[0.9]", "two"]),
    "beta not a number": (None, ["objective.params.beta=abc"], ["objective.params.beta", "abc", "number"]),
    "yaml syntax error": ("optim:\n  lr: [1\n  eps: 2\n", [], ["line 3", "YAML"]),
    "top level a list": ("- batch_size: 2\n- epochs: 1\n", [], ["mapping", "list"]),
    "negative seed": (None, ["seed=-1"], ["seed", "-1", "[0, "]),
    "override without =": (None, ["max_steps"], ["expected KEY=VALUE, got 'max_steps'"]),
    "negative beta": (None, ["objective.params.beta=-1"], ["objective.params.beta", "-1", "> 0"]),
    "max_grad_norm 0": (None, ["optim.max_grad_norm=0"], ["optim.max_grad_norm", "0"]),
    "negative warmup": (None, ["optim.warmup_steps=-5"], ["optim.warmup_steps", "-5", ">= 0"]),
    # more
    "batch_size not an int": (None, ["batch_size=abc"], ["batch_size", "abc", "Integer"]),
    "epochs fractional": (None, ["epochs=1.5"], ["epochs", "1.5"]),
    "epochs 0": (None, ["epochs=0"], ["epochs", "0"]),
    "batch_size 0": (None, ["batch_size=0"], ["batch_size", "0"]),
    "grad_accum 0": (None, ["grad_accum=0"], ["grad_accum", "0"]),
    "max_steps 0": (None, ["max_steps=0"], ["max_steps", "0"]),
    "save_every 0": (None, ["save_every=0"], ["save_every", "0"]),
    "keep_checkpoints 0": (None, ["keep_checkpoints=0"], ["keep_checkpoints", "0"]),
    "lm_head_chunk 0": (None, ["lm_head_chunk=0"], ["lm_head_chunk", "0"]),
    "pack_row_tokens 0": (None, ["pack_row_tokens=0"], ["pack_row_tokens", "0"]),
    "seed too large": (None, ["seed=4294967296"], ["seed", "4294967296"]),
    "max_length 0": (None, ["data.max_length=0"], ["data.max_length", "0"]),
    "prompt not shorter": (None, ["data.max_prompt_length=512"], ["data.max_prompt_length", "512", "data.max_length"]),
    "overlong": (None, ["data.overlong=cut"], ["data.overlong", "cut", "truncate_prompt"]),
    "mixed_precision": (None, ["mixed_precision=fp16"], ["mixed_precision", "fp16", "bf16"]),
    "on_nonfinite": (None, ["on_nonfinite=ignore"], ["on_nonfinite", "ignore", "skip"]),
    "negative weight_decay": (None, ["optim.weight_decay=-0.1"], ["optim.weight_decay", "-0.1"]),
    "eps 0": (None, ["optim.eps=0"], ["optim.eps", "0"]),
    "beta2 1": (None, ["optim.betas=[0.9,1.0]"], ["optim.betas", "[0.9, 1.0]"]),
    "betas not numbers": (None, ["optim.betas=[a,b]"], ["optim.betas", "a"]),
    "lr nan": (None, ["optim.lr=nan"], ["optim.lr", "nan"]),
    "lora r 0": (None, ["model.lora.r=0"], ["model.lora.r", "0"]),
    "lora alpha 0": (None, ["model.lora.alpha=0"], ["model.lora.alpha", "0"]),
    "lora dropout 1": (None, ["model.lora.dropout=1"], ["model.lora.dropout", "1"]),
    "lora not a mapping": (None, ["model.lora=5"], ["model.lora", "5"]),
    "unknown key": (None, ["optim.learning_rate=1"], ["optim.learning_rate", "1"]),
    "empty output_dir": (None, ["output_dir=''"], ["output_dir", "''"]),
    "unknown parameter": (None, ["objective.params.gamma=1.0"], ["objective.params.gamma", "1.0", "dpo"]),
    "smoothing 0.5": (None, ["objective.params.label_smoothing=0.5"], ["objective.params.label_smoothing", "0.5"]),
    "str param": (None, ["objective.name=sft", "objective.params.reduction=3"], ["objective.params.reduction", "3"]),
    "bool param": (None, ["objective.name=bco", "objective.params.update=1"], ["objective.params.update", "1"]),
    "top level a scalar": ("5\n", [], ["mapping", "int"]),
    "recipe unknown key": ("optim:\n  learning_rate: 1.0\n", [], ["optim.learning_rate", "1.0"]),
    "recipe bad type": ("batch_size: many\n", [], ["batch_size", "many"]),
    "recipe bad value": ("optim:\n  lr: -0.5\n", [], ["optim.lr", "-0.5"]),
    "recipe beta 0": ("objective:\n  name: ipo\n  params:\n    beta: 0\n", [], ["objective.params.beta", "0"]),
    "recipe duplicate key": ("epochs: 1\nepochs: 2\n", [], ["line 2", "duplicate"]),
    "recipe interpolation": ("seed: ${nope}\n", [], ["seed", "${nope}", "nope"]),
    "recipe params, new objective": ("objective:\n  params:\n    beta: 0.2\n", ["objective.name=sft"],
                                     ["objective.params.beta", "0.2", "sft has no parameter"]),
}


@pytest.mark.parametrize("recipe, overrides, fragments", BAD.values(), ids=BAD.keys())
def test_bad_value_is_a_config_error_naming_key_value_and_source(tmp_path, recipe, overrides, fragments):
    path = None
    if recipe is not None:
        path = tmp_path / "my_recipe.yaml"
        path.write_text(recipe)
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    message = str(caught.value)
    source = "command line" if recipe is None else str(path)
    for fragment in [source, *fragments]:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_missing_recipe_is_a_config_error_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no_such_recipe.yaml"):
        load_config(tmp_path / "no_such_recipe.yaml")


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads(recipe):
    assert isinstance(load_config(recipe), TrainConfig)
    assert isinstance(load_config(recipe, ["max_steps=3", "seed=7"]), TrainConfig)


def test_key_in_recipe_and_on_the_command_line_names_the_command_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("log_every: 0\noptim:\n  warmup_steps: 3\n")
    with pytest.raises(ConfigError) as caught:  # the recipe's bad value is overridden: the override is at fault
        load_config(path, ["log_every=1", "optim.warmup_steps=-1"])
    assert "optim.warmup_steps=-1" in str(caught.value) and "command line" in str(caught.value)
    assert str(path) not in str(caught.value)
    with pytest.raises(ConfigError) as caught:  # only in the recipe: the recipe is named
        load_config(path, ["optim.warmup_steps=2"])
    assert "log_every=0" in str(caught.value) and str(path) in str(caught.value)
    assert load_config(path, ["log_every=5"]).log_every == 5


def test_cross_key_error_names_both_keys_and_their_sources(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("data:\n  max_length: 100\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, ["data.max_prompt_length=200"])
    message = str(caught.value)
    assert "data.max_prompt_length=200" in message and "command line" in message
    assert "data.max_length=100" in message and str(path) in message


def test_valid_input_loads_as_before(tmp_path):
    config = load_config(None, ["objective.params.beta=1", "max_steps=", "model.lora.r=8", "optim.lr=1"])
    assert config.objective.params == {"beta": 1}  # kept as given; the objective takes ints for floats
    assert config.max_steps is None and config.model.lora.r == 8 and config.optim.lr == 1.0
    assert load_config() == TrainConfig()
    assert "batch_size: 4" in to_yaml(load_config())
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == TrainConfig()
    config = load_config(None, ["objective.name=bco", "objective.params.update=false", "optim.max_grad_norm=null",
                                "optim.schedule=cosine", "mixed_precision=bf16", "seed=0"])
    assert config.objective.params == {"update": False} and config.optim.max_grad_norm is None


def leaf_keys(cls, prefix=""):
    """Dotted keys of every field of a settings dataclass (nested settings expanded), with their types."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        inner = [arg for arg in typing.get_args(kind) if dataclasses.is_dataclass(arg)]
        nested = inner[0] if inner else kind if dataclasses.is_dataclass(kind) else None
        if nested is not None:
            yield from leaf_keys(nested, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", kind


def test_every_field_but_the_booleans_has_a_rule():
    keys = {key for key, kind in leaf_keys(TrainConfig) if kind is not bool} - {"objective.params"}
    assert keys == set(config_module.RULES)


def test_the_schedules_accepted_are_transformers_schedules_the_trainer_can_build():
    import torch
    from transformers import SchedulerType, get_scheduler

    from alignkit.train.config import SCHEDULES

    assert set(SCHEDULES) <= {schedule.value for schedule in SchedulerType}
    for name in SCHEDULES:
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        scheduler = get_scheduler(name, optimizer, num_warmup_steps=1, num_training_steps=10)
        optimizer.step()
        scheduler.step()
        assert hasattr(scheduler, "lr_lambdas"), name  # --resume can apply a changed learning rate to it
