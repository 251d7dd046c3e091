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
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Literal

from alignkit.data.errors import DataError
from alignkit.lazy import lazy

torch = lazy("torch")

ObjectiveResult = "tuple[torch.Tensor, dict[str, torch.Tensor]]"  # per-example losses [B], per-example metrics
ObjectiveFn = Callable[..., ObjectiveResult]

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


def _slot_names(slot: str) -> tuple[str, ...]:
    """The inputs the trainer can provide for one completion slot."""
    return f"policy_{slot}_logps", f"ref_{slot}_logps", f"{slot}_lengths", f"{slot}_rewards"


def _known_inputs() -> tuple[str, ...]:
    slots = sorted({slot for slots in FORMATS.values() for slot, _ in slots})
    return tuple(name for slot in slots for name in _slot_names(slot)) + FIELDS


# Quantities the trainer can provide, keyed by the argument names objectives use.
KNOWN_INPUTS = _known_inputs()


Slots = tuple[tuple[str, int], ...]  # an example's completion slots: (name, completions), in order


@dataclass(frozen=True)
class Objective:
    """A registered objective. Its inputs and parameters are read off `fn`'s signature: a parameter named
    like a quantity the trainer provides (`KNOWN_INPUTS`) is an input, `state` receives the `state` object,
    and every other parameter must have a default and is a parameter (`objective.params.NAME`)."""

    name: str
    fn: ObjectiveFn
    description: str  # one line, shown by `alignkit objectives`
    source: str  # paper and/or the code path the formula was checked against
    data_format: DataFormat = "preference"
    logps: Literal["sum", "mean"] = "sum"  # how the trainer reduces completion token log-probs
    # For objectives that keep state across steps (BCO's running reward mean): a factory whose object is
    # passed as the keyword `state` and saved with checkpoints (it needs state_dict / load_state_dict).
    state: Callable[[], Any] | None = None
    # "lm": the model is a causal LM scored by completion log-probs; "reward": a sequence-classification
    # reward model (a scalar or k-attribute head over the LM), whose rewards feed `{slot}_rewards`.
    head: Literal["lm", "reward"] = "lm"

    @cached_property
    def inputs(self) -> tuple[str, ...]:
        """The quantities `fn` takes, in signature order; the trainer passes them by name."""
        return tuple(name for name in inspect.signature(self.fn).parameters if name in KNOWN_INPUTS)

    @cached_property
    def defaults(self) -> dict[str, Any]:
        """`fn`'s parameters (everything but inputs and `state`) and their defaults."""
        return {name: p.default for name, p in inspect.signature(self.fn).parameters.items()
                if name not in KNOWN_INPUTS and name != "state" and p.default is not inspect.Parameter.empty}

    @property
    def needs_reference(self) -> bool:
        return any(name.startswith("ref_") for name in self.inputs)

    @property
    def slots(self) -> tuple[str, ...]:
        """The completion slots of the data format this objective reads (in the format's order)."""
        used = " ".join(self.inputs)
        return tuple(slot for slot, _ in FORMATS[self.data_format]
                     if f"_{slot}_logps" in used or f"{slot}_lengths" in used or f"{slot}_rewards" in used)

    def __call__(self, values: dict[str, torch.Tensor], params: dict[str, Any]) -> ObjectiveResult:
        """`fn` on the inputs it takes, picked from `values` by name, and `params`."""
        missing = [name for name in self.inputs if name not in values]
        if missing:
            raise DataError(f"objective '{self.name}' needs {missing}, which this data does not provide")
        return self.fn(**{name: values[name] for name in self.inputs}, **params)


_REGISTRY: dict[str, Objective] = {}


def _check_signature(objective: Objective) -> None:
    """Every parameter of `fn` is an input of the objective's format, `state` (with a state factory), or has a
    default; so an objective's inputs and parameters can always be derived from its signature."""
    format_slots = {slot for slot, _ in FORMATS[objective.data_format]}
    for name, parameter in inspect.signature(objective.fn).parameters.items():
        if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            raise ValueError(f"objective {objective.name!r}: {objective.fn.__name__} takes *{name}; name every "
                             "input and parameter")
        if name in KNOWN_INPUTS:
            slot = next((s for s in format_slots if name in _slot_names(s)), None)
            if slot is None and name not in FIELDS:
                raise ValueError(f"objective {objective.name!r}: input {name!r} is not a slot of the "
                                 f"{objective.data_format!r} format ({sorted(format_slots)})")
        elif name == "state":
            if objective.state is None:
                raise ValueError(f"objective {objective.name!r}: {objective.fn.__name__} takes `state` but the "
                                 "registration gives no state factory")
        elif parameter.default is inspect.Parameter.empty:
            raise ValueError(f"objective {objective.name!r}: {name!r} of {objective.fn.__name__} is neither an "
                             f"input the trainer provides ({', '.join(KNOWN_INPUTS)}) nor a parameter with a default")


def register(objective: Objective) -> Objective:
    _check_signature(objective)
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


# ------------------------------------------------------------------ naming what the trainer computes, per slot

def by_slot(data_format: str, slots: Slots, per_completion: torch.Tensor) -> dict[str, torch.Tensor]:
    """Split values of the K·B completions of a batch (row k·B + b: completion k of example b, as both batch
    layouts order them) into slots: [B, ...] for a "one" slot, [B, M, ...] for a list slot of M."""
    kinds = dict(FORMATS[data_format])
    chunks = per_completion.chunk(sum(size for _, size in slots))
    values, k = {}, 0
    for slot, size in slots:
        part, k = chunks[k:k + size], k + size
        values[slot] = part[0] if kinds[slot] == "one" else torch.stack(part, 1)
    return values


def logp_inputs(model: Literal["policy", "ref"], objective: Objective, slots: Slots, sums: torch.Tensor,
                counts: torch.Tensor) -> dict[str, torch.Tensor]:
    """`{model}_{slot}_logps` (summed or token-averaged as `objective.logps` says) and, for the policy,
    `{slot}_lengths`, from the summed log-probs and token counts of the K·B completions of a batch."""
    from alignkit.models.logprobs import SequenceLogps

    sums, counts = by_slot(objective.data_format, slots, sums), by_slot(objective.data_format, slots, counts)
    values = {}
    for slot in sums:
        scores = SequenceLogps(sums[slot], counts[slot])
        values[f"{model}_{slot}_logps"] = scores.sum if objective.logps == "sum" else scores.mean
        if model == "policy":
            values[f"{slot}_lengths"] = scores.count
    return values


def reward_inputs(objective: Objective, slots: Slots, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """`{slot}_rewards` from a reward head's [K·B, k] output: [B] for a one-output head, [B, k] for k outputs."""
    return {f"{slot}_rewards": value.squeeze(-1) if value.size(-1) == 1 else value
            for slot, value in by_slot(objective.data_format, slots, rewards).items()}
