"""Typed training configuration: dataclasses, filled from a YAML recipe plus `key=value` overrides.

`load_config` checks every key before any model is loaded (`RULES`, then the objective's parameters); a bad
recipe or override is one `ConfigError` naming the key, the value and where it came from, e.g.
`optim.lr=-1.0 (from the command line): must be > 0`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alignkit.train.online_config import REWARD_TRANSFORMS, online_problem, spec_problem
from alignkit.train.recipes import resolve_recipe
from alignkit.train.settings import (ConfigError, DataSettings, LoraSettings, ModelSettings, ObjectiveSettings,
                                     OnlineSettings, OptimSettings, ReferenceSettings, RewardSettings, TrainConfig,
                                     trackers)

__all__ = ["ConfigError", "DataSettings", "LoraSettings", "ModelSettings", "ObjectiveSettings", "OnlineSettings",
           "OptimSettings", "ReferenceSettings", "RewardSettings", "TrainConfig", "load_config", "to_yaml", "trackers",
           "validate"]


# ------------------------------------------------------------------ where a value came from

_NOTHING = object()  # `_lookup` of a key that is not there


def _parts(key: str) -> list[str]:  # `optim.betas[0]` → ['optim', 'betas', '0']
    return re.findall(r"[^.\[\]]+", key)


def _lookup(tree: Any, key: str) -> Any:
    """The value at dotted `key` in nested dicts and lists, or `_NOTHING`."""
    for part in _parts(key):
        if isinstance(tree, dict) and part in tree:
            tree = tree[part]
        elif isinstance(tree, list) and part.isdigit() and int(part) < len(tree):
            tree = tree[int(part)]
        else:
            return _NOTHING
    return tree


@dataclass(frozen=True)
class Sources:
    """Where each key's value came from: the command line when an override sets the key (or a key above it),
    else the recipe when it sets the key, else the default. The last one to set a key wins, as in the merge."""

    recipe: Optional[str] = None  # the recipe's path
    recipe_tree: Any = None  # the recipe as plain dicts and lists, interpolations unresolved
    override_keys: tuple[str, ...] = ()

    def of(self, key: str) -> str:
        parts = _parts(key)
        if any(parts[:len(_parts(o))] == _parts(o) for o in self.override_keys):
            return "from the command line"
        if self.recipe is not None and _lookup(self.recipe_tree, key) is not _NOTHING:
            return f"from {self.recipe}"
        return "the default"


def _show(value: Any) -> str:
    """A value as YAML would write it: null, true, 'text', [0.9, 0.999], {r: 8}."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_show, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _error(key: str, value: Any, sources: Sources | None, problem: str) -> ConfigError:
    where = f" ({sources.of(key)})" if sources is not None else ""
    return ConfigError(f"{key}={_show(value)}{where}: {problem}")


def _reason(err: Exception) -> str:
    """The first line of an OmegaConf error (the rest repeats the key and names OmegaConf's types)."""
    return str(getattr(err, "msg", None) or err).strip().splitlines()[0]


# ------------------------------------------------------------------ reading the recipe and the overrides

def read_recipe(path: str | Path) -> DictConfig:
    """The recipe file as a mapping; a missing or unreadable file, invalid YAML or a top level that is not a
    mapping is a ConfigError naming the file (and the line, for invalid YAML)."""
    try:
        recipe = OmegaConf.load(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such recipe file") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
        line = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        context = f" ({err.context})" if getattr(err, "context", None) else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {problem}{context}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        if err.errno is None:  # OmegaConf's "Invalid loaded object type: int" for a scalar top level
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values ({err})") from None
        raise ConfigError(f"{path}: cannot read the recipe: {err.strerror}") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {_reason(err)}") from None
    if not isinstance(recipe, DictConfig):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values, not a list")
    return recipe


def _override_key(item: str) -> str:
    """The key of a `key=value` override."""
    key, equals, _ = item.partition("=")
    if not equals or not key.strip():
        raise ConfigError(f"the command line: expected KEY=VALUE, got {item!r} (KEY=null sets a key to null)")
    return key


def _merge(merged: DictConfig, extra: DictConfig, where: str, fallback: str) -> DictConfig:
    """`extra` (from `where`) merged onto `merged`; OmegaConf's errors (an unknown key, a value of the wrong
    type) as a ConfigError naming the key and value, or `fallback` where OmegaConf names no key."""
    try:
        return OmegaConf.merge(merged, extra)
    except (OmegaConfBaseException, TypeError) as err:
        key = getattr(err, "full_key", None)
        if not key:
            raise ConfigError(f"{fallback}: {_reason(err)}") from None
        value = _lookup(OmegaConf.to_container(extra, resolve=False), key)
        shown = "" if value is _NOTHING else f"={_show(value)}"
        raise ConfigError(f"{key}{shown} ({where}): {_reason(err)}") from None


def _parse_override(item: str) -> DictConfig:
    try:
        return OmegaConf.from_dotlist([item])
    except yaml.YAMLError as err:
        raise ConfigError(f"{item} (from the command line): not a YAML value: {getattr(err, 'problem', err)}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults ← YAML recipe ← `key=value` overrides (dotted keys, e.g. `objective.params.beta=0.2`), every key
    checked (`validate`); anything wrong is a ConfigError naming the key, the value and where it came from."""
    keys = tuple(_override_key(item) for item in overrides)
    merged = OmegaConf.structured(TrainConfig)
    sources = Sources(override_keys=keys)
    if path is not None:
        path = resolve_recipe(path)  # a file, or the name of a recipe shipped with alignkit
        recipe = read_recipe(path)
        sources = Sources(str(path), OmegaConf.to_container(recipe, resolve=False), keys)
        merged = _merge(merged, recipe, f"from {path}", str(path))
    for item in overrides:
        merged = _merge(merged, _parse_override(item), "from the command line", f"{item} (from the command line)")
    try:
        config: TrainConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:  # e.g. an interpolation `${...}` that does not resolve
        key = getattr(err, "full_key", None)
        if not key:
            raise ConfigError(_reason(err)) from None
        raise _error(key, _lookup(OmegaConf.to_container(merged, resolve=False), key), sources, _reason(err)) from None
    validate(config, sources)
    return config


# ------------------------------------------------------------------ per-key rules

Rule = Callable[[Any], Optional[str]]  # a value → what is wrong with it, or None


def _number(low: float, high: float | None = None, *, above: bool = False, optional: bool = False) -> Rule:
    """A number >= low (> low where `above`) and < high (finite: nan and inf fail); None too where `optional`."""
    expected = f"{'>' if above else '>='} {low}" if high is None else f"in {'(' if above else '['}{low}, {high})"
    expected += " (or null)" if optional else ""

    def check(value: Any) -> Optional[str]:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):  # OmegaConf's types aside
            return f"must be a number {expected}"
        ok = (value > low if above else value >= low) and value < (float("inf") if high is None else high)
        return None if ok else f"must be {expected}"
    return check


def _one_of(choices: Sequence[str] | Callable[[], Sequence[str]]) -> Rule:
    """One of `choices` (or of what the callable returns, for names only known once a package is imported)."""
    def check(value: Any) -> Optional[str]:
        names = choices() if callable(choices) else choices
        return None if value in names else f"must be one of {', '.join(names)}"
    return check


def _non_empty(value: Any) -> Optional[str]:
    return "must not be empty" if value is not None and len(value) == 0 else None


def _numbers(value: list) -> Optional[str]:
    ok = all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in value)
    return None if ok else "must be a list of numbers"


def _betas(value: list[float]) -> Optional[str]:
    ok = len(value) == 2 and all(0 <= beta < 1 for beta in value)
    return None if ok else "must be two numbers, each in [0, 1) (e.g. [0.9, 0.999])"


TRACKERS = ("tensorboard", "wandb", "mlflow")


def _trackers(value: Any) -> Optional[str]:
    """Known trackers, or `none` alone (as `[]`); wandb and mlflow must be installed (optional extras)."""
    if not isinstance(value, (str, list)) or not all(isinstance(name, str) for name in value):
        return "must be a tracker name or a list of them"
    value = [value] if isinstance(value, str) else value
    if value == ["none"] or not value:
        return None
    unknown = [name for name in value if name not in TRACKERS]
    if unknown:
        return f"unknown tracker(s) {unknown}; choose from {', '.join(TRACKERS)}, or none"
    import importlib.util

    missing = [name for name in value if name != "tensorboard" and importlib.util.find_spec(name) is None]
    return f"needs {', '.join(missing)}: pip install 'alignkit[{','.join(missing)}]'" if missing else None


# The transformers schedules the trainer can build from (warmup steps, total steps) alone; a test checks each is a
# transformers SchedulerType and builds (listed here because importing transformers takes seconds).
SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
             "inverse_sqrt")


def _registered(name: str) -> Optional[str]:
    from alignkit.objectives import available

    names = [objective.name for objective in available()]
    return None if name in names else f"not a registered objective; registered: {', '.join(names)}"


# Every field but the booleans (OmegaConf checks their type) and objective.params (`_check_objective_params`).
# A rule under model.lora applies when LoRA is configured.
RULES: dict[str, Rule] = {
    "model.name_or_path": _non_empty,
    "model.lora.r": _number(1),
    "model.lora.alpha": _number(1),
    "model.lora.dropout": _number(0, 1),
    "model.lora.target_modules": _non_empty,
    "data.train": _non_empty,
    "data.max_length": _number(1),
    "data.max_prompt_length": _number(1),  # and < data.max_length: `_check_prompt_length`
    "data.overlong": _one_of(("truncate_prompt", "drop")),
    "data.eval": _non_empty,
    "data.eval_fraction": _number(0, 1),
    "eval_every": _number(1, optional=True),
    "report_to": _trackers,
    "objective.name": _registered,
    "reference.model": _non_empty,
    "optim.lr": _number(0, above=True),
    "optim.weight_decay": _number(0),
    "optim.betas": _betas,
    "optim.eps": _number(0, above=True),
    "optim.warmup_steps": _number(0),
    "optim.schedule": _one_of(SCHEDULES),
    "optim.max_grad_norm": _number(0, above=True, optional=True),
    "output_dir": _non_empty,
    "batch_size": _number(1),
    "grad_accum": _number(1),
    "epochs": _number(1),
    "max_steps": _number(1, optional=True),
    "seed": _number(0, 2**32),  # numpy's seed range (accelerate's set_seed seeds numpy too)
    "mixed_precision": _one_of(("no", "bf16")),
    "pack_row_tokens": _number(1, optional=True),
    "lm_head_chunk": _number(1, optional=True),
    "save_every": _number(1, optional=True),
    "keep_checkpoints": _number(1),  # 0 would delete every checkpoint, the final one included
    "log_every": _number(1),
    "on_nonfinite": _one_of(("stop", "skip")),
    "online.k": _number(1),
    "online.max_new_tokens": _number(1),
    "online.temperature": _number(0, above=True),
    "online.top_p": _number(0, 1.000001, above=True),
    "online.updates_per_batch": _number(1),
    "online.sample_batch_size": _number(1),
    "reward.n": _number(1),
    "reward.reference_samples": _number(1),
    "reward.specs": lambda specs: next((f"[{i}] {spec!r}: {problem}" for i, spec in enumerate(specs)
                                        if (problem := spec_problem(spec)) is not None), None),
    "reward.weights": lambda weights: None if weights is None else _numbers(weights),
    "reward.transform": lambda value: None if value is None else _one_of(REWARD_TRANSFORMS)(value),
}

# Objective parameters checked wherever an objective has them (beyond the type of the default).
PARAM_RULES: dict[str, Rule] = {
    "beta": _number(0, above=True),  # β <= 0 is meaningless for every offline objective here
    "label_smoothing": _number(0, 0.5),
}
# For objectives on prompts sampled online, β weighs a KL penalty: 0 switches it off.
ONLINE_PARAM_RULES: dict[str, Rule] = {**PARAM_RULES, "beta": _number(0)}


def _get(config: TrainConfig, key: str) -> Any:  # the value at dotted `key`; _NOTHING under model.lora=None
    value: Any = config
    for part in key.split("."):
        if value is None:
            return _NOTHING
        value = getattr(value, part)
    return value


def _check_prompt_length(config: TrainConfig, sources: Sources | None) -> None:
    data = config.data
    if data.max_prompt_length >= data.max_length:
        where = f" ({sources.of('data.max_length')})" if sources is not None else ""
        raise _error("data.max_prompt_length", data.max_prompt_length, sources,
                     f"must be < data.max_length={data.max_length}{where}")


def _kind_problem(default: Any, value: Any) -> Optional[str]:
    """What is wrong with `value` for a parameter whose default is `default`: a float default takes any number,
    an int default an int, a bool default a bool, a str default a str; any other default anything."""
    if isinstance(default, bool):
        ok, kind = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, kind = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, kind = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, kind = isinstance(value, str), "a string"
    else:
        return None
    return None if ok else f"must be {kind}, like the default {_show(default)}"


def _check_objective_params(config: TrainConfig, sources: Sources | None) -> None:
    """Each of objective.params is a parameter of the objective, of its default's type, in range (`PARAM_RULES`)."""
    from alignkit.objectives import get

    objective = get(config.objective.name)
    for name, value in config.objective.params.items():
        if name not in objective.defaults:
            problem = f"{objective.name} has no parameter {name!r}; it takes {sorted(objective.defaults)}"
        else:
            problem = _kind_problem(objective.defaults[name], value)
            rules = ONLINE_PARAM_RULES if objective.data_format == "prompts" else PARAM_RULES
            if problem is None and name in rules and isinstance(value, (int, float)):
                problem = rules[name](value)
        if problem is not None:
            raise _error(f"objective.params.{name}", value, sources, problem)


def validate(config: TrainConfig, sources: Sources | None = None) -> None:
    """Every key of `config` against its rule (`RULES`, the prompt/length limits, the objective's parameters);
    the first bad one is a ConfigError naming the key, its value and (given `sources`) where it came from."""
    for key, rule in RULES.items():
        value = _get(config, key)
        problem = None if value is _NOTHING else rule(value)
        if problem is not None:
            raise _error(key, value, sources, problem)
    _check_prompt_length(config, sources)
    _check_objective_params(config, sources)
    _check_online(config, sources)


def _check_online(config: TrainConfig, sources: Sources | None) -> None:
    problem = online_problem(config)
    if problem is not None:
        raise _error(*problem[:2], sources, problem[2])


def to_yaml(config: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
