"""Programmatic verifiers for simple, IFEval-like instructions.

Every verifier is a small pure function `(text, ...) -> bool`; `check(spec, text)` dispatches on
`spec["type"]`. Specs are plain JSON-able dicts, for example::

    {"type": "max_words", "n": 20}
    {"type": "include_word", "word": "ocean"}
    {"type": "all", "checks": [{"type": "lowercase"}, {"type": "no_commas"}]}

A *word* is a maximal run of Unicode word characters (`\\w`, so letters, digits and underscore in
any script), optionally joined by inner apostrophes: "don't" and "l’eau" are one word each, and
"state-of-the-art" is four. Word matching is case-insensitive and respects word boundaries.
"""

from __future__ import annotations

import re
from collections.abc import Callable

WORD_RE = re.compile(r"\w+(?:['’]\w+)*")
BULLET_RE = re.compile(r"^\s*[-*•]\s+\S", re.MULTILINE)
COMMAS = (",", "，", "、")


def words(text: str) -> list[str]:
    """The words of `text` (see the module docstring for the definition)."""
    return WORD_RE.findall(text)


def max_words(text: str, n: int) -> bool:
    """At least one word and at most `n` words."""
    return 0 < len(words(text)) <= n


def include_word(text: str, word: str) -> bool:
    """`word` (or phrase) occurs as whole words, ignoring case."""
    pattern = r"(?<!\w)" + re.escape(word) + r"(?!\w)"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def lowercase(text: str) -> bool:
    """Contains at least one letter and no upper-case (or title-case) letters."""
    return any(ch.isalpha() for ch in text) and not any(ch.isupper() or ch.istitle() for ch in text)


def no_commas(text: str) -> bool:
    """Non-empty and free of commas (ASCII, full-width and ideographic)."""
    return bool(text.strip()) and not any(comma in text for comma in COMMAS)


def ends_with(text: str, suffix: str) -> bool:
    """Ends with `suffix`, ignoring case and surrounding whitespace (punctuation must match)."""
    return bool(suffix.strip()) and text.strip().casefold().endswith(suffix.strip().casefold())


def starts_with(text: str, prefix: str) -> bool:
    """Starts with `prefix`, ignoring case and surrounding whitespace (punctuation must match)."""
    return bool(prefix.strip()) and text.strip().casefold().startswith(prefix.strip().casefold())


def bullet_list(text: str, n: int) -> bool:
    """Exactly `n` lines that are bullets ("- ", "* " or "• " followed by text); other lines are allowed."""
    return len(BULLET_RE.findall(text)) == n


_VERIFIERS: dict[str, Callable[[str, dict], bool]] = {
    "max_words": lambda text, spec: max_words(text, int(spec["n"])),
    "include_word": lambda text, spec: include_word(text, spec["word"]),
    "lowercase": lambda text, spec: lowercase(text),
    "no_commas": lambda text, spec: no_commas(text),
    "ends_with": lambda text, spec: ends_with(text, spec["text"]),
    "starts_with": lambda text, spec: starts_with(text, spec["text"]),
    "bullet_list": lambda text, spec: bullet_list(text, int(spec["n"])),
    "all": lambda text, spec: all(check(sub, text) for sub in spec["checks"]),
}

CHECK_TYPES = tuple(_VERIFIERS)


def check(spec: dict, text: str) -> bool:
    """Whether `text` satisfies the instruction described by `spec`; unknown types raise ValueError."""
    kind = spec.get("type")
    if kind not in _VERIFIERS:
        raise ValueError(f"unknown check type {kind!r}; known: {', '.join(CHECK_TYPES)}")
    return _VERIFIERS[kind](text, spec)


def family(spec: dict) -> str:
    """A short label for reporting: the type, or `all(a+b)` for conjunctions."""
    if spec.get("type") == "all":
        return "all(" + "+".join(sub["type"] for sub in spec["checks"]) + ")"
    return str(spec.get("type"))
