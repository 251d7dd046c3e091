"""Turn examples of any format into token ids, with an explicit policy for over-long examples.

Conversational examples use the tokenizer's chat template: the prompt is rendered with the generation
prompt (`alignkit.data.prompts.prompt_ids`), and each completion is the rendering of prompt + completion
minus the prompt's tokens (which must be a prefix of it). Standard text follows TRL 1.16's DPO trainer:
the prompt is tokenized with the tokenizer's special tokens (e.g. a BOS), each completion without them,
followed by the EOS token.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from alignkit.data.examples import PAIR_SLOTS, Example, Slots, slot_values
from alignkit.data.prompts import Content, prompt_ids
from alignkit.data.rows import RowProblem, collect

logger = logging.getLogger(__name__)

Ids = tuple[int, ...]
NO_LIMIT = 1 << 30  # "no length limit" in token counts


@dataclass(frozen=True)
class TruncationConfig:
    """Length limits (in tokens) for a prompt + completion sequence.

    An example is over-long when a prompt exceeds ``max_prompt_length`` or a prompt + its longest
    completion exceeds ``max_length``. ``"truncate_prompt"`` keeps the last tokens of the prompt, at most
    ``max_prompt_length`` and few enough for the example to fit ``max_length``. When even a one-token
    prompt leaves no room (a completion alone has ``max_length`` tokens or more), the prompt keeps its
    last ``max_prompt_length`` tokens and the completions are cut from the right to fill the rest.
    ``"drop"`` leaves over-long examples out.
    """

    max_length: int = 1024
    max_prompt_length: int = 512
    overlong: Literal["truncate_prompt", "drop"] = "truncate_prompt"

    @classmethod
    def at_most(cls, max_length: int | None) -> TruncationConfig:
        """No limit (None), or at most `max_length` tokens, over-long rows keeping the end of their prompt."""
        limit = max_length or NO_LIMIT
        return cls(max_length=limit, max_prompt_length=limit - 1, overlong="truncate_prompt")

    def __post_init__(self) -> None:
        if not 1 <= self.max_prompt_length < self.max_length:
            raise ValueError(f"need 1 <= max_prompt_length < max_length, got max_prompt_length="
                             f"{self.max_prompt_length}, max_length={self.max_length}")
        if self.overlong not in ("truncate_prompt", "drop"):
            raise ValueError(f"overlong must be 'truncate_prompt' or 'drop', got {self.overlong!r}")


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one example of any format: `groups` of (prompt ids, completion ids in slot order);
    ``index`` is the example's position in the list that was tokenized."""

    groups: tuple[tuple[Ids, tuple[Ids, ...]], ...]
    slots: Slots
    index: int
    where: str
    label: float | None = None
    scores: tuple[float, ...] = ()
    label_smoothing: float | None = None

    @classmethod
    def pair(cls, prompt_ids: Ids, chosen_ids: Ids, rejected_ids: Ids, index: int = 0,
             where: str = "row") -> TokenizedExample:
        """A tokenized preference pair."""
        return cls(((tuple(prompt_ids), (tuple(chosen_ids), tuple(rejected_ids))),), PAIR_SLOTS, index, where)

    @property
    def prompt_ids(self) -> Ids:
        """The prompt of the first (usually the only) group."""
        return self.groups[0][0]

    def slot(self, name: str) -> tuple[Ids, ...]:
        """The completion ids of slot `name`, e.g. `example.slot("chosen")`."""
        return slot_values(self.groups, self.slots, name)


@dataclass(frozen=True)
class TruncationReport:
    """How many of ``total`` examples had a prompt or a completion cut, or were dropped."""

    prompts_truncated: int
    completions_truncated: int
    dropped: int
    total: int

    @property
    def changed(self) -> bool:
        """True when any example was truncated or dropped."""
        return bool(self.prompts_truncated or self.completions_truncated or self.dropped)

    def summary(self) -> str:
        """One line, e.g. ``"of 100 examples: 3 prompts truncated, 1 with completions truncated, 0 dropped"``."""
        return (f"of {self.total} examples: {self.prompts_truncated} prompts truncated, "
                f"{self.completions_truncated} with completions truncated, {self.dropped} dropped "
                "(over the max_length / max_prompt_length limits)")


def tokenize_examples(
    examples: Sequence[Example], tokenizer: Any, truncation: TruncationConfig = TruncationConfig()
) -> tuple[list[TokenizedExample], TruncationReport]:
    """Tokenize every example, then apply the over-long policy (an example is fitted or dropped whole).

    Raises ValueError if the data is conversational and the tokenizer has no chat template, and one
    DataError listing every row whose prompt tokenizes to nothing or whose chat template rendering is
    not prefix-stable. Logs the report's summary once (warning) when anything was truncated or dropped.
    """
    if any(example.conversational for example in examples) and not tokenizer.chat_template:
        raise ValueError("the data is conversational (message lists) but the tokenizer has no chat template; "
                         "use a tokenizer with a chat template or provide plain-text prompts and completions")
    token_groups = collect(examples, lambda example: _tokenize_groups(example, tokenizer))
    tokenized = [TokenizedExample(groups, example.slots, index, example.where, example.label, example.scores,
                                  example.label_smoothing)
                 for index, (example, groups) in enumerate(zip(examples, token_groups))]
    kept, prompts_cut, completions_cut, dropped = [], 0, 0, 0
    for example in tokenized:
        fitted = [_fit_group(prompt, completions, truncation) for prompt, completions in example.groups]
        if any(group is None for group in fitted):
            dropped += 1
            continue
        prompts_cut += any(len(f[0]) < len(g[0]) for f, g in zip(fitted, example.groups))
        completions_cut += any(tuple(map(len, f[1])) != tuple(map(len, g[1])) for f, g in zip(fitted, example.groups))
        kept.append(replace(example, groups=tuple(fitted)))
    report = TruncationReport(prompts_cut, completions_cut, dropped, len(examples))
    if report.changed:
        logger.warning("over-long examples (%s): %s", truncation.overlong, report.summary())
    return kept, report


def completion_fields(slots: Slots) -> list[str]:
    """How each completion is named in messages: its slot (`chosen`), or `slot[i]` in a slot of several."""
    return [name if size == 1 else f"{name}[{i}]" for name, size in slots for i in range(1, size + 1)]


def _tokenize_groups(example: Example, tokenizer: Any) -> tuple[tuple[Ids, tuple[Ids, ...]], ...]:
    """Untruncated ids of one example's groups; the completions are named by their slots in errors."""
    fields = iter(completion_fields(example.slots))
    return tuple(_tokenize_group(prompt, completions, tokenizer, [next(fields) for _ in completions])
                 for prompt, completions in example.groups)


def _encode(tokenizer: Any, text: str, special_tokens: bool) -> list[int]:
    """Token ids of ``text``, with or without the tokenizer's special tokens (BOS etc.)."""
    return list(tokenizer(text, add_special_tokens=special_tokens)["input_ids"])


def _render(tokenizer: Any, messages: list) -> list[int]:
    """Token ids of a whole conversation rendered by the chat template (which supplies special tokens)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    return _encode(tokenizer, text, special_tokens=False)


def _tokenize_group(prompt: Content, completions: Sequence[Content], tokenizer: Any,
                    fields: Sequence[str]) -> tuple[Ids, tuple[Ids, ...]]:
    """Prompt ids and each completion's ids (untruncated); `fields` name the completions in errors."""
    prompt_tokens = prompt_ids(tokenizer, prompt)
    if isinstance(prompt, list):
        ids = []
        for field, completion in zip(fields, completions):
            full = _render(tokenizer, prompt + completion)
            if full[: len(prompt_tokens)] != prompt_tokens:
                raise RowProblem(field, "the chat template is not prefix-stable: the prompt rendered with the "
                                        "generation prompt is not a prefix of prompt + completion, so completion "
                                        "tokens cannot be separated")
            ids.append(full[len(prompt_tokens):])
    else:
        eos = tokenizer.eos_token_id
        if eos is None:
            raise RowProblem(None, "the tokenizer has no EOS token to end standard-text completions")
        ids = [_encode(tokenizer, completion, special_tokens=False) + [eos] for completion in completions]
    if not prompt_tokens:
        raise RowProblem("prompt", "the prompt is empty and the tokenizer adds no BOS token; every sequence "
                                   "needs at least one prompt token")
    return tuple(prompt_tokens), tuple(tuple(completion) for completion in ids)


def _fit_group(prompt_ids: Ids, completions: tuple[Ids, ...],
               config: TruncationConfig) -> tuple[Ids, tuple[Ids, ...]] | None:
    """A prompt and its completions within the limits (see TruncationConfig), or None if dropped."""
    prompt, longest = len(prompt_ids), max(len(completion) for completion in completions)
    if prompt <= config.max_prompt_length and prompt + longest <= config.max_length:
        return prompt_ids, completions
    if config.overlong == "drop":
        return None
    if config.max_length - longest >= 1:
        keep = min(prompt, config.max_prompt_length, config.max_length - longest)
        completion_room = longest
    else:
        keep = min(prompt, config.max_prompt_length)
        completion_room = config.max_length - keep
    return prompt_ids[prompt - keep:], tuple(completion[:completion_room] for completion in completions)


def template_fingerprint(tokenizer: Any) -> str:
    """Stable sha256 hex digest of what decides token ids: the tokenizer class name, the chat template,
    the special tokens with their ids, and the vocabulary size (including added tokens)."""
    special = {
        token: tokenizer.convert_tokens_to_ids(token) for token in sorted(set(tokenizer.all_special_tokens))
    }
    roles = {name: getattr(tokenizer, f"{name}_token", None) for name in ("bos", "eos", "pad", "unk")}
    described = {
        "class": type(tokenizer).__name__,
        "chat_template": tokenizer.chat_template,
        "special_tokens": special,
        "roles": roles,
        "vocab_size": len(tokenizer),
    }
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode("utf-8")).hexdigest()
