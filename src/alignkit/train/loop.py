"""One training loop for every objective, on `accelerate`.

Loss scaling: an optimizer step averages the per-example losses over *all* examples of the step (every
micro-batch of the accumulation window, on every process). Each micro-batch back-propagates
`sum(losses) · world_size / examples_in_step` (distributed data parallel averages over processes), so
batch 4 × 1 step and batch 1 × 4 accumulation give the same gradient, ragged last batches included.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import shutil
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch import nn
from transformers import get_scheduler

from alignkit.data.builtin import resolve_source
from alignkit.data import (
    DataError,
    TruncationConfig,
    collate_pairs,
    collate_shared_prefix,
    load_preferences,
    pair_tokens,
    tokenize_preferences,
)
from alignkit.data.collation import Grouped
from alignkit.data.examples import FORMAT_FIELDS, load_examples
from alignkit.data.tokenization import tokenize_examples
from alignkit.models import load, save_model_atomically
from alignkit.models.loading import load_tokenizer
from alignkit.models.logprobs import SCORER_INPUTS, CompletionScorer, SequenceLogps, accepts_block_mask, grouped_logps
from alignkit.models.reward_head import RewardScorer, load_reward_model
from alignkit.models.reference import weights_fingerprint
from alignkit.objectives import Objective, get
from alignkit.objectives.registry import FORMATS
from alignkit.train.checkpoint import (
    TrainingState,
    checkpoint_dir,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from alignkit.train.config import ConfigError, TrainConfig, to_yaml
from alignkit.train.metrics import MetricsLog
from alignkit.train.plan import BatchPlan
from alignkit.train.references import Collate, completions_per_example, online_reference, precompute_reference

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    steps: int
    metrics: dict[str, float]  # of the last step


def objective_params(objective: Objective, overrides: dict) -> dict:
    unknown = sorted(set(overrides) - set(objective.defaults))
    if unknown:
        raise ConfigError(f"objective.params: {objective.name} has no parameter(s) {unknown}; "
                          f"it takes {sorted(objective.defaults)}")
    return {**objective.defaults, **overrides}


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


def load_training_examples(config: TrainConfig, tokenizer, objective: Objective) -> list[Grouped]:
    """Rows of `config.data.train` in the objective's data format, tokenized and fitted to the limits.

    A dataset of another format fails here, before any training, naming the format the objective needs.
    """
    truncation = TruncationConfig(max_length=config.data.max_length, max_prompt_length=config.data.max_prompt_length,
                                  overlong=config.data.overlong)
    source = resolve_source(config.data.train)
    try:
        if objective.data_format == "preference":
            examples, _ = tokenize_preferences(load_preferences(source), tokenizer, truncation)
        else:
            rows = load_examples(source, objective.data_format, with_kl="kl" in objective.slots)
            examples, _ = tokenize_examples(rows, tokenizer, truncation)
    except DataError as err:
        raise DataError(f"objective '{objective.name}' trains on '{objective.data_format}' data "
                        f"({FORMAT_FIELDS[objective.data_format]}); {config.data.train}:\n{err}") from None
    if not examples:
        raise ConfigError(f"data.train: no usable examples in {config.data.train}")
    return examples


def batch_layout(config: TrainConfig, model: nn.Module, pad_token_id: int) -> Collate:
    """Prefix sharing (one row per pair, the prompt computed once; with `packing`, several pairs per row)
    where the model's attention takes a block mask; otherwise, or when switched off, the plain layout of
    two rows per pair."""
    if config.prefix_sharing and accepts_block_mask(model):
        return functools.partial(collate_shared_prefix, pad_token_id=pad_token_id, pack=config.packing,
                                 row_tokens=config.pack_row_tokens)
    if config.prefix_sharing:
        log.warning("prefix sharing needs sdpa or eager attention, the model uses %r: scoring chosen and "
                    "rejected in separate rows instead", getattr(model.config, "_attn_implementation", None))
    return functools.partial(collate_pairs, pad_token_id=pad_token_id)


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train `config.model` with `config.objective` on `config.data.train`; see TrainConfig for the knobs."""
    run = start_run(config, resume=resume)
    metrics: dict[str, float] = {}
    while run.state.step < run.plan.total_steps:
        metrics = run.step()
    return run.finish(metrics)


@dataclass
class TrainingRun:
    """A prepared run, stepped by `step()` (one optimizer step) and closed by `finish()`.

    `train()` is the usual entry point; this is for driving steps one at a time (benchmarks, notebooks).
    """

    config: TrainConfig
    accelerator: Accelerator
    model: nn.Module
    tokenizer: object
    scorer: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    plan: BatchPlan
    state: TrainingState
    step_runner: "StepRunner"
    metrics_log: MetricsLog

    def step(self) -> dict[str, float]:
        """Run optimizer step `state.step` and return its metrics (loss, rewards, tokens_in_step, ...)."""
        config, state = self.config, self.state
        started = time.perf_counter()
        metrics = self.step_runner.run(self.plan.step_batches(state.step), self.plan.step_size(state.step))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens_seen += int(metrics["tokens_in_step"])
        metrics["tokens_seen"] = state.tokens_seen
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        metrics["tokens_per_s"] = metrics["tokens_in_step"] / (time.perf_counter() - started)
        if state.step % config.log_every == 0 or state.step == self.plan.total_steps:
            self.metrics_log.log(state.step, metrics)
        self.metrics_log.advance(metrics)
        if config.save_every and state.step % config.save_every == 0 and state.step < self.plan.total_steps:
            self._save()
        return metrics

    def finish(self, metrics: dict[str, float]) -> TrainResult:
        """Write the last checkpoint (if not written) and `final/`, loadable with `from_pretrained`."""
        self.metrics_log.close()
        output_dir = Path(self.config.output_dir)
        if not checkpoint_dir(output_dir, self.state.step).exists():
            self._save()
        final_dir = output_dir / "final"
        if self.accelerator.is_main_process:
            save_model_atomically(self.accelerator.unwrap_model(self.scorer).model, self.tokenizer, final_dir)
        self.accelerator.wait_for_everyone()
        return TrainResult(output_dir=output_dir, final_dir=final_dir, steps=self.state.step, metrics=metrics)

    def _save(self) -> None:
        if "state" in self.step_runner.params:
            self.state.objective_state = self.step_runner.params["state"].state_dict()
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_checkpoint(Path(self.config.output_dir), self.model, self.tokenizer, self.optimizer, self.scheduler,
                            self.state, self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()


def load_model_and_data(config: TrainConfig, objective: Objective,
                        pairs: Sequence[Grouped] | None) -> tuple[nn.Module, object, list[Grouped]]:
    """The model to train (a causal LM, or a reward model for `head="reward"` objectives), its tokenizer,
    and the tokenized training examples (`pairs` when given)."""
    if objective.head == "lm":
        model, tokenizer, _ = load(config.model.name_or_path)
        examples = list(pairs) if pairs is not None else load_training_examples(config, tokenizer, objective)
        return model, tokenizer, examples
    if config.model.lora is not None:
        raise ConfigError(f"objective '{objective.name}' trains a reward head; LoRA is not supported for it yet")
    tokenizer = load_tokenizer(config.model.name_or_path)
    pairs = list(pairs) if pairs is not None else load_training_examples(config, tokenizer, objective)
    # A k-output head: one output, or one per score of the data's rows (rm_multi).
    model = load_reward_model(config.model.name_or_path, num_labels=len(pairs[0].scores) or 1).model
    return model, tokenizer, pairs


def start_run(config: TrainConfig, *, resume: bool = False,
              pairs: Sequence[Grouped] | None = None) -> TrainingRun:
    """Load the model and data, precompute reference log-probs, build the optimizer; resume if asked.

    `pairs` replaces `config.data.train` with already tokenized examples (e.g. to feed two trainers the
    same token ids).
    """
    if config.mixed_precision == "bf16":
        warnings.warn("bf16 autocast: on the de-quantized SmolLM2 weights it gave spurious DPO rewards; "
                      "prefer fp32 (mixed_precision=no) unless you have checked your model", stacklevel=3)
    # Each run sets its own precision; the process-level distributed state (PartialState) is kept.
    AcceleratorState._reset_state()
    # cpu=True on machines without an accelerator, so torchrun's processes form a gloo group.
    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.accelerator.is_available())
    set_seed(config.seed)
    output_dir = Path(config.output_dir)
    if not resume and not config.overwrite and latest_checkpoint(output_dir) is not None:
        raise ConfigError(f"output_dir {output_dir} already holds a run; pass --resume to continue it, "
                          "overwrite=true to start again there, or another output_dir")
    if not resume and config.overwrite and accelerator.is_main_process:
        shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)
    objective = get(config.objective.name)
    params = objective_params(objective, config.objective.params)

    model, tokenizer, pairs = load_model_and_data(config, objective, pairs)
    disable_dropout(model)
    if config.activation_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    policy_fingerprint = weights_fingerprint(model) if objective.needs_reference else ""
    if config.model.lora is not None:
        model = apply_lora(model, config)
    model.to(accelerator.device)
    collate = batch_layout(config, model, tokenizer.pad_token_id)

    reference_scores, reference = None, None
    if objective.needs_reference and config.reference.precompute:
        # Under the same autocast as training, so policy == reference scores the same at the first step.
        with accelerator.main_process_first(), accelerator.autocast():
            reference_scores = precompute_reference(config, model, tokenizer, pairs, policy_fingerprint,
                                                    collate, accelerator.device)
    elif objective.needs_reference:
        reference = online_reference(config, model, accelerator.device)

    plan = BatchPlan(num_examples=len(pairs), batch_size=config.batch_size, grad_accum=config.grad_accum,
                     epochs=config.epochs, max_steps=config.max_steps, seed=config.seed,
                     world_size=accelerator.num_processes, rank=accelerator.process_index)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optim = config.optim
    optimizer = torch.optim.AdamW(trainable, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps,
                                  weight_decay=optim.weight_decay, fused=optim.fused)
    scheduler = get_scheduler(config.optim.schedule, optimizer, num_warmup_steps=config.optim.warmup_steps,
                              num_training_steps=plan.total_steps)
    # The scheduler is stepped by hand: accelerate's wrapper would step it once per process.
    scorer = RewardScorer(model) if objective.head == "reward" else CompletionScorer(model, config.lm_head_chunk)
    scorer, optimizer = accelerator.prepare(scorer, optimizer)

    state = TrainingState(step=0)
    checkpoint = latest_checkpoint(output_dir) if resume else None
    objective_state = objective.state() if objective.state is not None else None
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        if objective_state is not None:
            objective_state.load_state_dict(state.objective_state)
        log.info("resumed from %s (step %d)", checkpoint, state.step)
    elif resume:
        log.warning("--resume: no checkpoint in %s; starting from step 0", output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(to_yaml(config))
    metrics_log = MetricsLog(output_dir, plan.total_steps, state.step, tensorboard=config.tensorboard,
                             progress=config.progress, enabled=accelerator.is_main_process)
    if objective_state is not None:
        params = {**params, "state": objective_state}
    step_runner = StepRunner(accelerator, scorer, objective, params, pairs, collate,
                             reference_scores, reference, trainable, config.optim.max_grad_norm)
    scorer.train()
    return TrainingRun(config, accelerator, model, tokenizer, scorer, optimizer, scheduler, plan, state,
                       step_runner, metrics_log)


class StepRunner:
    """Forward + backward of one optimizer step's micro-batches; returns the step's averaged metrics."""

    def __init__(self, accelerator: Accelerator, scorer: nn.Module, objective: Objective, params: dict,
                 pairs: Sequence[Grouped], collate: Collate, reference_scores: dict | None, reference,
                 trainable: list[nn.Parameter], max_grad_norm: float | None):
        self.accelerator, self.scorer, self.objective, self.params = accelerator, scorer, objective, params
        self.pairs, self.collate = pairs, collate
        self.slots, self.per_example = pairs[0].slots, completions_per_example(pairs)
        self.reference_scores, self.reference = reference_scores, reference
        self.trainable, self.max_grad_norm = trainable, max_grad_norm

    def run(self, micro_batches: list[list[int]], examples_in_step: int) -> dict[str, float]:
        totals: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=self.accelerator.device))
        scale = self.accelerator.num_processes / examples_in_step
        for number, indices in enumerate(micro_batches):
            batch = self.collate([self.pairs[i] for i in indices])
            batch = {key: value.to(self.accelerator.device) for key, value in batch.items()}
            batch["position"] = torch.tensor(indices)  # rows of the precomputed reference scores
            last = number == len(micro_batches) - 1
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.scorer):
                with self.accelerator.autocast():
                    losses, metrics = self._losses(batch)
                self.accelerator.backward(losses.sum() * scale)
            totals["loss"] += losses.detach().sum()
            for key, value in metrics.items():
                totals[key] += value.detach().float().sum()
            totals["tokens"] += pair_tokens(batch)
        if self.max_grad_norm is not None:
            totals["grad_norm"] = self.accelerator.clip_grad_norm_(self.trainable, self.max_grad_norm).detach()
        return self._average(totals, examples_in_step)

    def _losses(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.objective.head == "reward":
            values = self._rewards(batch)
        else:
            values = self._inputs("policy", grouped_logps(self.scorer, batch, self.per_example), with_lengths=True)
        if self.objective.needs_reference:
            values.update(self._inputs("ref", self._reference(batch)))
        values.update({field: batch[field] for field in ("labels", "scores") if field in batch})
        missing = [name for name in self.objective.inputs if name not in values]
        if missing:
            raise DataError(f"objective '{self.objective.name}' needs {missing}, which this data does not provide")
        # By name: the first inputs are positional in every signature, extras (e.g. RPO's chosen_lengths) keywords.
        return self.objective.fn(**{name: values[name] for name in self.objective.inputs}, **self.params)

    def _inputs(self, model: str, completions: list[SequenceLogps], with_lengths: bool = False) -> dict:
        """`{model}_{slot}_logps` ([B], or [B, M] for list slots) reduced as the objective declares, and
        `{slot}_lengths`, from the K per-completion scores of a batch."""
        kinds, values, k = dict(FORMATS[self.objective.data_format]), {}, 0
        for slot, size in self.slots:
            part, k = completions[k:k + size], k + size
            if kinds[slot] == "one":
                scores = part[0]
            else:
                scores = SequenceLogps(torch.stack([p.sum for p in part], 1), torch.stack([p.count for p in part], 1))
            values[f"{model}_{slot}_logps"] = scores.sum if self.objective.logps == "sum" else scores.mean
            if with_lengths:
                values[f"{slot}_lengths"] = scores.count
        return values

    def _rewards(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`{slot}_rewards` from a reward model: [B] for a one-output head, [B, k] for k outputs."""
        inputs = {key: batch[key] for key in SCORER_INPUTS if key in batch}
        rewards = self.scorer(**inputs).chunk(self.per_example)  # K tensors of [B, k]
        values, k = {}, 0
        for slot, size in self.slots:
            part, k = rewards[k:k + size], k + size
            value = part[0] if size == 1 else torch.stack(part, 1)
            values[f"{slot}_rewards"] = value.squeeze(-1) if value.size(-1) == 1 else value
        return values

    def _reference(self, batch: dict[str, torch.Tensor]) -> list[SequenceLogps]:
        if self.reference_scores is not None:
            rows = batch["position"]
            sums = self.reference_scores["sums"][rows].to(self.accelerator.device)
            counts = self.reference_scores["counts"][rows].to(self.accelerator.device)
            return [SequenceLogps(sums[:, k], counts[:, k]) for k in range(self.per_example)]
        with self.reference() as reference, torch.no_grad():
            scorer = CompletionScorer(reference, self.accelerator.unwrap_model(self.scorer).head_chunk)
            return grouped_logps(scorer, batch, self.per_example)

    def _average(self, totals: dict[str, torch.Tensor], examples_in_step: int) -> dict[str, float]:
        grad_norm = totals.pop("grad_norm", None)
        summed = {key: self.accelerator.reduce(value, reduction="sum").item() for key, value in totals.items()}
        tokens = summed.pop("tokens")
        averaged = {key: value / examples_in_step for key, value in summed.items()}
        averaged["tokens_in_step"] = tokens
        if grad_norm is not None:
            averaged["grad_norm"] = grad_norm.item()
        return averaged
