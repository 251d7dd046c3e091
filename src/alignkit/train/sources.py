"""Where the training loop gets its batches: a data source hands it, for every optimizer step, this
process's micro-batches (collated tensors) and the number of examples the step holds over all processes (the
loss is averaged over these).

`FixedDataset` is a dataset fixed when the run starts, visited in the seeded order of `BatchPlan`; its batches
carry the precomputed reference log-probs of their examples (`reference_sums`, `reference_counts`, [B, K]), as
data. An online sampler (samples of the current policy, scored by a reward) is another implementation of the
same interface.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from alignkit.data.tokenization import TokenizedExample
from alignkit.objectives.registry import Slots
from alignkit.train.plan import BatchPlan

Batch = dict[str, torch.Tensor]
Collate = Callable[[Sequence[TokenizedExample]], Batch]


class DataSource(Protocol):
    """What `Trainer` pulls batches from."""

    @property
    def slots(self) -> Slots:
        """The completion slots of every example (e.g. `(("chosen", 1), ("rejected", 1))`)."""

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the run."""

    def micro_batches(self, step: int) -> list[Batch | None]:
        """This process's micro-batches of optimizer step `step` (0-based), collated, on the CPU; the same
        number on every process, None where this process has no example (a ragged tail)."""

    def examples_in_step(self, step: int) -> int:
        """Examples in optimizer step `step` over all processes."""

    def filler(self) -> Batch:
        """Any valid batch, for a process with no example to run a forward and backward that adds nothing (so
        it still takes part in the gradient synchronisation)."""

    @property
    def fingerprint(self) -> str:
        """Of the data (checked on resume: a resumed run must read the same data)."""

    def metrics(self) -> dict[str, float]:
        """The source's own numbers for the step whose batches it handed out last (e.g. seconds spent
        sampling); {} for a fixed dataset."""

    def state_dict(self) -> dict:
        """What a checkpoint must keep beyond the weights and the step to resume the source exactly ({} if
        nothing)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`'s state."""


@dataclass
class FixedDataset:
    """Tokenized examples in `plan`'s order, laid out by `collate`, with their precomputed reference
    log-probs (`reference`: `sums` and `counts`, [N, K] in example order) when the run has them."""

    examples: Sequence[TokenizedExample]
    collate: Collate
    plan: BatchPlan
    reference: dict[str, torch.Tensor] | None = None
    fingerprint: str = ""  # `alignkit.train.references.data_fingerprint` of the examples

    @property
    def slots(self) -> Slots:
        return self.examples[0].slots

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}  # the plan is a function of (seed, step)

    def load_state_dict(self, state: dict) -> None:
        pass

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    def micro_batches(self, step: int) -> list[Batch | None]:
        batches: list[Batch | None] = []
        for indices in self.plan.step_batches(step):
            if not indices:
                batches.append(None)
                continue
            batch = self.collate([self.examples[i] for i in indices])
            if self.reference is not None:
                batch["reference_sums"] = self.reference["sums"][indices]
                batch["reference_counts"] = self.reference["counts"][indices]
            batches.append(batch)
        return batches

    def examples_in_step(self, step: int) -> int:
        return self.plan.step_size(step)

    def filler(self) -> Batch:
        return self.collate([self.examples[0]])


@dataclass
class EvalSet:
    """Held-out examples scored every `eval_every` steps: this process takes every `world_size`-th example from
    its `rank`, in order, `batch_size` at a time; batches carry the precomputed reference log-probs like
    `FixedDataset`'s."""

    examples: Sequence[TokenizedExample]
    collate: Collate
    batch_size: int
    rank: int = 0
    world_size: int = 1
    reference: dict[str, torch.Tensor] | None = None

    def batches(self) -> Iterator[Batch]:
        mine = list(range(self.rank, len(self.examples), self.world_size))
        for start in range(0, len(mine), self.batch_size):
            indices = mine[start:start + self.batch_size]
            batch = self.collate([self.examples[i] for i in indices])
            if self.reference is not None:
                batch["reference_sums"] = self.reference["sums"][indices]
                batch["reference_counts"] = self.reference["counts"][indices]
            yield batch
