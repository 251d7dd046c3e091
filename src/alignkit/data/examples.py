"""Training rows of every data format, validated, as prompts with named completion slots.

An objective declares one format (see `alignkit.objectives.registry.FORMATS`); its rows look like this
(strings, or message lists as in TRL's conversational format; extra fields are ignored):

* ``preference``: ``prompt``, ``chosen``, ``rejected`` (TRL's preference format, implicit prompts too);
* ``joint``: ``prompt_chosen``, ``chosen``, ``prompt_rejected``, ``rejected`` — the two answers may
  answer different prompts (JPO); rows with one ``prompt`` are the conditional special case;
* ``unpaired``: ``prompt``, ``completion``, ``label`` (true = desirable; TRL's unpaired format) and
  optionally ``scores`` (e.g. BCO's density-ratio weight from `alignkit.objectives.udm`);
* ``negative``: ``prompt``, ``rejected`` (negatives only; all labels false);
* ``list``: ``prompt``, ``chosen`` (one completion or a list), ``rejected`` (a list of M);
* ``ranked``: ``prompt``, ``completions`` (a list, best first);
* ``samples``: ``prompt``, ``rejected``, ``samples`` (K completions, e.g. from `alignkit sample`);
* ``sft``: ``prompt``, ``completion`` and optionally ``scores`` (a number or a list of numbers).

Every list slot must have the same length in every row of a dataset (so a batch is rectangular).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union

from alignkit.data.errors import DataError, raise_if_any
from alignkit.data.preferences import _check_completion, _kind, _RowProblem, load_preferences
from alignkit.data.records import Record, Source, load_records

Content = Union[str, list]
FORMAT_FIELDS = {
    "preference": "prompt, chosen, rejected",
    "joint": "prompt_chosen, chosen, prompt_rejected, rejected (or one prompt)",
    "unpaired": "prompt, completion, label true/false, optional scores",
    "negative": "prompt, rejected",
    "list": "prompt, chosen (one or a list), rejected (a list)",
    "ranked": "prompt, completions (a list, best first)",
    "samples": "prompt, samples (a list), rejected",
    "sft": "prompt, completion, optional scores",
}


@dataclass(frozen=True)
class Example:
    """One row: `groups` of (prompt, completions), completions in slot order; `slots` names them."""

    groups: tuple[tuple[Content, tuple[Content, ...]], ...]
    slots: tuple[tuple[str, int], ...]  # (slot name, number of completions), in order
    where: str
    label: float | None = None
    scores: tuple[float, ...] = ()

    @property
    def conversational(self) -> bool:
        return isinstance(self.groups[0][0], list)


def load_examples(source: Source, data_format: str, *, with_kl: bool = False) -> list[Example]:
    """Load and validate rows of `data_format`; every bad row is reported in one DataError naming its
    file, line and field. `with_kl` (unpaired data) adds the `kl` slot: row i's completion paired with
    row i's prompt is compared against the completion of row (i + 1) mod N, a fixed mismatch."""
    if data_format == "preference":
        return [Example(((p.prompt, (p.chosen, p.rejected)),), (("chosen", 1), ("rejected", 1)), p.where)
                for p in load_preferences(source)]
    if data_format not in _READERS:
        raise ValueError(f"unknown data format {data_format!r}; known: preference, {', '.join(_READERS)}")
    records = load_records(source)
    if not records:
        raise DataError(f"{source if isinstance(source, str) else 'dataset'}: no rows")
    examples, problems = [], []
    for record in records:
        try:
            examples.append(_READERS[data_format](record))
        except _RowProblem as problem:
            problems.append(f"{record.where}, {problem}")
    raise_if_any(problems)
    _check_rectangular(examples)
    if with_kl:
        examples = _with_mismatched_completions(examples)
    return examples


def _check_rectangular(examples: list[Example]) -> None:
    first = examples[0]
    for example in examples:
        if example.slots != first.slots:
            raise DataError(f"{example.where}: completions per slot {dict(example.slots)} differ from "
                            f"{first.where}'s {dict(first.slots)}; every row needs the same number")
        if example.conversational != first.conversational:
            raise DataError(f"{example.where}: mixes strings and message lists with {first.where}")
        if len(example.scores) != len(first.scores):
            raise DataError(f"{example.where}, field 'scores': {len(example.scores)} values, but {first.where} "
                            f"has {len(first.scores)}; every row needs the same number")


def _with_mismatched_completions(examples: list[Example]) -> list[Example]:
    if len(examples) < 2:
        raise DataError("the kl slot needs at least two rows (a row's prompt with another row's completion)")
    out = []
    for i, example in enumerate(examples):
        (prompt, (completion,)), = example.groups
        other = examples[(i + 1) % len(examples)].groups[0][1][0]
        out.append(Example(((prompt, (completion, other)),), example.slots + (("kl", 1),), example.where,
                           example.label, example.scores))
    return out


# ------------------------------------------------------------------------------------------- row readers

def _field(data: dict, name: str) -> Any:
    if data.get(name) is None:
        raise _RowProblem(name, "missing")
    return data[name]


def _prompt(data: dict, name: str = "prompt") -> Content:
    prompt = _field(data, name)
    if _kind(prompt, name) == "messages" and not prompt:
        raise _RowProblem(name, "empty prompt (no messages)")
    if isinstance(prompt, str) and not prompt:
        raise _RowProblem(name, "empty prompt")
    return prompt


def _completion(data: dict, name: str, like: Content) -> Content:
    value = _field(data, name)
    _same_kind(value, name, like)
    _check_completion(value, name)
    return value


def _completions(data: dict, name: str, like: Content, single_allowed: bool = False) -> tuple[Content, ...]:
    """A list of completions (or, with `single_allowed`, one completion) from field `name`."""
    value = _field(data, name)
    if single_allowed and (isinstance(value, str) or (isinstance(value, list) and value
                                                       and isinstance(value[0], dict))):
        return (_completion(data, name, like),)
    if not isinstance(value, list) or not value:
        raise _RowProblem(name, "expected a non-empty list of completions")
    items = []
    for number, item in enumerate(value, start=1):
        label = f"{name}[{number}]"
        _same_kind(item, label, like)
        _check_completion(item, label)
        items.append(item)
    return tuple(items)


def _same_kind(value: Any, name: str, like: Content) -> None:
    if _kind(value, name) != _kind(like, "prompt"):
        raise _RowProblem(name, "prompt and completions must be all strings or all message lists")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _RowProblem(name, f"expected a number, got {type(value).__name__}")
    return float(value)


def _read_joint(record: Record) -> Example:
    data = record.data
    if data.get("prompt") is not None:
        prompt = _prompt(data)
        groups = ((prompt, (_completion(data, "chosen", prompt), _completion(data, "rejected", prompt))),)
    else:
        first, second = _prompt(data, "prompt_chosen"), _prompt(data, "prompt_rejected")
        _same_kind(second, "prompt_rejected", first)
        groups = ((first, (_completion(data, "chosen", first),)), (second, (_completion(data, "rejected", first),)))
    return Example(groups, (("chosen", 1), ("rejected", 1)), record.where)


def _read_unpaired(record: Record) -> Example:
    data = record.data
    prompt = _prompt(data)
    label = _field(data, "label")
    if not isinstance(label, bool):
        raise _RowProblem("label", f"expected true or false, got {label!r}")
    return Example(((prompt, (_completion(data, "completion", prompt),)),), (("completion", 1),), record.where,
                   label=float(label), scores=_scores(data))


def _read_negative(record: Record) -> Example:
    data = record.data
    prompt = _prompt(data)
    return Example(((prompt, (_completion(data, "rejected", prompt),)),), (("completion", 1),), record.where,
                   label=0.0)


def _read_list(record: Record) -> Example:
    data = record.data
    prompt = _prompt(data)
    chosen = _completions(data, "chosen", prompt, single_allowed=True)
    rejected = _completions(data, "rejected", prompt)
    return Example(((prompt, chosen + rejected),), (("chosen", len(chosen)), ("rejected", len(rejected))),
                   record.where)


def _read_ranked(record: Record) -> Example:
    data = record.data
    prompt = _prompt(data)
    ranked = _completions(data, "completions", prompt)
    if len(ranked) < 2:
        raise _RowProblem("completions", "a ranking needs at least two completions")
    return Example(((prompt, ranked),), (("ranked", len(ranked)),), record.where)


def _read_samples(record: Record) -> Example:
    data = record.data
    prompt = _prompt(data)
    samples = _completions(data, "samples", prompt)
    return Example(((prompt, samples + (_completion(data, "rejected", prompt),)),),
                   (("samples", len(samples)), ("rejected", 1)), record.where)


def _scores(data: dict) -> tuple[float, ...]:
    """The optional `scores` field: a number or a non-empty list of numbers."""
    raw = data.get("scores")
    if raw is None:
        return ()
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        raise _RowProblem("scores", "empty list")
    return tuple(_number(value, f"scores[{i}]") for i, value in enumerate(values, start=1))


def _read_sft(record: Record) -> Example:
    data = record.data
    prompt = _prompt(data)
    return Example(((prompt, (_completion(data, "completion", prompt),)),), (("completion", 1),), record.where,
                   scores=_scores(data))


_READERS = {"joint": _read_joint, "unpaired": _read_unpaired, "negative": _read_negative, "list": _read_list,
            "ranked": _read_ranked, "samples": _read_samples, "sft": _read_sft}
