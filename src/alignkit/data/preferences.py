"""Preference rows in TRL's four formats, validated, with implicit prompts made explicit.

Formats (field values unchanged from TRL):

* standard explicit: ``prompt``, ``chosen``, ``rejected`` strings;
* standard implicit: ``chosen``, ``rejected`` strings that start with the same prompt text;
* conversational explicit: ``prompt`` a list of messages ``{"role": str, "content": str}``,
  ``chosen`` / ``rejected`` lists of messages starting with an assistant message;
* conversational implicit: ``chosen`` / ``rejected`` full conversations sharing leading messages.

Implicit prompts are extracted as TRL's ``extract_prompt`` does: the longest shared leading text (a
shared trailing space is left to the completions) or the longest shared leading message list.
Where TRL would return an empty or nonsensical split (nothing shared, one completion a prefix of the
other) this module raises DataError instead. Extra fields are ignored.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from alignkit.data.errors import DataError, raise_if_any
from alignkit.data.records import Record, Source, load_records

Content = Union[str, list]
COMPLETIONS = ("chosen", "rejected")
MIXED = "prompt, chosen and rejected must be all strings or all message lists"


@dataclass(frozen=True)
class PreferenceExample:
    """One preference pair with an explicit prompt; ``where`` names its file and line/row."""

    prompt: str | list[dict]
    chosen: str | list[dict]
    rejected: str | list[dict]
    where: str

    @property
    def conversational(self) -> bool:
        """True when prompt, chosen and rejected are message lists rather than strings."""
        return isinstance(self.chosen, list)


class _RowProblem(Exception):
    """What is wrong with one field of one row (internal; collected into a DataError)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field '{field}': {message}")


def load_preferences(source: Source) -> list[PreferenceExample]:
    """Load and validate preference rows from any source ``load_records`` accepts.

    Every bad row is reported in one DataError (one message per row, naming file, line/row and field).
    A source without rows is an error too.
    """
    records = load_records(source)
    if not records:
        raise DataError(f"{_describe(source)}: no rows")
    examples, problems = [], []
    for record in records:
        try:
            examples.append(_preference_from_record(record))
        except _RowProblem as problem:
            problems.append(f"{record.where}, {problem}")
    raise_if_any(problems)
    return examples


def _preference_from_record(record: Record) -> PreferenceExample:
    """Validate one row and return it with an explicit prompt.

    Raises _RowProblem for the first problem found (internal; ``load_preferences`` turns it into a
    DataError).
    """
    data = record.data
    for field in COMPLETIONS:
        if data.get(field) is None:
            raise _RowProblem(field, "missing")
    fields = ("prompt", *COMPLETIONS) if data.get("prompt") is not None else COMPLETIONS
    kinds = {field: _kind(data[field], field) for field in fields}
    for field in fields:
        if kinds[field] != kinds["chosen"]:
            raise _RowProblem(field, f"is {_KIND_NAMES[kinds[field]]} but 'chosen' is "
                                     f"{_KIND_NAMES[kinds['chosen']]}; {MIXED}")
    conversational = kinds["chosen"] == "messages"
    if "prompt" in fields:
        prompt, chosen, rejected = data["prompt"], data["chosen"], data["rejected"]
        if conversational and not prompt:
            raise _RowProblem("prompt", "empty prompt (no messages)")
    elif conversational:
        prompt, chosen, rejected = _split_messages(data["chosen"], data["rejected"])
    else:
        prompt, chosen, rejected = _split_text(data["chosen"], data["rejected"])
    _check_completion(chosen, "chosen")
    _check_completion(rejected, "rejected")
    return PreferenceExample(prompt=prompt, chosen=chosen, rejected=rejected, where=record.where)


_KIND_NAMES = {"text": "a string", "messages": "a list of messages"}


def _kind(value: Any, field: str) -> str:
    """``"text"`` for a string, ``"messages"`` for a valid message list; anything else is a problem."""
    if isinstance(value, str):
        return "text"
    if not isinstance(value, list):
        raise _RowProblem(field, f"expected a string or a list of messages, got {type(value).__name__}")
    for number, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise _RowProblem(field, f"message {number} is {type(message).__name__}, expected an object "
                                     "with 'role' and 'content'")
        for key in ("role", "content"):
            if message.get(key) is None:
                raise _RowProblem(field, f"message {number} has no '{key}'")
            if not isinstance(message[key], str):
                raise _RowProblem(field, f"message {number} '{key}' must be a string, "
                                         f"got {type(message[key]).__name__}")
    return "messages"


def _check_completion(value: Content, field: str) -> None:
    """A completion must hold non-blank text; a message list must be non-empty, start with an
    assistant message, and every assistant message must have non-blank content."""
    if isinstance(value, str):
        if not value.strip():
            raise _RowProblem(field, "empty completion")
        return
    if not value:
        raise _RowProblem(field, "empty completion (no messages)")
    if value[0]["role"] != "assistant":
        raise _RowProblem(field, f"completion must start with an assistant message, not '{value[0]['role']}'")
    for number, message in enumerate(value, start=1):
        if message["role"] == "assistant" and not message["content"].strip():
            raise _RowProblem(field, f"empty completion (assistant message {number} has empty content)")


def common_prefix_length(a: Sequence, b: Sequence) -> int:
    """How many leading items (characters, messages or token ids) ``a`` and ``b`` share."""
    shared = 0
    for left, right in zip(a, b):
        if left != right:
            break
        shared += 1
    return shared


def _check_diverges(chosen: Content, rejected: Content, shared: int) -> None:
    """Both completions must go on after the shared part (neither is a prefix of the other)."""
    if chosen == rejected:
        raise _RowProblem("rejected", "identical to 'chosen'")
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        if shared == len(value):
            raise _RowProblem(field, "empty completion (nothing left after the prompt shared with the other "
                                     "completion)")


def _split_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Implicit string prompt: the longest common prefix, minus a trailing space (which goes to the
    completions), as TRL's ``extract_prompt`` does."""
    shared = common_prefix_length(chosen, rejected)
    _check_diverges(chosen, rejected, shared)
    if shared and chosen[shared - 1] == " ":
        shared -= 1
    if not chosen[:shared].strip():
        raise _RowProblem("prompt", "implicit prompt: 'chosen' and 'rejected' share no leading text, so "
                                    "there is no prompt; add a 'prompt' field")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _split_messages(chosen: list, rejected: list) -> tuple[list, list, list]:
    """Implicit conversational prompt: the longest shared leading message list; the rest of each
    conversation must start with an assistant message."""
    shared = common_prefix_length(chosen, rejected)
    if shared == 0:
        raise _RowProblem("prompt", "implicit prompt: 'chosen' and 'rejected' share no leading messages, so "
                                    "there is no prompt; add a 'prompt' field")
    _check_diverges(chosen, rejected, shared)
    for field, value in (("chosen", chosen), ("rejected", rejected)):
        role = value[shared]["role"]
        if role != "assistant":
            raise _RowProblem(field, f"implicit prompt: after the {shared} shared message(s) the conversation "
                                     f"must go on with an assistant message, not '{role}'")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def _describe(source: Source) -> str:
    """A short name for ``source`` in messages."""
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "dataset"
