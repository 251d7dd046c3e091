"""Which examples each optimizer step sees: a pure function of (seed, step), so resuming needs no state.

Epoch e visits the examples in `randperm(N)` drawn from a generator seeded with (seed, e). Global
micro-batch k takes `batch_size · world_size` consecutive examples of its epoch's order; process r
takes every world_size-th of them. Optimizer step s is made of global micro-batches
[s·grad_accum, (s+1)·grad_accum).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch


@dataclass(frozen=True)
class BatchPlan:
    num_examples: int
    batch_size: int
    grad_accum: int
    epochs: int
    max_steps: int | None
    seed: int
    world_size: int = 1
    rank: int = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    @property
    def micro_batches_per_epoch(self) -> int:
        return math.ceil(self.num_examples / self.global_batch)

    @property
    def total_steps(self) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return math.ceil(self.epochs * self.micro_batches_per_epoch / self.grad_accum)

    def _global_micro_batch(self, k: int) -> list[int]:
        epoch, j = divmod(k, self.micro_batches_per_epoch)
        order = _epoch_order(self.num_examples, self.seed, epoch)
        return order[j * self.global_batch:(j + 1) * self.global_batch]

    def _global_step(self, step: int) -> list[list[int]]:
        last = self.epochs * self.micro_batches_per_epoch if self.max_steps is None else None
        ks = range(step * self.grad_accum, (step + 1) * self.grad_accum)
        chunks = [self._global_micro_batch(k) for k in ks if last is None or k < last]
        return [chunk for chunk in chunks if chunk]

    def step_batches(self, step: int) -> list[list[int]]:
        """This process's micro-batches (example indices) for optimizer step `step` (0-based): as many on every
        process; in a tail smaller than the process count, some of them are empty."""
        return [chunk[self.rank::self.world_size] for chunk in self._global_step(step)]

    def step_size(self, step: int) -> int:
        """Examples in optimizer step `step`, over all processes (the loss is averaged over these)."""
        return sum(len(chunk) for chunk in self._global_step(step))


@lru_cache(maxsize=4)
def _epoch_order(num_examples: int, seed: int, epoch: int) -> list[int]:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(num_examples, generator=generator).tolist()
