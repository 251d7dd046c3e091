"""One training loop for every objective, on `accelerate`: `train(load_config("recipe.yaml", ["key=value"]))`.

`Trainer.prepare` builds a run (output folder, data, model and scorer, data source, reference, optimizer,
resumed state); `Trainer.step` is one optimizer step, read top to bottom: micro-batches from the data source →
policy (and reference) scores → the objective's losses → backward; clip, the non-finite guard, optimizer step,
log, save.

Loss scaling: an optimizer step averages the per-example losses over *all* examples of the step (every
micro-batch of the accumulation window, on every process). Each micro-batch back-propagates
`sum(losses) · world_size / examples_in_step` (distributed data parallel averages over processes), so
batch 4 × 1 step and batch 1 × 4 accumulation give the same gradient, ragged last batches included.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Sequence

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from torch import nn

from alignkit.data import TokenizedExample, sequence_token_count
from alignkit.models import save_model_atomically
from alignkit.models.export import ADAPTER_CONFIG, set_adapter_base
from alignkit.objectives import Objective, get
from alignkit.objectives.registry import FIELDS, logp_inputs, sampled_inputs
from alignkit.train import resume as resumes
from alignkit.train import rundir
from alignkit.train.checkpoint import TrainingState, checkpoint_dir, latest_checkpoint, save_checkpoint
from alignkit.train.config import TrainConfig, trackers
from alignkit.train.guard import NonFiniteError, UpdateSnapshot, finite, parameters_finite
from alignkit.train.metrics import MetricsLog
from alignkit.train.plan import BatchPlan
from alignkit.train.references import (Batch, ReferenceScores, data_fingerprint, online_reference,
                                       precomputed_reference, scorer_inputs)
from alignkit.models.loading import load_tokenizer
from alignkit.train.online import prompts_fingerprint
from alignkit.train.online_setup import load_prompts, online_source
from alignkit.train.setup import (Policy, batch_layout, build_optimizer, load_policy, load_training_data,
                                  make_accelerator, objective_params, reference_scores_for, restore, split_eval,
                                  warn_if_smaller_than_a_step, write_config)
from alignkit.train.sources import DataSource, EvalSet, FixedDataset

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
    try:
        metrics: dict[str, float] = {}
        while trainer.state.step < trainer.source.total_steps:
            metrics = trainer.step()
        return trainer.finish(metrics)
    finally:
        trainer.close()


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
    config_yaml: str  # what config.yaml says (the configuration, with the run's starts and resumes)
    lock: IO | None  # the output folder's lock (main process)
    eval_set: EvalSet | None = None  # held-out examples scored every eval_every steps and after the last

    @classmethod
    def prepare(cls, config: TrainConfig, *, resume: bool = False,
                examples: Sequence[TokenizedExample] | None = None) -> Trainer:
        """Check and lock the output folder, load the data and the model, precompute reference log-probs, build
        the optimizer; resume if asked. Bad data, config and resume requests fail before a model is loaded.

        `examples` replaces `config.data.train` with already tokenized examples (e.g. to feed two trainers
        the same token ids).
        """
        accelerator = make_accelerator(config)
        objective = get(config.objective.name)
        params = objective_params(objective, config.objective.params)
        checkpoint, diff = resumes.find_checkpoint(config, accelerator.num_processes) if resume else (None, {})
        lock = rundir.claim(config, resume) if accelerator.is_main_process else None
        try:
            return cls._build(config, accelerator, objective, params, checkpoint, diff, lock, examples)
        except BaseException:
            if lock is not None:
                lock.close()
            raise

    @classmethod
    def _build(cls, config: TrainConfig, accelerator: Accelerator, objective: Objective, params: dict,
               checkpoint: Path | None, diff: dict, lock: IO | None,
               examples: Sequence[TokenizedExample] | None) -> Trainer:
        """The run in the claimed output folder (see `prepare`)."""
        if objective.data_format == "prompts":
            policy, source, reference, eval_set = _online_data(config, accelerator, objective, params, checkpoint)
        else:
            policy, source, reference, eval_set = _fixed_data(config, accelerator, objective, checkpoint, examples)
        model, tokenizer = policy.model, policy.tokenizer
        optimizer, scheduler = build_optimizer(config, [p for p in model.parameters() if p.requires_grad],
                                               source.total_steps)
        scorer, optimizer = accelerator.prepare(policy.scorer, optimizer)
        objective_state = objective.state() if objective.state is not None else None
        state = restore(checkpoint, model, optimizer, scheduler, objective_state, source)
        resumes.apply_optimizer_settings(config, optimizer, scheduler, diff)
        state.data_fingerprint, state.world_size = source.fingerprint, accelerator.num_processes
        if objective_state is not None:
            params = {**params, "state": objective_state}
        config_yaml = write_config(config, checkpoint, diff, state.step, accelerator.is_main_process)
        metrics_log = MetricsLog(Path(config.output_dir), source.total_steps, state.step, accelerator=accelerator,
                                 trackers=trackers(config), config=resumes.flat(config), progress=config.progress)
        scorer.train()
        return cls(config, accelerator, objective, params, model, tokenizer, scorer, policy.name_outputs, reference,
                   source, optimizer, scheduler, state, metrics_log, config_yaml, lock, eval_set)

    def loss(self, batch: Batch, params: dict[str, Any] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective's per-example losses and metrics on one micro-batch: the policy's scores (and the
        reference's), named as the objective's inputs, with the batch's labels and scores."""
        values = self.name_outputs(self.scorer(**scorer_inputs(batch)))
        if self.reference is not None:
            values.update(logp_inputs("ref", self.objective, self.source.slots, *self.reference(batch)))
        if "rewards" in batch:  # samples drawn online: their rewards and the sampling policy's log-probs
            values.update(sampled_inputs(self.objective, self.source.slots, batch, values))
        values.update({field: batch[field] for field in FIELDS + self.objective.prepared if field in batch})
        return self.objective(values, self.params if params is None else params)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The objective's mean loss and metrics over the eval split, as `eval/...` keys ({} without one). A
        stateful objective is scored with a copy of its state, so evaluating never changes training."""
        if self.eval_set is None:
            return {}
        params = {**self.params, "state": copy.deepcopy(self.params["state"])} if "state" in self.params \
            else self.params
        device = self.accelerator.device
        totals: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
        for batch in self.eval_set.batches():
            batch = {key: value.to(device) for key, value in batch.items()}
            with self.accelerator.autocast():
                losses, metrics = self.loss(batch, params)
            totals["loss"] += losses.sum()
            for key, value in metrics.items():
                totals[key] += value.float().sum()
            totals["tokens"] += sequence_token_count(batch)
        averaged = self._averaged(totals, len(self.eval_set.examples))
        return {f"eval/{key}": value for key, value in averaged.items() if key != "tokens_in_step"}

    def step(self) -> dict[str, float]:
        """Run optimizer step `state.step` and return its metrics (loss, rewards, tokens_in_step, ...)."""
        started = time.perf_counter()
        device = self.accelerator.device
        batches = self.source.micro_batches(self.state.step)
        examples_in_step = self.source.examples_in_step(self.state.step)
        updating = time.perf_counter()
        totals: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=device))
        for number, batch in enumerate(batches):
            last = number == len(batches) - 1  # gradients are synchronised across processes once, at the end
            with contextlib.nullcontext() if last else self.accelerator.no_sync(self.scorer):
                if batch is None:  # this process has no example in this micro-batch (a ragged tail)
                    self._idle_backward()
                    continue
                batch = {key: value.to(device) for key, value in batch.items()}
                with self.accelerator.autocast():
                    losses, metrics = self.loss(batch)
                self.accelerator.backward(losses.sum() * self.accelerator.num_processes / examples_in_step)
            totals["loss"] += losses.detach().sum()
            for key, value in metrics.items():
                totals[key] += value.detach().float().sum()
            totals["tokens"] += sequence_token_count(batch)
        metrics = self._averaged(totals, examples_in_step)
        metrics.update(self._update(metrics["loss"]))
        metrics.update(self.source.metrics(), update_s=time.perf_counter() - updating)
        self.state.step += 1
        self.state.tokens_seen += int(metrics["tokens_in_step"])
        metrics.update(tokens_seen=self.state.tokens_seen, lr=self.scheduler.get_last_lr()[0],
                       nonfinite_skipped=self.state.nonfinite_skipped,
                       tokens_per_s=metrics["tokens_in_step"] / (time.perf_counter() - started))
        self._log(metrics)
        return metrics

    def _idle_backward(self) -> None:
        """A forward and backward that add nothing to the gradients, so this process still takes part in the
        step's gradient synchronisation."""
        batch = {key: value.to(self.accelerator.device) for key, value in self.source.filler().items()}
        with self.accelerator.autocast():
            output = self.scorer(**scorer_inputs(batch))
        outputs = output if isinstance(output, tuple) else (output,)
        self.accelerator.backward(sum(t.sum() for t in outputs) * 0.0)

    def _update(self, loss: float) -> dict[str, float]:
        """Clip, then the optimizer and scheduler step, guarded: a non-finite loss, gradient norm (before
        clipping) or parameter after the update stops the run or skips the step (`on_nonfinite`)."""
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.config.optim.max_grad_norm
        if max_norm is None:  # not clipped, only measured
            norm = torch.nn.utils.get_total_norm([p.grad for p in trainable if p.grad is not None])
        else:
            norm = self.accelerator.clip_grad_norm_(trainable, max_norm)
        grad_norm = torch.as_tensor(0.0 if norm is None else norm)  # None: DeepSpeed clips inside its engine
        problem = "loss" if not finite(loss) else "gradients" if not finite(grad_norm) else None
        if problem is None:
            snapshot = UpdateSnapshot(trainable, self.optimizer) if self.config.on_nonfinite == "skip" else None
            self.optimizer.step()
            if not parameters_finite(trainable):
                problem = "parameters after the update"
                if snapshot is not None:
                    snapshot.restore()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if problem is not None:
            self._nonfinite(problem, loss, grad_norm)
        return {} if max_norm is None else {"grad_norm": grad_norm.item()}

    def _nonfinite(self, problem: str, loss: float, grad_norm: torch.Tensor) -> None:
        step = self.state.step + 1
        if self.config.on_nonfinite == "skip":
            self.state.nonfinite_skipped += 1
            log.warning("step %d: non-finite %s (NaN or inf; loss %s, gradient norm %s); step skipped, parameters "
                        "unchanged (%d skipped so far)", step, problem, loss, grad_norm.item(),
                        self.state.nonfinite_skipped)
            return
        checkpoint = latest_checkpoint(Path(self.config.output_dir))
        raise NonFiniteError(
            f"step {step}: non-finite {problem} (NaN or inf; loss {loss}, gradient norm {grad_norm.item()}); the run "
            "stopped before saving anything of this step. The last checkpoint is "
            f"{checkpoint if checkpoint is not None else 'none (none was written yet)'}, intact; if the run had "
            "diverged before it (losses or gradient norms growing), start again with a lower optim.lr, else check "
            "the data or set on_nonfinite=skip, then --resume")

    def _averaged(self, totals: dict[str, torch.Tensor], examples_in_step: int) -> dict[str, float]:
        """Per-example means over the whole step (all micro-batches and processes); tokens summed. A process
        without examples in the step has no metrics of its own: every process reduces the union of the keys."""
        keys = sorted(totals)
        if self.accelerator.num_processes > 1:
            keys = sorted(set().union(*gather_object([keys])))
        summed = {key: self.accelerator.reduce(totals[key], reduction="sum").item() for key in keys}
        tokens = summed.pop("tokens")
        averaged = {key: value / examples_in_step for key, value in summed.items()}
        averaged["tokens_in_step"] = tokens
        return averaged

    def _log(self, metrics: dict[str, float]) -> None:
        """Evaluate (every `eval_every` steps and after the last), log the step (every `log_every` steps and the
        last) and checkpoint it every `save_every` steps (never with `save_final_only`)."""
        step, total, config = self.state.step, self.source.total_steps, self.config
        if self.eval_set is not None and (step == total or config.eval_every and step % config.eval_every == 0):
            metrics.update(self.evaluate())
        if step % config.log_every == 0 or step == total or any(key.startswith("eval/") for key in metrics):
            self.metrics_log.log(step, metrics)
        self.metrics_log.advance(metrics)
        if config.save_every and step % config.save_every == 0 and step < total and not config.save_final_only:
            self.save()

    def save(self) -> None:
        """A checkpoint of the current step (weights, optimizer, scheduler, RNG, objective state, config)."""
        if "state" in self.params:
            self.state.objective_state = self.params["state"].state_dict()
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            save_checkpoint(Path(self.config.output_dir), self.model, self.tokenizer, self.optimizer, self.scheduler,
                            self.state, self.config.keep_checkpoints, self.config_yaml,
                            save_optimizer=self.config.save_optimizer, adapter_base=self.config.model.name_or_path,
                            source_state=self.source.state_dict())
        self.accelerator.wait_for_everyone()

    def finish(self, metrics: dict[str, float]) -> TrainResult:
        """Write the last checkpoint (if not written) and `final/`, loadable with `from_pretrained`."""
        self.metrics_log.close()
        output_dir = Path(self.config.output_dir)
        if not self.config.save_final_only and not checkpoint_dir(output_dir, self.state.step).exists():
            self.save()
        final_dir = output_dir / "final"
        if self.accelerator.is_main_process:
            save_model_atomically(self.accelerator.unwrap_model(self.scorer).model, self.tokenizer, final_dir,
                                  finish=self._describe_final)
        self.accelerator.wait_for_everyone()
        return TrainResult(output_dir=output_dir, final_dir=final_dir, steps=self.state.step, metrics=metrics)

    def _describe_final(self, folder: Path) -> None:
        """What `final/` holds besides the model: the run's state (`training_state.json`: steps, tokens, data
        fingerprint) and, for a LoRA adapter, its base as the user named it."""
        (folder / "training_state.json").write_text(json.dumps(self.state.__dict__))
        if (folder / ADAPTER_CONFIG).exists():
            set_adapter_base(folder, self.config.model.name_or_path)

    def close(self) -> None:
        """Close the metrics log and release the output folder (also after an error); idempotent."""
        self.metrics_log.close()
        if self.lock is not None:
            self.lock.close()
            self.lock = None


Data = tuple[Policy, DataSource, "ReferenceScores | None", "EvalSet | None"]


def _fixed_data(config: TrainConfig, accelerator: Accelerator, objective: Objective, checkpoint: Path | None,
                examples: Sequence[TokenizedExample] | None) -> Data:
    """A dataset fixed at the start: read, split, checked against the checkpoint's fingerprint; the policy; the
    reference log-probs precomputed (and cached) or scored every step; the eval split."""
    tokenizer, examples = load_training_data(config, objective, examples)
    examples, held_out = split_eval(config, tokenizer, objective, examples)
    warn_if_smaller_than_a_step(config, len(examples), accelerator.num_processes)
    fingerprint = data_fingerprint(examples)
    resumes.check_same_data(checkpoint, fingerprint)
    policy = load_policy(config, objective, tokenizer, examples[0].slots, len(examples[0].scores))
    model = policy.model.to(accelerator.device)
    collate = batch_layout(config, model, tokenizer.pad_token_id)
    reference = None
    if objective.needs_reference:
        reference = precomputed_reference if config.reference.precompute else \
            online_reference(config, model, accelerator.device)
    plan = BatchPlan(num_examples=len(examples), batch_size=config.batch_size, grad_accum=config.grad_accum,
                     epochs=config.epochs, max_steps=config.max_steps, seed=config.seed,
                     world_size=accelerator.num_processes, rank=accelerator.process_index)
    scores = reference_scores_for(config, objective, policy, model, examples, collate, accelerator)
    source = FixedDataset(examples, collate, plan, scores, fingerprint)
    eval_set = None if held_out is None else EvalSet(
        held_out, collate, config.batch_size, accelerator.process_index, accelerator.num_processes,
        reference_scores_for(config, objective, policy, model, held_out, collate, accelerator))
    return policy, source, reference, eval_set


def _online_data(config: TrainConfig, accelerator: Accelerator, objective: Objective, params: dict,
                 checkpoint: Path | None) -> Data:
    """Prompts sampled online (`alignkit.train.online`): the policy, the sampler (whose batches carry their
    rewards and reference log-probs, as data) and no eval split."""
    tokenizer = load_tokenizer(config.model.name_or_path)
    prompts = load_prompts(config)
    resumes.check_same_data(checkpoint, prompts_fingerprint(prompts))
    policy = load_policy(config, objective, tokenizer, (("completions", config.online.k),))
    model = policy.model.to(accelerator.device)
    collate = batch_layout(config, model, tokenizer.pad_token_id)
    source = online_source(config, objective, params, prompts, model, tokenizer, policy.fingerprint, collate,
                           accelerator)
    return policy, source, precomputed_reference if objective.needs_reference else None, None
