"""The pieces a training run is built from: the model to train and how it is scored, the training examples,
the batch layout, the reference, the optimizer, and the state to resume from. `Trainer.prepare` calls these
in order."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
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
from alignkit.train.checkpoint import TrainingState, load_checkpoint
from alignkit.train.config import ConfigError, TrainConfig
from alignkit.train.references import Collate

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


def load_training_examples(config: TrainConfig, tokenizer, objective: Objective) -> list[TokenizedExample]:
    """Rows of `config.data.train` in the objective's data format, tokenized and fitted to the limits.

    A dataset of another format fails here, before any training, naming the format the objective needs.
    """
    truncation = TruncationConfig(max_length=config.data.max_length, max_prompt_length=config.data.max_prompt_length,
                                  overlong=config.data.overlong)
    try:
        rows = load_examples(resolve_source(config.data.train), objective.data_format, with_kl="kl" in objective.slots)
        examples, _ = tokenize_examples(rows, tokenizer, truncation)
    except DataError as err:
        raise DataError(f"objective '{objective.name}' trains on '{objective.data_format}' data "
                        f"({FORMAT_FIELDS[objective.data_format]}); {config.data.train}:\n{err}") from None
    if not examples:
        raise ConfigError(f"data.train: no usable examples in {config.data.train}")
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


def load_policy(config: TrainConfig, objective: Objective, tokenizer: Any,
                examples: Sequence[TokenizedExample]) -> Policy:
    """The model to train with its scorer, chosen once by the objective's head. A causal LM is scored by
    completion log-probs (`policy_{slot}_logps`, `{slot}_lengths`); a reward model (`head="reward"`, a k-output
    head, k the scores per row) by the reward at each completion's last token (`{slot}_rewards`)."""
    slots: Slots = examples[0].slots
    if objective.head == "reward":
        model = load_reward_model(config.model.name_or_path, num_labels=len(examples[0].scores) or 1).model
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
    return Policy(model, tokenizer, CompletionScorer(model, config.lm_head_chunk),
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


def restore(checkpoint: Path | None, model: nn.Module, optimizer, scheduler, objective_state: Any) -> TrainingState:
    """Step 0, or the state of `checkpoint`, whose weights, optimizer, scheduler, RNG and objective state are
    loaded into the given objects."""
    if checkpoint is None:
        return TrainingState(step=0)
    state = load_checkpoint(checkpoint, model, optimizer, scheduler)
    if objective_state is not None:
        objective_state.load_state_dict(state.objective_state)
    log.info("resumed from %s (step %d)", checkpoint, state.step)
    return state
