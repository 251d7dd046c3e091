"""Training rows of every data format, validated, as prompts with named completion slots.

An objective declares one format (see `alignkit.objectives.registry.FORMATS`); its rows look like this
(strings, or message lists as in TRL's conversational format; extra fields are ignored):

* ``preference``: ``prompt``, ``chosen``, ``rejected`` (TRL's preference format). The prompt may be
  implicit: ``chosen`` and ``rejected`` alone, sharing a leading text or leading messages, which are
  split off as TRL's ``extract_prompt`` does (a shared trailing space is left to the completions).
  Where TRL would return an empty or nonsensical split (nothing shared, one completion a prefix of the
  other) the row is an error instead. An optional ``label_smoothing`` (a number in [0, 0.5)) is the row's
  own ε for objectives that take one (`dpo`: SPA's confidence-based smoothing); all rows or none;
* ``joint``: ``prompt_chosen``, ``chosen``, ``prompt_rejected``, ``rejected`` — the two answers may
  answer different prompts (JPO); rows with one ``prompt`` are the conditional special case;
* ``unpaired``: ``prompt``, ``completion``, ``label`` (true = desirable; TRL's unpaired format) and
  optionally ``scores`` (e.g. BCO's density-ratio weight from `alignkit.objectives.udm`);
* ``negative``: ``prompt``, ``rejected`` (negatives only; all labels false);
* ``list``: ``prompt``, ``chosen`` (one completion or a list), ``rejected`` (a list of M);
* ``ranked``: ``prompt``, ``completions`` (a list, best first);
* ``samples``: ``prompt``, ``rejected``, ``samples`` (K completions, e.g. from `alignkit sample`);
* ``sft``: ``prompt``, ``completion`` and optionally ``scores`` (a number or a list of numbers);
* ``context``: ``prompt``, ``context``, ``distractor_context``, ``chosen``, ``rejected`` — a preference pair
  answered with the context passage before the prompt, plus the ``distractor`` slot: the same ``chosen``
  answer with the distractor passage instead (Re-Align's context-contrast preference; the passage is placed
  by `alignkit.data.prompts.with_context`).

Every list slot must have the same length in every row of a dataset (so a batch is rectangular), and the
rows of one source must all be standard (strings) or all conversational (message lists).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

from alignkit.data.errors import DataError, raise_if_any
from alignkit.data.prompts import Content, with_context
from alignkit.data.records import Reading, Record, Source, read_records
from alignkit.data.rows import (KIND_NAMES, RowProblem, check_completion, common_prefix_length,
                                completion_field, completions_field, kind, label_field, number, prompt_field, required,
                                same_kind)

FORMAT_FIELDS = {
    "preference": "prompt, chosen, rejected, optional label_smoothing",
    "joint": "prompt_chosen, chosen, prompt_rejected, rejected (or one prompt)",
    "unpaired": "prompt, completion, label true/false, optional scores",
    "negative": "prompt, rejected",
    "list": "prompt, chosen (one or a list), rejected (a list)",
    "ranked": "prompt, completions (a list, best first)",
    "samples": "prompt, samples (a list), rejected",
    "sft": "prompt, completion, optional scores",
    "context": "prompt, context, distractor_context, chosen, rejected",
}
PAIR_SLOTS = (("chosen", 1), ("rejected", 1))
COMPLETION_SLOT = (("completion", 1),)
CONTEXT_SLOTS = (("chosen", 1), ("rejected", 1), ("distractor", 1))
ROW_KINDS = {False: ("standard", "strings"), True: ("conversational", "message lists")}  # by Example.conversational
Slots = tuple[tuple[str, int], ...]


def slot_values(groups: tuple, slots: Slots, name: str) -> tuple:
    """The completions of slot `name` (in slot order over all groups); KeyError for an unknown slot."""
    flat = [completion for _, completions in groups for completion in completions]
    start = 0
    for slot, size in slots:
        if slot == name:
            return tuple(flat[start:start + size])
        start += size
    raise KeyError(f"no slot {name!r}; the slots are {[slot for slot, _ in slots]}")


@dataclass(frozen=True)
class Example:
    """One row: `groups` of (prompt, completions), completions in slot order; `slots` names them."""

    groups: tuple[tuple[Content, tuple[Content, ...]], ...]
    slots: Slots  # (slot name, number of completions), in order
    where: str
    label: float | None = None
    scores: tuple[float, ...] = ()
    label_smoothing: float | None = None  # a preference row's own label smoothing ε (SPA's confidence)

    @classmethod
    def pair(cls, prompt: Content, chosen: Content, rejected: Content, where: str = "row") -> Example:
        """A preference pair."""
        return cls(((prompt, (chosen, rejected)),), PAIR_SLOTS, where)

    @classmethod
    def single(cls, prompt: Content, completion: Content, where: str = "row") -> Example:
        """One prompt with one completion (the `completion` slot), e.g. to score it."""
        return cls(((prompt, (completion,)),), COMPLETION_SLOT, where)

    @property
    def prompt(self) -> Content:
        """The prompt of the first (usually the only) group."""
        return self.groups[0][0]

    def slot(self, name: str) -> tuple[Content, ...]:
        """The completions of slot `name`, e.g. `example.slot("chosen")`."""
        return slot_values(self.groups, self.slots, name)

    @property
    def conversational(self) -> bool:
        return isinstance(self.groups[0][0], list)


def load_examples(source: Source, data_format: str, *, with_kl: bool = False) -> list[Example]:
    """Load and validate rows of `data_format`; every bad row is reported in one DataError naming its
    file, line and field, together with the lines that could not be read at all (malformed JSON, invalid
    UTF-8), in file order. `with_kl` (unpaired data) adds the `kl` slot: row i's completion paired with
    row i's prompt is compared against the completion of row (i + 1) mod N, a fixed mismatch."""
    if data_format not in READERS:
        raise ValueError(f"unknown data format {data_format!r}; known: {', '.join(READERS)}")
    reading = read_records(source)
    if not reading.records and not reading.problems:
        raise DataError(f"{os.fspath(source) if isinstance(source, (str, os.PathLike)) else 'dataset'}: no rows")
    examples = _validated(reading, READERS[data_format])
    _check_one_kind(examples)
    _check_rectangular(examples)
    if with_kl:
        examples = _with_mismatched_completions(examples)
    return examples


def _validated(reading: Reading, read: Callable[[Record], Example]) -> list[Example]:
    """`read` of every readable record; the problems of the unreadable lines or rows and of the rows `read`
    rejects are raised as one DataError, in source order (as `collect` words a rejected row)."""
    problems = [((problem.before, 0), problem.message) for problem in reading.problems]
    examples = []
    for index, record in enumerate(reading.records):
        try:
            examples.append(read(record))
        except RowProblem as problem:
            problems.append(((index, 1), f"{record.where}, {problem}"))
    problems.sort(key=lambda placed: placed[0])  # stable: problems at one place keep their order
    raise_if_any([message for _, message in problems], reading.unit if reading.problems else "rows")
    return examples


def _check_one_kind(examples: list[Example]) -> None:
    """All rows standard or all conversational: a source mixing the two is an error at its first row of the
    other kind."""
    first = examples[0]
    for example in examples:
        if example.conversational != first.conversational:
            (kind_name, parts), (first_name, first_parts) = (ROW_KINDS[example.conversational],
                                                             ROW_KINDS[first.conversational])
            raise DataError(f"{example.where}: a {kind_name} row ({parts}), but the rows before it, from "
                            f"{first.where} on, are {first_name} ({first_parts}); one source must be all "
                            "standard or all conversational")


def _check_rectangular(examples: list[Example]) -> None:
    first = examples[0]
    for example in examples:
        if example.slots != first.slots:
            raise DataError(f"{example.where}: completions per slot {dict(example.slots)} differ from "
                            f"{first.where}'s {dict(first.slots)}; every row needs the same number")
        if (example.label_smoothing is None) != (first.label_smoothing is None):
            raise DataError(f"{example.where}, field 'label_smoothing': "
                            f"{'missing' if example.label_smoothing is None else 'given'}, but {first.where} "
                            f"{'has one' if example.label_smoothing is None else 'has none'}; all rows or none")
        if len(example.scores) != len(first.scores):
            raise DataError(f"{example.where}, field 'scores': {len(example.scores)} values, but {first.where} "
                            f"has {len(first.scores)}; every row needs the same number")


def _with_mismatched_completions(examples: list[Example]) -> list[Example]:
    if len(examples) < 2:
        raise DataError(f"{examples[0].where}: the kl slot needs at least two rows (a row's prompt with another "
                        "row's completion), and this is the only one")
    out = []
    for i, example in enumerate(examples):
        (prompt, (completion,)), = example.groups
        other = examples[(i + 1) % len(examples)].groups[0][1][0]
        out.append(Example(((prompt, (completion, other)),), example.slots + (("kl", 1),), example.where,
                           example.label, example.scores))
    return out


# ------------------------------------------------------------------------------------- preference rows

MIXED = "prompt, chosen and rejected must be all strings or all message lists"


def _read_preference(record: Record) -> Example:
    """A pair with an explicit prompt; an implicit prompt is split off the shared start of the two."""
    data = record.data
    for field in ("chosen", "rejected"):
        required(data, field)
    fields = ("prompt", "chosen", "rejected") if data.get("prompt") is not None else ("chosen", "rejected")
    kinds = {field: kind(data[field], field) for field in fields}
    for field in fields:
        if kinds[field] != kinds["chosen"]:
            raise RowProblem(field, f"is {KIND_NAMES[kinds[field]]} but 'chosen' is "
                                    f"{KIND_NAMES[kinds['chosen']]}; {MIXED}")
    conversational = kinds["chosen"] == "messages"
    if "prompt" in fields:
        prompt, chosen, rejected = data["prompt"], data["chosen"], data["rejected"]
        if conversational and not prompt:
            raise RowProblem("prompt", "empty prompt (no messages)")
        if chosen == rejected:
            raise RowProblem("rejected", "identical to 'chosen'")
    elif conversational:
        prompt, chosen, rejected = _split_messages(data["chosen"], data["rejected"])
    else:
        prompt, chosen, rejected = _split_text(data["chosen"], data["rejected"])
    check_completion(chosen, "chosen")
    check_completion(rejected, "rejected")
    return replace(Example.pair(prompt, chosen, rejected, record.where), label_smoothing=_label_smoothing(data))


def _check_diverges(chosen: Content, rejected: Content, shared: int) -> None:
    """Both completions must go on after the shared part (neither is a prefix of the other)."""
    if chosen == rejected:
        raise RowProblem("rejected", "identical to 'chosen'")
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if shared == len(value):
            raise RowProblem(field, "empty completion (nothing left after the prompt shared with the other "
                                    "completion)")


def _split_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Implicit string prompt: the longest common prefix, minus a trailing space (which goes to the
    completions), as TRL's ``extract_prompt`` does."""
    shared = common_prefix_length(chosen, rejected)
    _check_diverges(chosen, rejected, shared)
    if shared and chosen[shared - 1] == " ":
        shared -= 1
    if not chosen[:shared].strip():
        raise RowProblem("prompt", "implicit prompt: 'chosen' and 'rejected' share no leading text, so "
                                   "there is no prompt; add a 'prompt' field")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _split_messages(chosen: list, rejected: list) -> tuple[list, list, list]:
    """Implicit conversational prompt: the longest shared leading message list; the rest of each
    conversation must start with an assistant message."""
    shared = common_prefix_length(chosen, rejected)
    if shared == 0:
        raise RowProblem("prompt", "implicit prompt: 'chosen' and 'rejected' share no leading messages, so "
                                   "there is no prompt; add a 'prompt' field")
    _check_diverges(chosen, rejected, shared)
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        role = value[shared]["role"]
        if role != "assistant":
            raise RowProblem(field, f"implicit prompt: after the {shared} shared message(s) the conversation "
                                    f"must go on with an assistant message, not '{role}'")
    return chosen[:shared], chosen[shared:], rejected[shared:]


# -------------------------------------------------------------------------------- rows of the other formats

def _scores(data: dict) -> tuple[float, ...]:
    """The optional `scores` field: a number or a non-empty list of numbers."""
    raw = data.get("scores")
    if raw is None:
        return ()
    values = raw if isinstance(raw, list) else [raw]
    if not values:
        raise RowProblem("scores", "empty list")
    return tuple(number(value, f"scores[{i}]") for i, value in enumerate(values, start=1))


def _label_smoothing(data: dict) -> float | None:
    """The optional `label_smoothing` field of a preference row: a number in [0, 0.5)."""
    if data.get("label_smoothing") is None:
        return None
    value = number(data["label_smoothing"], "label_smoothing")
    if not 0 <= value < 0.5:
        raise RowProblem("label_smoothing", f"must be in [0, 0.5), got {value}")
    return value


def _read_joint(record: Record) -> Example:
    data = record.data
    if data.get("prompt") is not None:
        prompt = prompt_field(data)
        return Example.pair(prompt, completion_field(data, "chosen", prompt), completion_field(data, "rejected", prompt),
                            record.where)
    first, second = prompt_field(data, "prompt_chosen"), prompt_field(data, "prompt_rejected")
    same_kind(second, "prompt_rejected", first)
    groups = ((first, (completion_field(data, "chosen", first),)), (second, (completion_field(data, "rejected", first),)))
    return Example(groups, PAIR_SLOTS, record.where)


def _read_unpaired(record: Record) -> Example:
    data = record.data
    prompt = prompt_field(data)
    return Example(((prompt, (completion_field(data, "completion", prompt),)),), COMPLETION_SLOT, record.where,
                   label=float(label_field(data)), scores=_scores(data))


def _read_negative(record: Record) -> Example:
    data = record.data
    prompt = prompt_field(data)
    return Example(((prompt, (completion_field(data, "rejected", prompt),)),), COMPLETION_SLOT, record.where,
                   label=0.0)


def _read_list(record: Record) -> Example:
    data = record.data
    prompt = prompt_field(data)
    chosen = completions_field(data, "chosen", prompt, single_allowed=True)
    rejected = completions_field(data, "rejected", prompt)
    return Example(((prompt, chosen + rejected),), (("chosen", len(chosen)), ("rejected", len(rejected))),
                   record.where)


def _read_ranked(record: Record) -> Example:
    data = record.data
    prompt = prompt_field(data)
    ranked = completions_field(data, "completions", prompt)
    if len(ranked) < 2:
        raise RowProblem("completions", "a ranking needs at least two completions")
    return Example(((prompt, ranked),), (("ranked", len(ranked)),), record.where)


def _read_samples(record: Record) -> Example:
    data = record.data
    prompt = prompt_field(data)
    samples = completions_field(data, "samples", prompt)
    return Example(((prompt, samples + (completion_field(data, "rejected", prompt),)),),
                   (("samples", len(samples)), ("rejected", 1)), record.where)


def _read_sft(record: Record) -> Example:
    data = record.data
    prompt = prompt_field(data)
    return Example(((prompt, (completion_field(data, "completion", prompt),)),), COMPLETION_SLOT, record.where,
                   scores=_scores(data))


def _read_context(record: Record) -> Example:
    """A pair under the right context, and the chosen answer again under the distractor context."""
    data = record.data
    prompt = prompt_field(data)
    contexts = [_passage(data, field) for field in ("context", "distractor_context")]
    if contexts[0] == contexts[1]:
        raise RowProblem("distractor_context", "identical to 'context'; the contrast needs two passages")
    chosen, rejected = completion_field(data, "chosen", prompt), completion_field(data, "rejected", prompt)
    if chosen == rejected:
        raise RowProblem("rejected", "identical to 'chosen'")
    try:
        right, distractor = (with_context(prompt, context) for context in contexts)
    except ValueError as error:
        raise RowProblem("prompt", str(error)) from None
    return Example(((right, (chosen, rejected)), (distractor, (chosen,))), CONTEXT_SLOTS, record.where)


def _passage(data: dict, field: str) -> str:
    value = required(data, field)
    if not isinstance(value, str) or not value.strip():
        raise RowProblem(field, "must be a non-blank string (a passage)")
    return value


READERS = {"preference": _read_preference, "joint": _read_joint, "unpaired": _read_unpaired,
           "negative": _read_negative, "list": _read_list, "ranked": _read_ranked, "samples": _read_samples,
           "sft": _read_sft, "context": _read_context}
