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


def word_pattern(word: str, case_sensitive: bool = False) -> re.Pattern:
    """`word` (or a phrase) as whole words: not preceded or followed by a word character."""
    return re.compile(r"(?<!\w)" + re.escape(word) + r"(?!\w)", 0 if case_sensitive else re.IGNORECASE)


def include_word(text: str, word: str) -> bool:
    """`word` (or phrase) occurs as whole words, ignoring case."""
    return word_pattern(word).search(text) is not None


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


REFUSAL_RE = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|i'?m not (?:able|allowed|a|an)|i am not (?:able|allowed|a|an)|"
    r"i cannot|i can'?t|as an ai)\b",
    re.IGNORECASE,
)
# Words that carry no topic: function words and the verbs of everyday task prompts.
TOPIC_STOPWORDS = frozenset("""
a an the of for to in on and or but your you yours what how why when where which who is are was were be been
do does did explain describe give tips advice about with that this these those it its at by from into some
write tell me my way ways good best new make list name share suggest someone something people things
""".split())


def refusal(text: str) -> bool:
    """Apologises or declines ("I'm sorry", "I cannot", "I'm not able", "as an AI")."""
    return REFUSAL_RE.search(text.replace("’", "'")) is not None


def topic_stems(topic: str) -> set[str]:
    """Four-letter stems of the topic's content words (length ≥ 4, not in TOPIC_STOPWORDS)."""
    return {w[:4] for w in (w.casefold() for w in words(topic)) if len(w) >= 4 and w not in TOPIC_STOPWORDS}


def on_topic(text: str, topic: str, min_words: int = 3) -> bool:
    """A substantive answer: ≥ `min_words` words, no refusal, and it shares a content-word stem with `topic`.

    A heuristic guard against answers that satisfy a format check by saying nothing ("I'm not a
    helpful AI." has no commas); stems are 4-letter prefixes, so "knitting" matches "knit".
    """
    if len(words(text)) < min_words or refusal(text):
        return False
    return bool(topic_stems(topic) & {w.casefold()[:4] for w in words(text)})


def repetitive(text: str, n: int = 3, times: int = 3) -> bool:
    """Some run of `n` words occurs `times` times or more ("a little island is a little island is ...")."""
    tokens = [w.casefold() for w in words(text)]
    counts: dict[tuple[str, ...], int] = {}
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i:i + n])
        counts[gram] = counts.get(gram, 0) + 1
    return any(count >= times for count in counts.values())


def substantive(text: str, topic: str) -> bool:
    """On topic (see `on_topic`) and not looping (see `repetitive`): an answer that says something."""
    return on_topic(text, topic) and not repetitive(text)


_VERIFIERS: dict[str, Callable[[str, dict], bool]] = {
    "max_words": lambda text, spec: max_words(text, int(spec["n"])),
    "include_word": lambda text, spec: include_word(text, spec["word"]),
    "lowercase": lambda text, spec: lowercase(text),
    "no_commas": lambda text, spec: no_commas(text),
    "ends_with": lambda text, spec: ends_with(text, spec["text"]),
    "starts_with": lambda text, spec: starts_with(text, spec["text"]),
    "bullet_list": lambda text, spec: bullet_list(text, int(spec["n"])),
    "on_topic": lambda text, spec: on_topic(text, spec["topic"]),
    "not_refusal": lambda text, spec: not refusal(text),
    "substantive": lambda text, spec: substantive(text, spec["topic"]),
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
