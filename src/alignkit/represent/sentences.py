"""A small sentence corpus gathered from the prompts and answers alignkit ships, for the projection demo.

Every string value of every record in `SOURCES` (except the fields in `SKIPPED_FIELDS`: roles, check types,
answer lists) is split into sentences at `.`, `!` or `?` followed by white space, white space is collapsed,
sentences of fewer than `MIN_WORDS` words are dropped, and the rest are de-duplicated and sorted, so the
corpus depends only on the shipped files. `split_sentences` shuffles it with a seeded generator and cuts off
a held-out set. Nothing is downloaded.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from importlib.resources import files
from typing import NamedTuple

SOURCES = (
    "data/demo/train.jsonl", "data/demo/heldout.jsonl",
    "data/honesty/train.jsonl", "data/honesty/heldout.jsonl", "data/long_output/prompts.jsonl",
    "data/compliance/requests.jsonl", "loops/isheep_seeds/cooking.jsonl", "loops/isheep_seeds/general.jsonl",
)
SKIPPED_FIELDS = frozenset({"role", "type", "kind", "word", "answers", "check"})
MIN_WORDS = 3
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class SentenceSplit(NamedTuple):
    train: list[str]
    heldout: list[str]


def strings_of(value: object) -> Iterator[str]:
    """Every string inside a JSON value, depth first, skipping the values of `SKIPPED_FIELDS`."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from strings_of(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            if key not in SKIPPED_FIELDS:
                yield from strings_of(item)


def texts_of(source: str) -> Iterator[str]:
    """The texts of one shipped file: string fields of a `.jsonl`, non-comment lines of a `.txt`."""
    content = (files("alignkit") / source).read_text(encoding="utf-8")
    for line in content.splitlines():
        line = line.strip()
        if not line or (source.endswith(".txt") and line.startswith("#")):
            continue
        yield from (strings_of(json.loads(line)) if source.endswith(".jsonl") else [line])


def sentences_of(text: str) -> list[str]:
    """`text` cut into sentences of at least `MIN_WORDS` words, white space collapsed."""
    pieces = (" ".join(piece.split()) for piece in SENTENCE_END.split(text.strip()))
    return [piece for piece in pieces if len(piece.split()) >= MIN_WORDS]


def shipped_sentences(sources: tuple[str, ...] = SOURCES) -> list[str]:
    """The unique sentences of the shipped files, sorted (deterministic)."""
    return sorted({sentence for source in sources for text in texts_of(source) for sentence in sentences_of(text)})


def split_sentences(sentences: list[str], heldout: int, seed: int = 0) -> SentenceSplit:
    """Shuffle `sentences` with `random.Random(seed)` and hold out the first `heldout` of them."""
    if not 0 < heldout < len(sentences):
        raise ValueError(f"heldout must be between 1 and {len(sentences) - 1} (there are {len(sentences)} "
                         f"sentences), got {heldout}")
    order = list(sentences)
    random.Random(seed).shuffle(order)
    return SentenceSplit(train=order[heldout:], heldout=order[:heldout])
