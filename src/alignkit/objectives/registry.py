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
  [B] with one output or [B, k] with k attributes; for online data (`prompts`), the reward the data source
  gave each sampled completion;
* `policy_{s}_token_logps`, `ref_{s}_token_logps`: the completion's token log-probs, [..., L] right-padded
  with 0, and `{s}_token_mask` (bool, [..., L]) marking its tokens;
* `old_{s}_logps`, `old_{s}_token_logps`: for online data, the log-probs under the policy that sampled the
  completions (kept by the data source when a batch of samples serves several updates; otherwise the policy's
  own values, detached: the same weights);

each of shape [B] for a single slot, [B, M] for a list slot (M completions per example). Per-example
fields: `labels` ([B] float, 1 desirable / 0 undesirable), `scores` ([B, m] float, e.g. teacher
scores) and, for online data, `max_new_tokens` ([B], the sampling budget). The `kl` slot of the unpaired
format holds, for example i, the completion of another example (a mismatched prompt/completion pair, KTO's
reference point).

An online objective may also declare `prepare`: a pure function run once per optimizer step over *all* the
step's samples, before any update (e.g. REINFORCE++'s advantages whitened over the whole batch); its inputs
are named like the objective's, its parameters are the objective's, and each key it returns ([N, ...] per
example) is an input of the objective: a parameter of `fn` without a default that the trainer does not
otherwise provide.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Literal

from alignkit.data.errors import DataError
from alignkit.lazy import lazy

torch = lazy("torch")

ObjectiveResult = "tuple[torch.Tensor, dict[str, torch.Tensor]]"  # per-example losses [B], per-example metrics
ObjectiveFn = Callable[..., ObjectiveResult]

DataFormat = Literal["preference", "joint", "unpaired", "negative", "list", "ranked", "samples", "sft", "prompts",
                     "context"]

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
    "prompts": (("completions", "list"),),  # prompt only: k completions sampled online from the policy
    "context": (("chosen", "one"), ("rejected", "one"), ("distractor", "one")),  # chosen again, distractor context
}
FIELDS = ("labels", "scores", "max_new_tokens", "row_label_smoothing")


def _slot_names(slot: str) -> tuple[str, ...]:
    """The inputs the trainer can provide for one completion slot."""
    return (f"policy_{slot}_logps", f"ref_{slot}_logps", f"old_{slot}_logps", f"{slot}_lengths", f"{slot}_rewards",
            f"policy_{slot}_token_logps", f"ref_{slot}_token_logps", f"old_{slot}_token_logps", f"{slot}_token_mask")


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
    # Online objectives: the run-once-per-step function over all of a step's samples (see the module docstring)
    # and the samples per prompt k the estimator allows (min, max or None).
    prepare: ObjectiveFn | None = None
    group: tuple[int, int | None] = (1, None)

    @cached_property
    def prepared(self) -> tuple[str, ...]:
        """The inputs `prepare` makes: `fn`'s parameters without a default that the trainer does not provide."""
        if self.prepare is None:
            return ()
        return tuple(name for name, p in inspect.signature(self.fn).parameters.items()
                     if name not in KNOWN_INPUTS and name != "state" and p.default is inspect.Parameter.empty)

    @cached_property
    def inputs(self) -> tuple[str, ...]:
        """The quantities `fn` takes, in signature order; the trainer passes them by name."""
        return tuple(name for name in inspect.signature(self.fn).parameters
                     if name in KNOWN_INPUTS or name in self.prepared)

    @cached_property
    def optional_inputs(self) -> tuple[str, ...]:
        """Inputs `fn` gives a default (e.g. `row_label_smoothing=None`): passed only where the data has them."""
        return tuple(name for name, p in inspect.signature(self.fn).parameters.items()
                     if name in KNOWN_INPUTS and p.default is not inspect.Parameter.empty)

    @cached_property
    def prepare_inputs(self) -> tuple[str, ...]:
        """The quantities `prepare` takes (its other parameters are the objective's)."""
        if self.prepare is None:
            return ()
        return tuple(name for name in inspect.signature(self.prepare).parameters if name in KNOWN_INPUTS)

    @cached_property
    def defaults(self) -> dict[str, Any]:
        """`fn`'s parameters (everything but inputs and `state`) and their defaults."""
        return {name: p.default for name, p in inspect.signature(self.fn).parameters.items()
                if name not in KNOWN_INPUTS and name != "state" and p.default is not inspect.Parameter.empty}

    @property
    def needs_reference(self) -> bool:
        return any(name.startswith("ref_") for name in self.inputs + self.prepare_inputs)

    @property
    def per_token(self) -> bool:
        """Whether the objective reads token log-probs (the scorer then returns them)."""
        return any(name.endswith("_token_logps") or name.endswith("_token_mask")
                   for name in self.inputs + self.prepare_inputs)

    def run_prepare(self, values: dict[str, torch.Tensor], params: dict[str, Any]) -> dict[str, torch.Tensor]:
        """`prepare` on the step's values and the objective's parameters it takes ({} without one)."""
        if self.prepare is None:
            return {}
        taken = inspect.signature(self.prepare).parameters
        return self.prepare(**{name: values[name] for name in self.prepare_inputs},
                            **{name: value for name, value in params.items() if name in taken})

    @property
    def slots(self) -> tuple[str, ...]:
        """The completion slots of the data format this objective reads (in the format's order)."""
        used = " ".join(self.inputs)
        return tuple(slot for slot, _ in FORMATS[self.data_format]
                     if any(f"{slot}_{kind}" in used for kind in ("logps", "lengths", "rewards", "token_logps", "token_mask")))

    def __call__(self, values: dict[str, torch.Tensor], params: dict[str, Any]) -> ObjectiveResult:
        """`fn` on the inputs it takes, picked from `values` by name, and `params`."""
        missing = [name for name in self.inputs if name not in values and name not in self.optional_inputs]
        if missing:
            raise DataError(f"objective '{self.name}' needs {missing}, which this data does not provide")
        return self.fn(**{name: values[name] for name in self.inputs if name in values}, **params)


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
        elif parameter.default is inspect.Parameter.empty and objective.prepare is None:
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


def token_mask(counts: torch.Tensor, width: int) -> torch.Tensor:
    """[N, width] bool, True on the first counts[n] positions of row n."""
    return torch.arange(width, device=counts.device) < counts.unsqueeze(-1)


def logp_inputs(model: Literal["policy", "ref", "old"], objective: Objective, slots: Slots, sums: torch.Tensor,
                counts: torch.Tensor, tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """`{model}_{slot}_logps` (summed or token-averaged as `objective.logps` says) and, for the policy,
    `{slot}_lengths`, from the summed log-probs and token counts of the K·B completions of a batch; with
    `tokens` ([K·B, L] token log-probs) also `{model}_{slot}_token_logps` and `{slot}_token_mask`."""
    from alignkit.models.logprobs import SequenceLogps

    split = functools.partial(by_slot, objective.data_format, slots)
    values = {}
    for slot, scores in zip(split(sums), map(SequenceLogps, split(sums).values(), split(counts).values())):
        values[f"{model}_{slot}_logps"] = scores.sum if objective.logps == "sum" else scores.mean
        if model == "policy":
            values[f"{slot}_lengths"] = scores.count
    if tokens is not None:
        for slot, value in split(tokens).items():
            values[f"{model}_{slot}_token_logps"] = value
        for slot, value in split(token_mask(counts, tokens.size(-1))).items():
            values[f"{slot}_token_mask"] = value
    return values


def data_inputs(objective: Objective, slots: Slots, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What a batch of online samples carries besides the reference, named: each completion's reward
    (`{slot}_rewards`, from `rewards`, [K·B]) and, where the data source kept them, the sampling policy's
    log-probs (`old_...`, from `old_sums`, `old_counts`, `old_tokens`)."""
    values = {f"{slot}_rewards": value for slot, value in by_slot(objective.data_format, slots, batch["rewards"]).items()}
    if "old_sums" in batch:
        values.update(logp_inputs("old", objective, slots, batch["old_sums"], batch["old_counts"],
                                  batch.get("old_tokens")))
    return values


def sampled_inputs(objective: Objective, slots: Slots, batch: dict[str, torch.Tensor],
                   policy: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The objective's inputs from an online batch (`data_inputs`), the sampling policy's log-probs being the
    policy's own `policy` values, detached, where the batch kept none (the same weights sampled)."""
    values = data_inputs(objective, slots, batch)
    if "old_sums" not in batch:
        values.update({name.replace("policy_", "old_", 1): value.detach() for name, value in policy.items()
                       if name.startswith("policy_")})
    return {name: value for name, value in values.items() if name in objective.inputs}


def reward_inputs(objective: Objective, slots: Slots, rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """`{slot}_rewards` from a reward head's [K·B, k] output: [B] for a one-output head, [B, k] for k outputs."""
    return {f"{slot}_rewards": value.squeeze(-1) if value.size(-1) == 1 else value
            for slot, value in by_slot(objective.data_format, slots, rewards).items()}
