"""The online data source: each generation of samples, the current policy answers every prompt of an
optimizer step k times, a `Reward` scores the answers, and the step's batches carry them, as data, with their
rewards and their reference (and, when needed, sampling-policy) log-probs. The same `Trainer` pulls these
batches exactly as it pulls a fixed dataset's.

A generation serves `online.updates_per_batch` optimizer steps (TRL's `num_iterations`); when it serves more
than one, or the objective's `prepare` reads them, the log-probs of the policy that sampled are kept
(`old_sums`, `old_tokens`) for the ratio clipping of the later updates. Sampling is seeded by (seed,
generation, process), so the samples are a function of the weights and the step: a resumed run draws what
the uninterrupted run drew. The one state beyond the checkpointed weights is a generation that is part-way
through its updates; `state_dict` holds it, and the checkpoint saves it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from alignkit.data.prompts import Prompt, as_completion, content_key
from alignkit.data.tokenization import TokenizedExample
from alignkit.models.sampling import sample_sequences
from alignkit.models.rewards.base import Reward
from alignkit.objectives import Objective
from alignkit.objectives.registry import Slots, by_slot, data_inputs, logp_inputs, token_mask
from alignkit.train.plan import BatchPlan
from alignkit.train.references import precomputed_reference
from alignkit.train.sources import Batch, Collate

log = logging.getLogger(__name__)

Scores = Callable[[Batch], tuple[torch.Tensor, ...]]  # a collated batch -> (sums, counts, tokens) of its K·B completions


@dataclass
class Generation:
    """One generation of samples: the micro-batches of its steps (this process's) and what drawing them took."""

    number: int
    batches: list[Batch | None]
    metrics: dict[str, float]
    examples: list[TokenizedExample] = field(default_factory=list)  # this process's prompts and samples, in order


@dataclass
class OnlineSampler:
    """Prompts in `plan`'s order; each generation samples `k` completions per prompt from `model`, scores them
    with `reward`, and lays them out with `collate` (one example per prompt, its k completions in one list
    slot). `reference` and `old` score a collated batch ((sums, counts, token log-probs)); `old` is None when
    the objective needs no sampling-policy log-probs kept."""

    prompts: Sequence[Prompt]
    model: nn.Module
    tokenizer: Any
    reward: Reward
    objective: Objective
    params: dict[str, Any]
    collate: Collate
    plan: BatchPlan
    k: int
    max_new_tokens: int
    temperature: float
    top_p: float
    updates_per_batch: int
    sample_batch_size: int
    seed: int
    max_steps: int | None
    reference: Scores | None
    old: Scores | None
    device: torch.device
    current: Generation | None = field(default=None, repr=False)
    fresh: bool = field(default=False, repr=False)  # whether the last `micro_batches` call drew a generation

    @property
    def slots(self) -> Slots:
        return (("completions", self.k),)

    @property
    def fingerprint(self) -> str:
        return prompts_fingerprint(self.prompts)

    def state_dict(self) -> dict:
        """The generation in use when it still has updates to serve (with `updates_per_batch` > 1): its number,
        batches and metrics; {} otherwise (the next generation is drawn afresh from the weights and the seed)."""
        if self.current is None or self.updates_per_batch == 1:
            return {}
        return {"number": self.current.number, "batches": self.current.batches, "metrics": self.current.metrics}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.current = Generation(state["number"], state["batches"], state["metrics"])

    @property
    def total_steps(self) -> int:
        return self.max_steps if self.max_steps is not None else self.plan.total_steps * self.updates_per_batch

    def micro_batches(self, step: int) -> list[Batch | None]:
        number = step // self.updates_per_batch
        self.fresh = self.current is None or self.current.number != number
        if self.fresh:
            self.current = self.draw(number)
        return self.current.batches

    def examples_in_step(self, step: int) -> int:
        return self.plan.step_size(step // self.updates_per_batch)

    def filler(self) -> Batch:
        return next(batch for batch in self.current.batches if batch is not None)

    def metrics(self) -> dict[str, float]:
        """What drawing this step's samples took (zeros when the step reuses an earlier generation)."""
        if self.current is None:
            return {}
        return self.current.metrics if self.fresh else {key: 0.0 for key in self.current.metrics
                                                         if key.endswith("_s")}

    def draw(self, number: int) -> Generation:
        """Sample, score and lay out generation `number` (see the class docstring)."""
        groups = self.plan.step_batches(number)
        indices = [i for group in groups for i in group]
        started = time.perf_counter()
        samples = sample_sequences(self.model, self.tokenizer, [self.prompts[i] for i in indices], n=self.k,
                                   temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                                   batch_size=self.sample_batch_size, seed=generation_seed(self.seed, number,
                                                                                           self.plan.rank))
        sampled = time.perf_counter()
        rewards = self.score([self.prompts[i] for i in indices], samples.texts)
        scored = time.perf_counter()
        examples = [TokenizedExample(((tuple(samples.prompt_ids[j]), tuple(tuple(c) for c in samples.completion_ids[j])),),
                                     self.slots, index=indices[j], where=f"prompt {indices[j]}")
                    for j in range(len(indices))]
        batches, start = [], 0
        for group in groups:
            part = slice(start, start + len(group))
            batches.append(self.lay_out(examples[part], rewards[part]) if group else None)
            start += len(group)
        self.add_prepared(batches)
        tokens = sum(samples.counts[j][i] for j in range(len(indices)) for i in range(self.k))
        entropy = sum(sum(row) for row in samples.entropies)
        return Generation(number, batches, {
            "sample_s": sampled - started, "reward_s": scored - sampled,
            "logps_s": time.perf_counter() - scored, "sampled_tokens": float(tokens),
            "entropy": entropy / max(tokens, 1)}, examples)

    def score(self, prompts: Sequence[Prompt], texts: list[list[str]]) -> torch.Tensor:
        """[P, k] rewards of the sampled texts."""
        flat_prompts = [prompt for prompt in prompts for _ in range(self.k)]
        completions = [as_completion(prompt, text) for prompt, row in zip(prompts, texts) for text in row]
        return self.reward(flat_prompts, completions).float().reshape(len(prompts), self.k)

    def lay_out(self, examples: list[TokenizedExample], rewards: torch.Tensor) -> Batch:
        """One collated micro-batch with its rewards ([K·B]: row k·B + b is completion k of example b), the
        sampling budget and the reference (and kept sampling-policy) log-probs of its completions."""
        batch = self.collate(examples)
        batch["rewards"] = rewards.T.reshape(-1)
        batch["completion_counts"] = torch.tensor([len(e.groups[0][1][i]) for i in range(self.k) for e in examples])
        batch["max_new_tokens"] = torch.full((len(examples),), float(self.max_new_tokens))
        on_device = {key: value.to(self.device) for key, value in batch.items()}
        if self.reference is not None:
            sums, counts, tokens = (t.detach().cpu() for t in self.reference(on_device))
            batch["reference_sums"] = sums.reshape(self.k, -1).T.contiguous()
            batch["reference_counts"] = counts.reshape(self.k, -1).T.contiguous()
            batch["reference_tokens"] = tokens
        if self.old is not None:  # like `reference`, it scores without gradients
            batch["old_sums"], batch["old_counts"], batch["old_tokens"] = (t.detach().cpu() for t in self.old(on_device))
        return batch

    def add_prepared(self, batches: list[Batch | None]) -> None:
        """The objective's `prepare` over the whole generation (its batches side by side, token axes padded to
        the longest), its outputs sliced back into each batch."""
        if self.objective.prepare is None:
            return
        present = [batch for batch in batches if batch is not None]
        values = step_values(self.objective, self.slots, present)
        prepared = self.objective.run_prepare(values, self.params)
        start = 0
        for batch in present:
            size, width = batch["rewards"].numel() // self.k, int(batch["completion_counts"].max())
            for name, value in prepared.items():
                part = value[start:start + size]
                batch[name] = part[..., :width] if part.dim() == 3 else part
            start += size


def step_values(objective: Objective, slots: Slots, batches: list[Batch]) -> dict[str, torch.Tensor]:
    """What `objective.prepare` may read of several batches, side by side: rewards, masks, reference and kept
    sampling-policy log-probs, [N, K] and [N, K, L] (L the longest completion; shorter ones padded)."""
    parts = []
    for batch in batches:
        values = data_inputs(objective, slots, batch)
        counts = batch["completion_counts"]
        values.update(by_slot_named(objective, slots, "token_mask", token_mask(counts, int(counts.max()))))
        if "reference_sums" in batch:
            values.update(logp_inputs("ref", objective, slots, *precomputed_reference(batch)))
        parts.append(values)
    width = max(value.size(-1) for part in parts for value in part.values() if value.dim() == 3)
    return {name: torch.cat([pad_tokens(part[name], width) for part in parts]) for name in parts[0]}


def by_slot_named(objective: Objective, slots: Slots, kind: str, values: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f"{slot}_{kind}": value for slot, value in by_slot(objective.data_format, slots, values).items()}


def pad_tokens(value: torch.Tensor, width: int) -> torch.Tensor:
    """A [N, K, L] tensor padded with 0 (False) to [N, K, width]; other shapes as they are."""
    if value.dim() != 3 or value.size(-1) == width:
        return value
    return torch.nn.functional.pad(value, (0, width - value.size(-1)))


def generation_seed(seed: int, number: int, rank: int) -> int:
    """The sampling seed of generation `number` on process `rank` (a 63-bit hash of the three)."""
    digest = hashlib.sha256(f"{seed}:{number}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def prompts_fingerprint(prompts: Sequence[Prompt]) -> str:
    digest = hashlib.sha256()
    for prompt in prompts:
        digest.update(content_key(prompt).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def online_plan(num_prompts: int, batch_size: int, grad_accum: int, epochs: int, max_steps: int | None,
                updates_per_batch: int, seed: int, world_size: int, rank: int) -> BatchPlan:
    """The prompts of each generation (one generation per `updates_per_batch` optimizer steps)."""
    generations = None if max_steps is None else math.ceil(max_steps / updates_per_batch)
    return BatchPlan(num_examples=num_prompts, batch_size=batch_size, grad_accum=grad_accum, epochs=epochs,
                     max_steps=generations, seed=seed, world_size=world_size, rank=rank)
