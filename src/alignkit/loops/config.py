"""`alignkit loop --config loop.yaml`'s configuration: a preset, the model and data it starts from, how many
rounds, how each round samples, trains and is evaluated. Every key is checked, and a preset's required part,
before the first round; a mistake is a ConfigError naming the key and where it came from.

    preset: rsf_dpa              # alignkit.loops.presets.PRESETS
    model: smollm2-135m-instruct # the model of round 1 (name, folder or .gguf)
    data: builtin:demo/train.jsonl
    rounds: 2
    output_dir: runs/loop_rsf_dpa
    sample: {k: 4, max_new_tokens: 64}
    train: {recipe: sft_smollm2, overrides: [max_steps=20]}
    eval: {kind: checks}
    params: {...}                # the preset's parameters (its defaults: `alignkit loop --list`)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from alignkit.loops.rounds import Sampling
from alignkit.train.config import ConfigError, read_recipe

EVAL_KINDS = ("checks", "honesty", "directions", "length", "none")


@dataclass
class TrainPart:
    recipe: str | None = None  # a train recipe (shipped name or path); default: the preset's
    overrides: list[str] = field(default_factory=list)  # `key=value` for alignkit train, after the recipe


@dataclass
class EvalPart:
    kind: str | None = None  # checks | honesty | directions | length | none; default: the preset's (evaluate.py)
    data: str | None = None  # held-out rows (default: evaluate.DEFAULT_DATA of the kind)
    limit: int | None = None  # the first N held-out rows only
    max_new_tokens: int = 96
    angles: list[float] = field(default_factory=lambda: [0.0, 22.5, 45.0, 67.5, 90.0])  # directions only


@dataclass
class LoopConfig:
    preset: str = ""
    model: str = "smollm2-135m-instruct"
    data: str = ""  # the prompt rows each round labels (questions for `honesty`)
    limit: int | None = None  # the first N rows of `data` only
    rounds: int = 1
    output_dir: str = ""
    seed: int = 0
    sample: Sampling = field(default_factory=Sampling)
    train: TrainPart = field(default_factory=TrainPart)
    eval: EvalPart = field(default_factory=EvalPart)
    params: dict[str, Any] = field(default_factory=dict)

    def to_yaml(self) -> str:
        return OmegaConf.to_yaml(OmegaConf.structured(self))


def load_loop_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> LoopConfig:
    """Defaults ← the YAML file ← `key=value` overrides, checked (`check`)."""
    merged = OmegaConf.structured(LoopConfig)
    where = "the defaults"
    try:
        if path is not None:
            where = str(path)
            merged = OmegaConf.merge(merged, read_recipe(path))
        where = "the command line"
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        config: LoopConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        raise ConfigError(f"{key} (from {where}): {getattr(err, 'msg', err)}") from None
    check(config, str(path) if path else "the command line")
    return config


def check(config: LoopConfig, source: str) -> None:
    """Every key's value, and the preset's required parameters; errors name the key and `source`."""
    from alignkit.loops.presets import PRESETS

    def fail(key: str, problem: str) -> None:
        raise ConfigError(f"{key} (from {source}): {problem}")
    if config.preset not in PRESETS:
        fail("preset", f"{config.preset!r} is not a preset; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[config.preset]
    for key, value in (("data", config.data), ("output_dir", config.output_dir)):
        if not value:
            fail(key, "required")
    if config.rounds < 1:
        fail("rounds", f"must be at least 1, got {config.rounds}")
    if config.limit is not None and config.limit < 1:
        fail("limit", f"must be at least 1, got {config.limit}")
    if config.sample.k < 1 or config.sample.max_new_tokens < 1 or config.sample.batch_size < 1:
        fail("sample", f"k, max_new_tokens and batch_size must be at least 1, got {asdict(config.sample)}")
    if config.sample.temperature < 0 or not 0 < config.sample.top_p <= 1:
        fail("sample", "need temperature >= 0 and 0 < top_p <= 1")
    if config.eval.kind is not None and config.eval.kind not in EVAL_KINDS:
        fail("eval.kind", f"{config.eval.kind!r}; choose one of {', '.join(EVAL_KINDS)}")
    for name in preset.required:
        if config.params.get(name) in (None, "", [], {}):
            fail(f"params.{name}", f"the {preset.name} preset needs it ({preset.description})")
    unknown = sorted(set(config.params) - set(preset.defaults) - set(preset.required))
    if unknown:
        fail(f"params.{unknown[0]}", f"not a parameter of {preset.name}; its parameters: "
                                     f"{', '.join(sorted({*preset.defaults, *preset.required}))}")
    if preset.check is not None:
        try:
            preset.check({**preset.defaults, **config.params})
        except (ValueError, KeyError, OSError) as err:
            fail("params", str(err))
