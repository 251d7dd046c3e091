"""Programmatic verifier rewards: 1.0 when a completion passes the check, 0.0 when it fails.

All verifiers read only the completion's text (`text_of`: a string, or the assistant messages of a message
list). Words follow `alignkit.models.verifiers.words`: maximal runs of Unicode word characters (`\\w` with
re.UNICODE, so "café" and "naïve" are one word), inner apostrophes joining ("don't" is one word). An empty
completion has zero words and zero non-space characters.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from alignkit.data.prompts import Content, content_key, prompt_text, text_of
from alignkit.lazy import lazy
from alignkit.models.rewards.base import Reward, TextReward, check_lengths
from alignkit.models.verifiers import check, max_words, refusal, substantive, word_pattern, words

torch = lazy("torch")


class MaxWords(TextReward):
    """1.0 iff the completion has between 1 and `n` words (empty fails, as in `models.verifiers.max_words`)."""

    def __init__(self, n: int):
        self.n = int(n)

    def check(self, text: str) -> float:
        return float(max_words(text, self.n))


class WordCount(TextReward):
    """The completion's number of words (a count, not 0/1: e.g. DPA's verbosity attribute)."""

    def check(self, text: str) -> float:
        return float(len(words(text)))


class MinWords(TextReward):
    """1.0 iff the completion has at least `n` words."""

    def __init__(self, n: int):
        self.n = int(n)

    def check(self, text: str) -> float:
        return float(len(words(text)) >= self.n)


class MaxChars(TextReward):
    """1.0 iff the completion is non-blank and has at most `n` characters (Unicode code points, as written)."""

    def __init__(self, n: int):
        self.n = int(n)

    def check(self, text: str) -> float:
        return float(bool(text.strip()) and len(text) <= self.n)


class RequiredWords(TextReward):
    """1.0 iff every one of `words` occurs as a whole word ("cat" does not match "category")."""

    def __init__(self, words: Iterable[str], case_sensitive: bool = False):
        self.patterns = [word_pattern(w, case_sensitive) for w in words]

    def check(self, text: str) -> float:
        return float(all(p.search(text) for p in self.patterns))


class ForbiddenWords(TextReward):
    """1.0 iff none of `words` occurs as a whole word."""

    def __init__(self, words: Iterable[str], case_sensitive: bool = False):
        self.patterns = [word_pattern(w, case_sensitive) for w in words]

    def check(self, text: str) -> float:
        return float(not any(p.search(text) for p in self.patterns))


class RegexMatch(TextReward):
    """1.0 iff `re.search(pattern, text)` finds a match (`must_match=True`) or finds none (`must_match=False`).

    Anchors behave as in `re`: "^" and "$" bind to the whole text unless `flags` has re.MULTILINE; `fullmatch=True`
    requires the whole text to match.
    """

    def __init__(self, pattern: str, must_match: bool = True, flags: int = 0, fullmatch: bool = False):
        self.regex = re.compile(pattern, flags | re.UNICODE)
        self.must_match = must_match
        self.fullmatch = fullmatch

    def check(self, text: str) -> float:
        found = (self.regex.fullmatch(text) if self.fullmatch else self.regex.search(text)) is not None
        return float(found == self.must_match)


FENCE_RE = re.compile(r"^```[\w-]*\s*\n(.*?)\n?```$", re.DOTALL)


def parse_json(text: str) -> tuple[bool, Any]:
    """(ok, value) for the text as JSON, after stripping whitespace and one surrounding Markdown code fence."""
    body = text.strip()
    fenced = FENCE_RE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        return True, json.loads(body)
    except ValueError:
        return False, None


class JsonValid(TextReward):
    """1.0 iff the completion parses as JSON (see `parse_json`)."""

    def check(self, text: str) -> float:
        return float(parse_json(text)[0])


_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool)
    or isinstance(v, float) and v.is_integer(),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def validate(value: Any, schema: Mapping) -> bool:
    """A JSON-Schema subset: `type` (name or list), `enum`, `properties`, `required`, `additionalProperties`
    (bool), `items` (one schema), `minItems`/`maxItems`; nested objects and arrays recurse. Other keywords are
    ignored."""
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else list(kinds)
        unknown = [k for k in kinds if k not in _TYPES]
        if unknown:
            raise ValueError(f"unsupported schema type(s) {unknown}")
        if not any(_TYPES[k](value) for k in kinds):
            return False
    if "enum" in schema and not any(value == e and type(value) is type(e) or _num_eq(value, e)
                                    for e in schema["enum"]):
        return False
    if isinstance(value, dict) and not _validate_object(value, schema):
        return False
    if isinstance(value, list) and not _validate_array(value, schema):
        return False
    return True


def _num_eq(a: Any, b: Any) -> bool:
    numeric = (int, float)
    return isinstance(a, numeric) and isinstance(b, numeric) and not isinstance(a, bool) \
        and not isinstance(b, bool) and a == b


def _validate_object(value: dict, schema: Mapping) -> bool:
    properties = schema.get("properties", {})
    if any(name not in value for name in schema.get("required", ())):
        return False
    if schema.get("additionalProperties", True) is False and set(value) - set(properties):
        return False
    return all(validate(value[name], sub) for name, sub in properties.items() if name in value)


def _validate_array(value: list, schema: Mapping) -> bool:
    if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
        return False
    items = schema.get("items")
    return items is None or all(validate(v, items) for v in value)


class JsonSchema(TextReward):
    """1.0 iff the completion parses as JSON (`parse_json`) and the value satisfies `schema` (`validate`)."""

    def __init__(self, schema: Mapping):
        self.schema = schema

    def check(self, text: str) -> float:
        ok, value = parse_json(text)
        return float(ok and validate(value, self.schema))


TRAILING_PUNCT = ".!?,;:。！？"
HASH_RE = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)


def normalize_answer(text: str) -> str:
    """Casefold, collapse whitespace, strip surrounding quotes/whitespace and trailing punctuation ("42." → "42")."""
    text = " ".join(text.split()).casefold()
    return text.strip(string.whitespace + "\"'`").rstrip(TRAILING_PUNCT).strip()


def boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (balanced braces), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def final_answers(text: str) -> list[str]:
    """Candidate answers of a text: the whole text, the last `#### answer` line (GSM8K style) and the last
    `\\boxed{answer}` (MATH style), when present."""
    candidates = [text]
    hashes = HASH_RE.findall(text)
    if hashes:
        candidates.append(hashes[-1])
    inner = boxed(text)
    if inner is not None:
        candidates.append(inner)
    return candidates


class ExactMatch(Reward):
    """1.0 iff the completion equals a reference answer of its prompt.

    `answers` maps a prompt (a string, or the last user message of a message list, see `prompt_text`) to one
    answer or a list of acceptable answers; a single string applies to every prompt. With `normalize=True` both
    sides pass through `normalize_answer` (whitespace, case, trailing punctuation); with `final_answer=True`
    (default) the completion also matches when its `#### answer` line or last `\\boxed{answer}` matches, and a
    reference written as "... #### 42" counts as "42". A prompt without a reference raises KeyError.
    """

    def __init__(self, answers: str | Mapping[str, str | Sequence[str]], normalize: bool = True,
                 final_answer: bool = True):
        self.answers = answers
        self.normalize = normalize
        self.final_answer = final_answer

    def references(self, prompt: Content) -> list[str]:
        if isinstance(self.answers, str):
            gold = self.answers
        else:
            key = prompt if isinstance(prompt, str) and prompt in self.answers else prompt_text(prompt)
            if key not in self.answers:
                raise KeyError(f"no reference answer for prompt {key[:60]!r}")
            gold = self.answers[key]
        golds = [gold] if isinstance(gold, str) else list(gold)
        if self.final_answer:
            golds = [g for gold in golds for g in {gold, *final_answers(gold)[1:]}]
        return [self._norm(g) for g in golds]

    def _norm(self, text: str) -> str:
        return normalize_answer(text) if self.normalize else text

    def matches(self, prompt: Content, text: str) -> bool:
        candidates = final_answers(text) if self.final_answer else [text]
        golds = set(self.references(prompt))
        return any(self._norm(c) in golds for c in candidates)

    def score(self, prompts: Sequence[Content], completions: Sequence[Content]) -> torch.Tensor:
        check_lengths(prompts, completions)
        return torch.tensor([float(self.matches(p, text_of(c))) for p, c in zip(prompts, completions)])


class Refusal(TextReward):
    """1.0 iff the completion refuses or apologises (`alignkit.models.verifiers.refusal`: "I'm sorry",
    "I cannot", "I'm not able", "as an AI", curly apostrophes included). Use `WeightedSum([Refusal()], [-1])`
    or `1 - score` to reward compliance."""

    def check(self, text: str) -> float:
        return float(refusal(text))


class InstructionChecks(Reward):
    """1.0 iff the completion passes its own prompt's instruction check (`alignkit.models.verifiers.check`),
    e.g. the demo's held-out rows `{"prompt": ..., "check": {"type": "max_words", "n": 15}}`. Prompts are
    matched exactly (strings, or message lists by value); an unknown prompt raises a KeyError naming it."""

    def __init__(self, rows: Iterable[Mapping[str, Any]], field: str = "check"):
        self.checks = {content_key(row["prompt"]): row[field] for row in rows}

    def score(self, prompts: Sequence[Content], completions: Sequence[Content]) -> torch.Tensor:
        check_lengths(prompts, completions)
        values = []
        for prompt, completion in zip(prompts, completions):
            key = content_key(prompt)
            if key not in self.checks:
                raise KeyError(f"no instruction check for prompt {prompt_text(prompt)[:80]!r}")
            values.append(float(check(self.checks[key], text_of(completion))))
        return torch.tensor(values, dtype=torch.float32)


class HelpfulChecks(InstructionChecks):
    """1.0 iff the completion passes its prompt's check and is substantive (`models.verifiers.substantive`:
    on the row's `topic`, or the prompt's first sentence where the row names none, and not looping)."""

    def __init__(self, rows: Iterable[Mapping[str, Any]], field: str = "check"):
        rows = list(rows)
        super().__init__(rows, field)
        self.topics = {content_key(row["prompt"]): row.get("topic") or first_sentence(prompt_text(row["prompt"]))
                       for row in rows}

    def score(self, prompts: Sequence[Content], completions: Sequence[Content]) -> torch.Tensor:
        passed = super().score(prompts, completions)
        on_topic = [float(substantive(text_of(c), self.topics[content_key(p)])) for p, c in zip(prompts, completions)]
        return passed * torch.tensor(on_topic, dtype=torch.float32)


def first_sentence(text: str) -> str:
    """Text up to and including the first '.', '?' or '!' (all of it if none)."""
    match = re.search(r"[.?!]", text)
    return text[:match.end()] if match else text
