"""The objective registry: every training objective is a pure function plus a declaration.

An objective consumes named per-example quantities that the trainer knows how to compute (summed or
token-averaged completion log-probs of the policy and the reference, completion lengths, ...) and returns
`(losses, metrics)`: one loss per example and a dict of per-example, detached metric tensors. The trainer
reads `Objective.inputs` to decide what to compute and never branches on an objective's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

ObjectiveFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]

# Quantities the trainer can provide, keyed by the argument names objectives use.
KNOWN_INPUTS = (
    "policy_chosen_logps",
    "policy_rejected_logps",
    "ref_chosen_logps",
    "ref_rejected_logps",
    "chosen_lengths",
    "rejected_lengths",
)


@dataclass(frozen=True)
class Objective:
    name: str
    fn: ObjectiveFn
    description: str  # one line, shown by `alignkit objectives`
    source: str  # paper and/or the code path the formula was checked against
    inputs: tuple[str, ...]  # positional arguments, in order, from KNOWN_INPUTS
    data_format: Literal["preference"] = "preference"
    logps: Literal["sum", "mean"] = "sum"  # how the trainer reduces completion token log-probs
    defaults: dict = field(default_factory=dict)  # keyword parameters and their defaults

    @property
    def needs_reference(self) -> bool:
        return any(name.startswith("ref_") for name in self.inputs)


_REGISTRY: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    unknown = [name for name in objective.inputs if name not in KNOWN_INPUTS]
    if unknown:
        raise ValueError(f"objective {objective.name!r} declares unknown inputs {unknown}; known: {KNOWN_INPUTS}")
    if objective.name in _REGISTRY:
        raise ValueError(f"objective {objective.name!r} is already registered")
    _REGISTRY[objective.name] = objective
    return objective


def get(name: str) -> Objective:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown objective {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def available() -> list[Objective]:
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]
