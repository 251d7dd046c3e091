"""Checks of the values of a parsed row, shared by every reader of `alignkit.data.records`.

`parse_json` parses JSON keeping what `json.loads` would silently drop or crash on for `row_problem` to
report: an object naming a key twice (json keeps the last value) and an integer too long to convert.
`row_problem` then walks a row's values and names the first field holding one of those,
a lone surrogate (a string that is not valid Unicode and fails to encode later), or values nested more than
`MAX_DEPTH` levels deep.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 100  # lists and objects nested deeper than this in a row are an error
SURROGATE = re.compile("[\ud800-\udfff]")
TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"


class DuplicateKeys(dict):
    """A JSON object that named `key` more than once (json keeps the last value)."""

    def __init__(self, pairs: list[tuple[str, Any]], key: str) -> None:
        super().__init__(pairs)
        self.key = key


class LongInteger:
    """A JSON integer with more digits than Python converts (`sys.get_int_max_str_digits`)."""

    def __init__(self, digits: str) -> None:
        self.digits = digits


def _json_object(pairs: list[tuple[str, Any]]) -> dict:
    """A parsed JSON object; one that names a key twice is kept as `DuplicateKeys` for the row check."""
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    return DuplicateKeys(pairs, first_repeated([key for key, _ in pairs]))


def first_repeated(names: list[str]) -> str | None:
    """The first name in `names` that an earlier one already gave (None if all differ)."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


def _json_integer(digits: str) -> int | LongInteger:
    """A parsed JSON integer, or `LongInteger` for one too long to convert."""
    try:
        return int(digits)
    except ValueError:
        return LongInteger(digits)


def parse_json(text: str) -> Any:
    """`json.loads` keeping duplicate keys and too-long integers for the row check; JSONDecodeError, or
    RecursionError for brackets nested too deep to parse."""
    return json.loads(text, object_pairs_hook=_json_object, parse_int=_json_integer)


def _printable(text: str) -> str:
    """`text` with lone surrogates written as escapes, so that a message naming it can be printed."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def row_problem(row: Mapping) -> str | None:
    """What makes a row's values unusable, as ", field 'x': ..." (or ": ..." for the row itself); None if
    nothing: a duplicate JSON key, a too-long integer, a lone surrogate, nesting deeper than MAX_DEPTH
    (named by its top-level field, not by the path of a hundred indices down to it)."""
    if isinstance(row, DuplicateKeys):
        return f": duplicate key '{_printable(row.key)}' (JSON keeps only the last value)"
    found = _first_problem(row, 0)
    return None if found is None else f", field '{found[0]}': {found[1]}"


def _first_problem(value: Any, depth: int) -> tuple[str, str] | None:
    """(the path below `value`, what is wrong) for the first unusable thing in `value` (`depth` containers
    down in its row), or None. Recursion stops at MAX_DEPTH, so any input is safe."""
    if isinstance(value, str):
        return None if value.isascii() else _surrogate(value, "text (not valid Unicode; fix its encoding)")
    if isinstance(value, LongInteger):
        return "", f"an integer of {len(value.digits.lstrip('-'))} digits is too long to read"
    if not isinstance(value, (list, tuple, Mapping)):
        return None
    if depth > MAX_DEPTH:
        return "", TOO_DEEP
    if isinstance(value, DuplicateKeys):
        return "", f"duplicate key '{_printable(value.key)}' (JSON keeps only the last value)"
    mapping = isinstance(value, Mapping)
    for key, item in value.items() if mapping else enumerate(value, start=1):
        found = (isinstance(key, str) and _surrogate(key, "key (not valid Unicode)")) or _first_problem(item, depth + 1)
        if found:
            step = (f".{_printable(str(key))}" if depth else _printable(str(key))) if mapping else f"[{key}]"
            return (step if found[1] == TOO_DEEP else step + found[0]), found[1]  # too deep: the field alone
    return None


def _surrogate(text: str, what: str) -> tuple[str, str] | None:
    """("", problem) if `text` holds a lone surrogate, else None."""
    surrogate = SURROGATE.search(text)
    return None if surrogate is None else ("", f"lone surrogate {surrogate.group()!r} in the {what}")


def too_deep_line(text: str) -> int:
    """The line of JSON `text` on which its brackets (outside strings) first nest deeper than MAX_DEPTH."""
    depth, in_string, escaped = 0, False, False
    for index, char in enumerate(text):
        if in_string:
            in_string = escaped or char != '"'
            escaped = not escaped and char == "\\"
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return text.count("\n", 0, index) + 1
        elif char in "]}":
            depth -= 1
    return 1
