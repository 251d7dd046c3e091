"""One training loop for every objective, on `accelerate`: `train(load_config("recipe.yaml", ["key=value"]))`.

`Trainer.prepare` builds a run (model and scorer, data source, reference, optimizer, resumed state);
`Trainer.step` is one optimizer step, read top to bottom: micro-batches from the data source → policy (and
reference) scores → the objective's losses → backward; clip, optimizer step, log, save.

Loss scaling: an optimizer step averages the per-example losses over *all* examples of the step (every
micro-batch of the accumulation window, on every process). Each micro-batch back-propagates
`sum(losses) · world_size / examples_in_step` (distributed data parallel averages over processes), so
batch 4 × 1 step and batch 1 × 4 accumulation give the same gradient, ragged last batches included.
"""

from __future__ import annotations

import contextlib
import logging
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import set_seed
from torch import nn

from alignkit.data import TokenizedExample, sequence_token_count
from alignkit.models import save_model_atomically
from alignkit.objectives import Objective, get
from alignkit.objectives.registry import FIELDS, logp_inputs
from alignkit.train.checkpoint import TrainingState, checkpoint_dir, save_checkpoint
from alignkit.train.config import TrainConfig, to_yaml
from alignkit.train.metrics import MetricsLog
from alignkit.train.plan import BatchPlan
from alignkit.train.references import (Batch, ReferenceScores, online_reference, precompute_reference,
                                       precomputed_reference, scorer_inputs)
from alignkit.train.setup import (batch_layout, build_optimizer, check_output_dir, load_policy, objective_params,
                                  resume_state)
from alignkit.train.sources import DataSource, FixedDataset

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    final_dir: Path
    steps: int
    metrics: dict[str, float]  # of the last step


def train(config: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train `config.model` with `config.objective` on `config.data.train`; see TrainConfig for the knobs."""
    trainer = Trainer.prepare(config, resume=resume)
    metrics: dict[str, float] = {}
    while trainer.state.step < trainer.source.total_steps:
        metrics = trainer.step()
    return trainer.finish(metrics)


@dataclass
class Trainer:
    """A prepared run: `step()` runs one optimizer step, `finish()` writes `final/`."""

    config: TrainConfig
    accelerator: Accelerator
    objective: Objective
    params: dict[str, Any]  # the objective's parameters (and its `state` object, if it keeps one)
    model: nn.Module
    tokenizer: Any
    scorer: nn.Module  # the model's scoring forward, wrapped by accelerate
    name_outputs: Callable[[Any], dict[str, torch.Tensor]]  # scorer output -> the objective's policy inputs
    reference: ReferenceScores | None  # batch -> reference (sums, counts); None for reference-free objectives
    source: DataSource
    optimizer: torch.optim.Optimizer
    scheduler: Any  # stepped by hand: accelerate's wrapper would step it once per process
    state: TrainingState
    metrics_log: MetricsLog

    @classmethod
    def prepare(cls, config: TrainConfig, *, resume: bool = False,
                examples: Sequence[TokenizedExample] | None = None) -> Trainer:
        """Load the model and data, precompute reference log-probs, build the optimizer; resume if asked.

        `examples` replaces `config.data.train` with already tokenized examples (e.g. to feed two trainers
        the same token ids).
        """
        if config.mixed_precision == "bf16":
            warnings.warn("bf16 autocast: on the de-quantized SmolLM2 weights it gave spurious DPO rewards; "
                          "prefer fp32 (mixed_precision=no) unless you have checked your model", stacklevel=3)
        AcceleratorState._reset_state()  # each run sets its own precision; the process group is kept
        # cpu=True on machines without an accelerator, so torchrun's processes form a gloo group.
        accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=not torch.accelerator.is_available())
        set_seed(config.seed)
        check_output_dir(config, resume, accelerator)
        objective = get(config.objective.name)
        params = objective_params(objective, config.objective.params)
        policy, examples = load_policy(config, objective, examples)
        model = policy.model.to(accelerator.device)
        collate = batch_layout(config, model, policy.tokenizer.pad_token_id)
        reference_scores, reference = None, None
        if objective.needs_reference and config.reference.precompute:
            # Under the same autocast as training, so policy == reference scores the same at the first step.
            with accelerator.main_process_first(), accelerator.autocast():
                reference_scores = precompute_reference(config, model, policy.tokenizer, examples,
                                                        policy.fingerprint, collate, accelerator.device)
            reference = precomputed_reference
        elif objective.needs_reference:
            reference = online_reference(config, model, accelerator.device)
        plan = BatchPlan(num_examples=len(examples), batch_size=config.batch_size, grad_accum=config.grad_accum,
                         epochs=config.epochs, max_steps=config.max_steps, seed=config.seed,
                         world_size=accelerator.num_processes, rank=accelerator.process_index)
        source = FixedDataset(examples, collate, plan, reference_scores)
        optimizer, scheduler = build_optimizer(config, [p for p in model.parameters() if p.requires_grad],
                                               source.total_steps)
        scorer, optimizer = accelerator.prepare(policy.scorer, optimizer)
        objective_state = objective.state() if objective.state is not None else None
        state = resume_state(config, resume, model, optimizer, scheduler, objective_state)
        if objective_state is not None:
            params = {**params, "state": objective_state}
        output_dir = Path(config.output_dir)
        if accelerator.is_main_process:
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / "config.yaml").write_text(to_yaml(config))
        metrics_log = MetricsLog(output_dir, source.total_steps, state.step, tensorboard=config.tensorboard,
                                 progress=config.progress, enabled=accelerator.is_main_process)
        scorer.train()
        return cls(config, accelerator, objective, params, model, policy.tokenizer, scorer, policy.name_outputs,
                   reference, source, optimizer, scheduler, state, metrics_log)

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective's per-example losses and metrics on one micro-batch: the policy's scores (and the
        reference's), named as the objective's inputs, with the batch's labels and scores."""
        values = self.name_outputs(self.scorer(**scorer_inputs(batch)))
        if self.reference is not None:
            values.update(logp_inputs("ref", self.objective, self.source.slots, *self.reference(batch)))
        values.update({field: batch[field] for field in FIELDS if field in batch})
        return self.objective(values, self.params)

    def step(self) -> dict[str, float]:
        """Run optimizer step `state.step` and return its metrics (loss, rewards, tokens_in_step, ...)."""
        started = time.perf_counter()
        device = self.accelerator.device
        batches = self.source.micro_batches(self.state.step)
        examples_in_step = self.source.examples_in_step(self.state.step)
        totals: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
        for number, batch in enumerate(batches):
            batch = {key: value.to(device) for key, value in batch.items()}
            last = number == len(batches) - 1  # gradients are synchronised across processes once, at the end
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.scorer):
                with self.accelerator.autocast():
                    losses, metrics = self.loss(batch)
                self.accelerator.backward(losses.sum() * self.accelerator.num_processes / examples_in_step)
            totals["loss"] += losses.detach().sum()
            for key, value in metrics.items():
                totals[key] += value.detach().float().sum()
            totals["tokens"] += sequence_token_count(batch)
        grad_norm = None
        if self.config.optim.max_grad_norm is not None:
            trainable = [p for p in self.model.parameters() if p.requires_grad]
            grad_norm = self.accelerator.clip_grad_norm_(trainable, self.config.optim.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        metrics = self._averaged(totals, examples_in_step, grad_norm)
        self.state.tokens_seen += int(metrics["tokens_in_step"])
        metrics.update(tokens_seen=self.state.tokens_seen, lr=self.scheduler.get_last_lr()[0],
                       tokens_per_s=metrics["tokens_in_step"] / (time.perf_counter() - started))
        self._log(metrics)
        return metrics

    def _averaged(self, totals: dict[str, torch.Tensor], examples_in_step: int,
                  grad_norm: torch.Tensor | None) -> dict[str, float]:
        """Per-example means over the whole step (all micro-batches and processes); tokens summed."""
        summed = {key: self.accelerator.reduce(value, reduction="sum").item() for key, value in totals.items()}
        tokens = summed.pop("tokens")
        averaged = {key: value / examples_in_step for key, value in summed.items()}
        averaged["tokens_in_step"] = tokens
        if grad_norm is not None:
            averaged["grad_norm"] = grad_norm.item()
        return averaged

    def _log(self, metrics: dict[str, float]) -> None:
        """Log the step (every `log_every` steps and the last) and checkpoint it every `save_every` steps."""
        step, total = self.state.step, self.source.total_steps
        if step % self.config.log_every == 0 or step == total:
            self.metrics_log.log(step, metrics)
        self.metrics_log.advance(metrics)
        if self.config.save_every and step % self.config.save_every == 0 and step < total:
            self.save()

    def save(self) -> None:
        """A checkpoint of the current step (weights, optimizer, scheduler, RNG, objective state)."""
        if "state" in self.params:
            self.state.objective_state = self.params["state"].state_dict()
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_checkpoint(Path(self.config.output_dir), self.model, self.tokenizer, self.optimizer, self.scheduler,
                            self.state, self.config.keep_checkpoints)
        self.accelerator.wait_for_everyone()

    def finish(self, metrics: dict[str, float]) -> TrainResult:
        """Write the last checkpoint (if not written) and `final/`, loadable with `from_pretrained`."""
        self.metrics_log.close()
        output_dir = Path(self.config.output_dir)
        if not checkpoint_dir(output_dir, self.state.step).exists():
            self.save()
        final_dir = output_dir / "final"
        if self.accelerator.is_main_process:
            save_model_atomically(self.accelerator.unwrap_model(self.scorer).model, self.tokenizer, final_dir)
        self.accelerator.wait_for_everyone()
        return TrainResult(output_dir=output_dir, final_dir=final_dir, steps=self.state.step, metrics=metrics)
