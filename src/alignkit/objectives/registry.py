"""The objective registry: every training objective is a pure function plus a declaration.

An objective consumes named per-example quantities that the trainer knows how to compute and returns
`(losses, metrics)`: one loss per example and a dict of per-example, detached metric tensors. The trainer
reads `Objective.inputs` to decide what to compute and never branches on an objective's name.

Input names. Every data format (`FORMATS`) names the completion *slots* of an example, e.g. a pair has
`chosen` and `rejected`. For a slot `s` the trainer can provide

* `policy_{s}_logps`, `ref_{s}_logps`: completion log-probs under the policy / the reference, summed
  over tokens or token-averaged as the objective's `logps` says;
* `{s}_lengths`: completion token counts (float);
* `{s}_rewards`: for reward-model objectives (`head="reward"`), the model's reward for the completion,
  [B] with one output or [B, k] with k attributes;

each of shape [B] for a single slot, [B, M] for a list slot (M completions per example). Per-example
fields: `labels` ([B] float, 1 desirable / 0 undesirable) and `scores` ([B, m] float, e.g. teacher
scores). The `kl` slot of the unpaired format holds, for example i, the completion of another example
(a mismatched prompt/completion pair, KTO's reference point).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

ObjectiveFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]

DataFormat = Literal["preference", "joint", "unpaired", "negative", "list", "ranked", "samples", "sft"]

# Completion slots of each data format: (name, "one" | "list").
FORMATS: dict[str, tuple[tuple[str, str], ...]] = {
    "preference": (("chosen", "one"), ("rejected", "one")),  # prompt, chosen, rejected (TRL's format)
    "joint": (("chosen", "one"), ("rejected", "one")),  # prompt_chosen, chosen, prompt_rejected, rejected
    "unpaired": (("completion", "one"), ("kl", "one")),  # prompt, completion, label (TRL's unpaired)
    "negative": (("completion", "one"),),  # prompt, rejected: negatives only (labels all 0)
    "list": (("chosen", "list"), ("rejected", "list")),  # prompt, chosen (1 or P), rejected (M)
    "ranked": (("ranked", "list"),),  # prompt, completions best first
    "samples": (("samples", "list"), ("rejected", "one")),  # prompt, K self-generated samples, rejected
    "sft": (("completion", "one"),),  # prompt, completion, optional scores
}
FIELDS = ("labels", "scores")


def _known_inputs() -> tuple[str, ...]:
    slots = sorted({slot for slots in FORMATS.values() for slot, _ in slots})
    names = [f"{prefix}_{slot}_logps" for slot in slots for prefix in ("policy", "ref")]
    return tuple(names + [f"{slot}_lengths" for slot in slots] + [f"{slot}_rewards" for slot in slots] + list(FIELDS))


# Quantities the trainer can provide, keyed by the argument names objectives use.
KNOWN_INPUTS = _known_inputs()


@dataclass(frozen=True)
class Objective:
    name: str
    fn: ObjectiveFn
    description: str  # one line, shown by `alignkit objectives`
    source: str  # paper and/or the code path the formula was checked against
    inputs: tuple[str, ...]  # argument names from KNOWN_INPUTS; the trainer passes them by name
    data_format: DataFormat = "preference"
    logps: Literal["sum", "mean"] = "sum"  # how the trainer reduces completion token log-probs
    defaults: dict = field(default_factory=dict)  # keyword parameters and their defaults
    # For objectives that keep state across steps (BCO's running reward mean): a factory whose object is
    # passed as the keyword `state` and saved with checkpoints (it needs state_dict / load_state_dict).
    state: Callable[[], Any] | None = None
    # "lm": the model is a causal LM scored by completion log-probs; "reward": a sequence-classification
    # reward model (a scalar or k-attribute head over the LM), whose rewards feed `{slot}_rewards`.
    head: Literal["lm", "reward"] = "lm"

    @property
    def needs_reference(self) -> bool:
        return any(name.startswith("ref_") for name in self.inputs)

    @property
    def slots(self) -> tuple[str, ...]:
        """The completion slots of the data format this objective reads (in the format's order)."""
        used = " ".join(self.inputs)
        return tuple(slot for slot, _ in FORMATS[self.data_format]
                     if f"_{slot}_logps" in used or f"{slot}_lengths" in used or f"{slot}_rewards" in used)


_REGISTRY: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    unknown = [name for name in objective.inputs if name not in KNOWN_INPUTS]
    if unknown:
        raise ValueError(f"objective {objective.name!r} declares unknown inputs {unknown}; known: {KNOWN_INPUTS}")
    format_slots = {slot for slot, _ in FORMATS[objective.data_format]}
    foreign = [name for name in objective.inputs if name not in FIELDS
               and not any(f"_{slot}_logps" in f"_{name}" or name in (f"{slot}_lengths", f"{slot}_rewards")
                           for slot in format_slots)]
    if foreign:
        raise ValueError(f"objective {objective.name!r}: inputs {foreign} are not slots of the "
                         f"{objective.data_format!r} format ({sorted(format_slots)})")
    parameters = inspect.signature(objective.fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unnamed = [] if takes_any else [name for name in (*objective.inputs, *objective.defaults) if name not in parameters]
    if unnamed:
        raise ValueError(f"objective {objective.name!r}: {unnamed} are not parameters of {objective.fn.__name__}")
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
