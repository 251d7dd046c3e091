"""Typed training configuration: dataclasses, filled from a YAML recipe plus `key=value` overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException


@dataclass
class LoraSettings:
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ModelSettings:
    name_or_path: str = "smollm2-135m-instruct"
    lora: Optional[LoraSettings] = None  # set (e.g. `model.lora.r=16`) to train LoRA adapters only


@dataclass
class DataSettings:
    train: str = "builtin:demo/train.jsonl"  # file, save_to_disk folder, or builtin:<path in the package>
    max_length: int = 512
    max_prompt_length: int = 256
    overlong: str = "truncate_prompt"  # or "drop"


@dataclass
class ObjectiveSettings:
    name: str = "dpo"
    params: dict[str, Any] = field(default_factory=dict)  # e.g. {beta: 0.1}; defaults come from the registry


@dataclass
class ReferenceSettings:
    model: Optional[str] = None  # None: the policy as it is before training (adapters disabled under LoRA)
    precompute: bool = True  # compute reference log-probs once before training instead of every step
    cache: bool = True  # keep precomputed log-probs on disk, keyed by a fingerprint of model + data + template


@dataclass
class OptimSettings:
    lr: float = 5e-6
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "linear"  # any transformers scheduler name: linear, cosine, constant_with_warmup, ...
    max_grad_norm: Optional[float] = 1.0
    fused: bool = True  # fused AdamW kernel (as transformers' default): no foreach temporaries, ~0.5 GB less peak at 135M


@dataclass
class TrainConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    reference: ReferenceSettings = field(default_factory=ReferenceSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    output_dir: str = "runs/dpo"
    overwrite: bool = False  # allow starting afresh in an output_dir that already holds a run
    batch_size: int = 4  # examples (e.g. preference pairs) per micro-batch, per process
    grad_accum: int = 1  # micro-batches per optimizer step
    epochs: int = 1
    max_steps: Optional[int] = None  # stop after this many optimizer steps (overrides epochs)
    seed: int = 0
    mixed_precision: str = "no"  # "no" (fp32) or "bf16" (autocast)
    prefix_sharing: bool = True  # one row [prompt | completion 1 | ... | K] per example where attention allows it
    packing: bool = True  # with prefix sharing: several examples per row (first-fit), less padding
    pack_row_tokens: Optional[int] = None  # packed row size; None: the micro-batch's longest example (never wider)
    activation_checkpointing: bool = False  # recompute layer activations in backward: less memory, more time
    lm_head_chunk: Optional[int] = None  # apply the LM head to this many completion tokens at a time
    save_every: Optional[int] = None  # checkpoint every N optimizer steps (always at the end)
    keep_checkpoints: int = 2
    log_every: int = 1
    tensorboard: bool = True
    progress: bool = True
    # A NaN or inf in the loss, the gradients or the parameters after an update: "stop" ends the run with an
    # error naming the step and the quantity (the last good checkpoint kept); "skip" leaves the parameters as
    # they were before the step, moves on to the next batch and counts it (`nonfinite_skipped`).
    on_nonfinite: str = "stop"


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the key."""


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Defaults ← YAML recipe ← `key=value` overrides (dotted keys, e.g. `objective.params.beta=0.2`)."""
    try:
        merged = OmegaConf.structured(TrainConfig)
        if path is not None:
            merged = OmegaConf.merge(merged, OmegaConf.load(path))
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
        config: TrainConfig = OmegaConf.to_object(merged)
    except OmegaConfBaseException as err:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{err}".strip()) from None
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    checks = [
        (config.batch_size >= 1, "batch_size must be >= 1"),
        (config.grad_accum >= 1, "grad_accum must be >= 1"),
        (config.max_steps is None or config.max_steps >= 1, "max_steps must be >= 1"),
        (config.mixed_precision in ("no", "bf16"), "mixed_precision must be 'no' or 'bf16'"),
        (config.on_nonfinite in ("stop", "skip"), "on_nonfinite must be 'stop' or 'skip'"),
        (config.data.overlong in ("truncate_prompt", "drop"), "data.overlong must be 'truncate_prompt' or 'drop'"),
        (config.data.max_prompt_length < config.data.max_length, "data.max_prompt_length must be < data.max_length"),
        (config.save_every is None or config.save_every >= 1, "save_every must be >= 1"),
        (config.lm_head_chunk is None or config.lm_head_chunk >= 1, "lm_head_chunk must be >= 1"),
        (config.pack_row_tokens is None or config.pack_row_tokens >= 1, "pack_row_tokens must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def to_yaml(config: TrainConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))
