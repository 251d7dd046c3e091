"""The pieces a training run is built from: the model to train and how it is scored, the training examples,
the batch layout, the reference, the optimizer, and the state to resume from. `Trainer.prepare` calls these
in order."""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from torch import nn
from transformers import get_scheduler

from alignkit.data import FORMAT_FIELDS, DataError, TokenizedExample, TruncationConfig, load_examples, tokenize_examples
from alignkit.data.builtin import resolve_source
from alignkit.data.collation import collate_rows, collate_shared_prefix
from alignkit.models import load
from alignkit.models.loading import load_tokenizer
from alignkit.models.logprobs import CompletionScorer, accepts_block_mask
from alignkit.models.reference import weights_fingerprint
from alignkit.models.reward_head import RewardScorer, load_reward_model
from alignkit.objectives import Objective
from alignkit.objectives.registry import Slots, logp_inputs, reward_inputs
from alignkit.train import resume as resumes
from alignkit.train.checkpoint import TrainingState, load_checkpoint, load_source_state
from alignkit.train.config import ConfigError, TrainConfig, trackers
from alignkit.train.metrics import tracker_dir
from alignkit.train.references import Collate, precompute_reference

log = logging.getLogger(__name__)


@dataclass
class Policy:
    """The model being trained (dropout off; LoRA-wrapped when configured), its tokenizer, the module whose
    forward scores a batch (wrapped for distributed training), how that forward's output is named for the
    objective, and the fingerprint of the weights before training (for the reference cache)."""

    model: nn.Module
    tokenizer: Any
    scorer: nn.Module
    name_outputs: Callable[[Any], dict[str, torch.Tensor]]
    fingerprint: str


def objective_params(objective: Objective, overrides: dict) -> dict:
    unknown = sorted(set(overrides) - set(objective.defaults))
    if unknown:
        raise ConfigError(f"objective.params: {objective.name} has no parameter(s) {unknown}; "
                          f"it takes {sorted(objective.defaults)}")
    return {**objective.defaults, **overrides}


def load_training_examples(config: TrainConfig, tokenizer, objective: Objective,
                           source: str | None = None) -> list[TokenizedExample]:
    """Rows of `source` (default `config.data.train`) in the objective's data format, tokenized and fitted to
    the limits. A dataset of another format fails here, before any training, naming the format needed.
    """
    source = source or config.data.train
    truncation = TruncationConfig(max_length=config.data.max_length, max_prompt_length=config.data.max_prompt_length,
                                  overlong=config.data.overlong)
    try:
        rows = load_examples(resolve_source(source), objective.data_format, with_kl="kl" in objective.slots)
        examples, _ = tokenize_examples(rows, tokenizer, truncation)
    except DataError as err:
        raise DataError(f"objective '{objective.name}' trains on '{objective.data_format}' data "
                        f"({FORMAT_FIELDS[objective.data_format]}); {source}:\n{err}") from None
    if not examples:
        raise ConfigError(f"no usable examples in {source}")
    return examples


def load_training_data(config: TrainConfig, objective: Objective,
                       examples: Sequence[TokenizedExample] | None) -> tuple[Any, list[TokenizedExample]]:
    """The tokenizer and the training examples (`examples` when given), read and checked before any model is
    loaded."""
    if objective.head == "reward" and config.model.lora is not None:
        raise ConfigError(f"objective '{objective.name}' trains a reward head; LoRA is not supported for it yet")
    tokenizer = load_tokenizer(config.model.name_or_path)
    examples = list(examples) if examples is not None else load_training_examples(config, tokenizer, objective)
    return tokenizer, examples


def load_policy(config: TrainConfig, objective: Objective, tokenizer: Any, slots: Slots, num_scores: int = 0) -> Policy:
    """The model to train with its scorer, chosen once by the objective's head. A causal LM is scored by
    completion log-probs (`policy_{slot}_logps`, `{slot}_lengths`, and token log-probs where the objective
    reads them); a reward model (`head="reward"`, a k-output head, k = `num_scores` per row) by the reward at
    each completion's last token (`{slot}_rewards`)."""
    if objective.head == "reward":
        model = load_reward_model(config.model.name_or_path, num_labels=num_scores or 1).model
    else:
        model = load(config.model.name_or_path).model
    disable_dropout(model)
    if config.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    fingerprint = weights_fingerprint(model) if objective.needs_reference else ""
    if config.model.lora is not None:
        model = apply_lora(model, config)
    if objective.head == "reward":
        return Policy(model, tokenizer, RewardScorer(model), functools.partial(reward_inputs, objective, slots),
                      fingerprint)
    return Policy(model, tokenizer, CompletionScorer(model, config.lm_head_chunk, per_token=objective.per_token),
                  lambda output: logp_inputs("policy", objective, slots, *output), fingerprint)


def disable_dropout(model: nn.Module) -> None:
    """Preference losses compare log-probs across forwards; dropout noise would bias them."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def apply_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    lora = config.model.lora
    peft_config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                             target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, peft_config)


def batch_layout(config: TrainConfig, model: nn.Module, pad_token_id: int) -> Collate:
    """Prefix sharing (one row per example, the prompt computed once; with `packing`, several examples per row)
    where the model's attention takes a block mask; otherwise, or when switched off, the plain layout of one
    row per completion."""
    if config.prefix_sharing and accepts_block_mask(model):
        return functools.partial(collate_shared_prefix, pad_token_id=pad_token_id, pack=config.packing,
                                 row_tokens=config.pack_row_tokens)
    if config.prefix_sharing:
        log.warning("prefix sharing needs sdpa or eager attention, the model uses %r: scoring each completion "
                    "in its own row instead", getattr(model.config, "_attn_implementation", None))
    return functools.partial(collate_rows, pad_token_id=pad_token_id)


def build_optimizer(config: TrainConfig, trainable: list[nn.Parameter], total_steps: int):
    """AdamW over the trainable parameters and the configured learning-rate schedule."""
    optim = config.optim
    optimizer = torch.optim.AdamW(trainable, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                  weight_decay=optim.weight_decay, fused=optim.fused)
    scheduler = get_scheduler(optim.schedule, optimizer, num_warmup_steps=optim.warmup_steps,
                              num_training_steps=total_steps)
    return optimizer, scheduler


def restore(checkpoint: Path | None, model: nn.Module, optimizer, scheduler, objective_state: Any,
            source: Any) -> TrainingState:
    """Step 0, or the state of `checkpoint`, whose weights, optimizer, scheduler, RNG, objective state and data
    source state are loaded into the given objects."""
    if checkpoint is None:
        return TrainingState(step=0)
    state = load_checkpoint(checkpoint, model, optimizer, scheduler)
    source.load_state_dict(load_source_state(checkpoint))
    if objective_state is not None:
        objective_state.load_state_dict(state.objective_state)
    log.info("resumed from %s (step %d)", checkpoint, state.step)
    return state


def make_accelerator(config: TrainConfig) -> Accelerator:
    """The run's `Accelerator`: its precision, the trackers of `report_to`, DeepSpeed's micro-batch size."""
    if config.mixed_precision == "bf16":
        warnings.warn("bf16 autocast: on the de-quantized SmolLM2 weights it gave spurious DPO rewards; "
                      "prefer fp32 (mixed_precision=no) unless you have checked your model", stacklevel=4)
    AcceleratorState._reset_state()  # each run sets its own precision; the process group is kept
    logging_dir = tracker_dir(Path(config.output_dir))
    # cpu=True on machines without an accelerator, so torchrun's processes form a gloo group.
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.accelerator.is_available(),
                              log_with=trackers(config) or None,
                              project_config=ProjectConfiguration(project_dir=config.output_dir,
                                                                  logging_dir=str(logging_dir)))
    if accelerator.distributed_type == DistributedType.DEEPSPEED:  # UNTESTED (docs/scale-out.md)
        if config.grad_accum != 1:
            raise ConfigError("grad_accum must be 1 under DeepSpeed: its engine steps the optimizer at every backward")
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
    if accelerator.num_processes == 1:
        warn_if_one_of_several(_launcher_processes())
    set_seed(config.seed)
    return accelerator


def _launcher_processes() -> int:
    """How many processes an `accelerate launch` parent asked for (1 if there is no such parent), read from the
    parent's command line (Linux /proc; 1 where it cannot be read)."""
    try:
        words = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return 1
    if not any(word.endswith("accelerate") for word in words[:2]) or "launch" not in words:
        return 1
    for flag in ("--num_processes", "--num-processes"):
        if flag in words[:-1]:
            value = words[words.index(flag) + 1]
            return int(value) if value.isdigit() else 1
    return 1


def warn_if_one_of_several(requested: int) -> None:
    """`accelerate launch --num_processes N` without `--multi_gpu` (or on CPU) starts one process only."""
    if requested > 1:
        log.warning("accelerate launch asked for %d processes but this run has 1: accelerate starts several only "
                    "with --multi_gpu (GPUs); on CPUs use torchrun --nproc_per_node %d -m alignkit.cli.main train",
                    requested, requested)


def split_eval(config: TrainConfig, tokenizer: Any, objective: Objective, examples: list[TokenizedExample]
               ) -> tuple[list[TokenizedExample], list[TokenizedExample] | None]:
    """(training examples, eval examples or None): `data.eval` read like `data.train`, or `data.eval_fraction`
    of the training examples held out (a seeded draw; at least one example each side)."""
    if config.data.eval is not None:
        return examples, load_training_examples(config, tokenizer, objective, source=config.data.eval)
    if config.data.eval_fraction == 0:
        return examples, None
    held = min(len(examples) - 1, max(1, round(config.data.eval_fraction * len(examples))))
    if held < 1:
        raise ConfigError(f"data.eval_fraction={config.data.eval_fraction}: data.train has {len(examples)} example, "
                          "none left to hold out")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(config.seed)).tolist()
    chosen = set(order[:held])
    return ([e for i, e in enumerate(examples) if i not in chosen],
            [e for i, e in enumerate(examples) if i in chosen])


def warn_if_smaller_than_a_step(config: TrainConfig, examples: int, processes: int) -> None:
    step = config.batch_size * config.grad_accum * processes
    if examples < step:
        log.warning("data.train has %d examples, fewer than one optimizer step takes (batch_size %d x grad_accum "
                    "%d x %d processes = %d): each step sees every example once, fewer than configured",
                    examples, config.batch_size, config.grad_accum, processes, step)


def reference_scores_for(config: TrainConfig, objective: Objective, policy: Policy, model: nn.Module,
                         examples: Sequence[TokenizedExample], collate: Collate, accelerator: Accelerator
                         ) -> dict[str, torch.Tensor] | None:
    """The precomputed (and cached) reference log-probs of `examples`, or None when the objective needs no
    reference or `reference.precompute=false`."""
    if not objective.needs_reference or not config.reference.precompute:
        return None
    # Under the same autocast as training, so policy == reference scores the same at the first step.
    with accelerator.main_process_first(), accelerator.autocast():
        return precompute_reference(config, model, policy.tokenizer, examples, policy.fingerprint, collate,
                                    accelerator.device)


def write_config(config: TrainConfig, checkpoint: Path | None, diff: dict, step: int, main: bool) -> str:
    """config.yaml: the configuration in use, with one line for this start or resume under the earlier ones."""
    path = Path(config.output_dir) / "config.yaml"
    past = resumes.history(path.read_text()) if checkpoint is not None and path.exists() else []
    event = (f"resumed at step {step} from {checkpoint.name}; {resumes.describe(diff)}" if checkpoint is not None
             else "started at step 0")
    text = resumes.config_text(config, past, event)
    if main:
        path.write_text(text)
        if checkpoint is not None:
            log.info("--resume from %s: %s", checkpoint.name, resumes.describe(diff))
    return text
