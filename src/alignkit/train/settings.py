"""The training configuration's typed settings (dataclasses); `alignkit.train.config` fills and checks them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional


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
    train: str = "builtin:demo/train.jsonl"  # file, save_to_disk folder, hub id (org/name[@config][::split]), builtin:...
    eval: Optional[str] = None  # held-out rows of the same format, any source train takes; scored every eval_every
    eval_fraction: float = 0.0  # without `eval`: hold out this fraction of train (seeded) and score it instead
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
class OnlineSettings:
    """Sampling for objectives on `prompts` data (`alignkit.train.online`): each generation of samples draws
    `k` completions of every prompt of an optimizer step from the current policy."""

    k: int = 4  # completions sampled per prompt (the group of RLOO and GRPO)
    max_new_tokens: int = 64
    temperature: float = 1.0  # the log-probs the objectives see are the untempered policy's
    top_p: float = 1.0
    updates_per_batch: int = 1  # optimizer steps on each generation of samples (TRL's num_iterations)
    sample_batch_size: int = 16  # prompts per decoding call (their k samples decode together)


@dataclass
class RewardSettings:
    """The reward of sampled completions: specs as `alignkit score --reward` takes them, summed with weights;
    optionally InfAlign's calibration against the reference policy's samples and a transform (CTRL)."""

    specs: list[str] = field(default_factory=list)  # e.g. ["verifier:checks=builtin:demo/train.jsonl"]
    weights: Optional[list[float]] = None  # one per spec; default 1 each
    calibrate: bool = False  # replace r by its quantile among the reference policy's samples of the same prompt
    transform: Optional[str] = None  # best_of_n (u^n) or worst_of_n (1 − (1 − u)^n) of the calibrated reward
    n: int = 4  # the n of the transform
    reference_samples: int = 8  # samples per prompt from the reference policy for the calibration (cached)


@dataclass
class TrainConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    objective: ObjectiveSettings = field(default_factory=ObjectiveSettings)
    reference: ReferenceSettings = field(default_factory=ReferenceSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    online: OnlineSettings = field(default_factory=OnlineSettings)
    reward: RewardSettings = field(default_factory=RewardSettings)
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
    save_optimizer: bool = True  # checkpoints hold the optimizer state (needed for an exact --resume; 2x the model)
    save_final_only: bool = False  # write only final/: no checkpoints, so no --resume
    eval_every: Optional[int] = None  # score the eval split every N steps (and always after the last step)
    log_every: int = 1
    report_to: Any = field(default_factory=lambda: ["tensorboard"])  # tensorboard, wandb, mlflow (or a list), none
    progress: bool = True
    # A NaN or inf in the loss, the gradients or the parameters after an update: "stop" ends the run with an
    # error naming the step and the quantity (the last good checkpoint kept); "skip" leaves the parameters as
    # they were before the step, moves on to the next batch and counts it (`nonfinite_skipped`).
    on_nonfinite: str = "stop"


def trackers(config: TrainConfig) -> list[str]:
    """`report_to` as a list of tracker names: a name or a list; `none` (or an empty list) is no tracker."""
    names = [config.report_to] if isinstance(config.report_to, str) else list(config.report_to)
    return [] if names == ["none"] else names


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the key, the value and where it came from."""
