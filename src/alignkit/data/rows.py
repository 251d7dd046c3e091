"""Row validation shared by every reader, transform and verb: field helpers that raise `RowProblem`, and
`collect`, which turns the problems of all rows into one DataError naming file, line and field.

    prompts = collect(records, lambda record: prompt_field(record.data))

A reader checks one row at a time and raises `RowProblem(field, message)` at the first problem;
`collect` runs it over every row and reports all bad rows at once, each as "file, line N, field 'x': ...".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from alignkit.data.errors import raise_if_any
from alignkit.data.prompts import Content, Prompt
from alignkit.data.records import Record

T = TypeVar("T")
KIND_NAMES = {"text": "a string", "messages": "a list of messages"}
ROLES = ("system", "user", "assistant", "tool")
SHOWN_LENGTH = 60  # characters of a bad value that an error message quotes


class RowProblem(Exception):
    """What is wrong with one field of one row (or, with `field=None`, with the row as a whole)."""

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message if field is None else f"field '{field}': {message}")


class Located(Protocol):
    where: str  # e.g. "prefs.jsonl, line 7"


R = TypeVar("R", bound=Located)


def collect(rows: Iterable[R], read: Callable[[R], T]) -> list[T]:
    """`read(row)` for every row (a `Record`, an `Example`: anything with a `where`); the RowProblems of all
    rows in one DataError (`raise_if_any`), each prefixed with its row's `where`."""
    results, problems = [], []
    for row in rows:
        try:
            results.append(read(row))
        except RowProblem as problem:
            problems.append(f"{row.where}, {problem}")
    raise_if_any(problems)
    return results


def shown(value: Any) -> str:
    """`repr(value)` for an error message, cut to SHOWN_LENGTH characters."""
    try:
        text = repr(value)
    except ValueError:  # holds an int past Python's int-to-string conversion limit
        return f"a value too large to show ({type(value).__name__})"
    return text if len(text) <= SHOWN_LENGTH else text[:SHOWN_LENGTH - 3] + "..."


def kind(value: Any, field: str) -> str:
    """``"text"`` for a string, ``"messages"`` for a valid message list (each message an object with a
    string 'role', one of ROLES, and a string 'content'); anything else is a RowProblem."""
    if isinstance(value, str):
        return "text"
    if not isinstance(value, list):
        raise RowProblem(field, f"expected a string or a list of messages, got {type(value).__name__}")
    for number, message in enumerate(value, start=1):
        if not isinstance(message, dict):
            raise RowProblem(field, f"message {number} is {type(message).__name__}, expected an object "
                                    "with 'role' and 'content'")
        for key in ("role", "content"):
            if message.get(key) is None:
                raise RowProblem(field, f"message {number} has no '{key}'")
            if not isinstance(message[key], str):
                raise RowProblem(field, f"message {number} '{key}' must be a string, "
                                        f"got {type(message[key]).__name__}")
        if message["role"] not in ROLES:
            raise RowProblem(field, f"message {number} has an unknown role {shown(message['role'])}; "
                                    f"expected one of {', '.join(ROLES)}")
    return "messages"


def required(data: dict, name: str) -> Any:
    """`data[name]`; a missing or null field is a RowProblem."""
    if data.get(name) is None:
        raise RowProblem(name, "missing")
    return data[name]


def prompt_field(data: dict, name: str = "prompt") -> Prompt:
    """A non-empty prompt (a string or a message list) from field `name`."""
    prompt = required(data, name)
    if kind(prompt, name) == "messages" and not prompt:
        raise RowProblem(name, "empty prompt (no messages)")
    if isinstance(prompt, str) and not prompt:
        raise RowProblem(name, "empty prompt")
    return prompt


def check_completion(value: Content, field: str) -> None:
    """A completion must hold non-blank text; a message list must be non-empty, start with an assistant
    message, and every assistant message must have non-blank content."""
    if isinstance(value, str):
        if not value.strip():
            raise RowProblem(field, "empty completion")
        return
    if not value:
        raise RowProblem(field, "empty completion (no messages)")
    if value[0]["role"] != "assistant":
        raise RowProblem(field, f"completion must start with an assistant message, not '{value[0]['role']}'")
    for number, message in enumerate(value, start=1):
        if message["role"] == "assistant" and not message["content"].strip():
            raise RowProblem(field, f"empty completion (assistant message {number} has empty content)")


def same_kind(value: Any, name: str, like: Content) -> None:
    """`value` is of the same kind (string or message list) as `like`, the row's prompt."""
    if kind(value, name) != kind(like, "prompt"):
        raise RowProblem(name, "prompt and completions must be all strings or all message lists")


def completion_field(data: dict, name: str, like: Content) -> Content:
    """A non-empty completion of the prompt `like`'s kind from field `name`."""
    value = required(data, name)
    same_kind(value, name, like)
    check_completion(value, name)
    return value


def completions_field(data: dict, name: str, like: Content, single_allowed: bool = False) -> tuple[Content, ...]:
    """A list of completions (or, with `single_allowed`, one completion) from field `name`."""
    value = required(data, name)
    if single_allowed and (isinstance(value, str) or (isinstance(value, list) and value
                                                       and isinstance(value[0], dict))):
        return (completion_field(data, name, like),)
    if not isinstance(value, list) or not value:
        raise RowProblem(name, "expected a non-empty list of completions")
    items = []
    for number, item in enumerate(value, start=1):
        label = f"{name}[{number}]"
        same_kind(item, label, like)
        check_completion(item, label)
        items.append(item)
    return tuple(items)


def number(value: Any, name: str) -> float:
    """A finite number (numeric strings, as CSV cells are, are accepted); booleans are not numbers."""
    if value is None:
        raise RowProblem(name, "missing")
    if isinstance(value, bool):
        raise RowProblem(name, f"expected a number, got {shown(value)}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise RowProblem(name, f"expected a number, got {shown(value)}") from None
    except OverflowError:  # an int beyond the float range
        result = math.inf
    if not math.isfinite(result):
        raise RowProblem(name, f"expected a finite number, got {shown(value)}")
    return result


def label_field(data: dict, name: str = "label") -> bool:
    """A boolean label (true = desirable) from field `name`: a boolean, or the string "true" or "false" in
    any case (as a CSV cell holds it); numbers such as 1 and 0 are not labels."""
    label = required(data, name)
    if isinstance(label, str) and label.lower() in ("true", "false"):
        return label.lower() == "true"
    if not isinstance(label, bool):
        raise RowProblem(name, f"expected true or false, got {shown(label)}")
    return label


def read_prompts(records: Sequence[Record], field: str = "prompt") -> list[Prompt]:
    """Each record's non-empty prompt (string or message list) from `field`; every bad row in one DataError."""
    return collect(records, lambda record: prompt_field(record.data, field))


def read_labels(records: Sequence[Record], field: str = "label") -> list[bool]:
    """Each record's boolean label from `field`; every bad row in one DataError."""
    return collect(records, lambda record: label_field(record.data, field))


def common_prefix_length(a: Sequence, b: Sequence) -> int:
    """How many leading items (characters, messages or token ids) ``a`` and ``b`` share."""
    shared = 0
    for left, right in zip(a, b):
        if left != right:
            break
        shared += 1
    return shared
