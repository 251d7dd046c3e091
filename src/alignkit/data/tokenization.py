"""Turn preference examples into token ids, with an explicit policy for over-long pairs.

Conversational examples use the tokenizer's chat template: the prompt is rendered with the
generation prompt, and each completion is the rendering of prompt + completion minus the prompt's
tokens (which must be a prefix of it). Standard text follows TRL 1.16's DPO trainer: the prompt is
tokenized with the tokenizer's special tokens (e.g. a BOS), each completion without them, followed
by the EOS token.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from alignkit.data.errors import raise_if_any
from alignkit.data.examples import Example
from alignkit.data.preferences import PreferenceExample

logger = logging.getLogger(__name__)

Ids = tuple[int, ...]


@dataclass(frozen=True)
class TruncationConfig:
    """Length limits (in tokens) for a prompt + completion sequence.

    A pair is over-long when its prompt exceeds ``max_prompt_length`` or prompt + longer completion
    exceeds ``max_length``. ``"truncate_prompt"`` keeps the last tokens of the prompt, at most
    ``max_prompt_length`` and few enough for the pair to fit ``max_length``. When even a one-token
    prompt leaves no room (a completion alone has ``max_length`` tokens or more), the prompt keeps its
    last ``max_prompt_length`` tokens and the completions are cut from the right to fill the rest.
    ``"drop"`` leaves over-long pairs out.
    """

    max_length: int = 1024
    max_prompt_length: int = 512
    overlong: Literal["truncate_prompt", "drop"] = "truncate_prompt"

    def __post_init__(self) -> None:
        if not 1 <= self.max_prompt_length < self.max_length:
            raise ValueError(f"need 1 <= max_prompt_length < max_length, got max_prompt_length="
                             f"{self.max_prompt_length}, max_length={self.max_length}")
        if self.overlong not in ("truncate_prompt", "drop"):
            raise ValueError(f"overlong must be 'truncate_prompt' or 'drop', got {self.overlong!r}")


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one pair; ``index`` is the example's position in the input list."""

    prompt_ids: Ids
    chosen_ids: Ids
    rejected_ids: Ids
    index: int
    where: str

    @property
    def completions(self) -> tuple[Ids, Ids]:
        return self.chosen_ids, self.rejected_ids

    @property
    def groups(self) -> tuple[tuple[Ids, tuple[Ids, ...]], ...]:
        return ((self.prompt_ids, (self.chosen_ids, self.rejected_ids)),)

    slots: tuple[tuple[str, int], ...] = (("chosen", 1), ("rejected", 1))
    label: float | None = None
    scores: tuple[float, ...] = ()


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one example of any format: `groups` of (prompt ids, completion ids in slot order)."""

    groups: tuple[tuple[Ids, tuple[Ids, ...]], ...]
    slots: tuple[tuple[str, int], ...]
    index: int
    where: str
    label: float | None = None
    scores: tuple[float, ...] = ()


@dataclass(frozen=True)
class TruncationReport:
    """How many of ``total`` pairs had their prompt or a completion cut, or were dropped."""

    prompts_truncated: int
    completions_truncated: int
    dropped: int
    total: int

    @property
    def changed(self) -> bool:
        """True when any pair was truncated or dropped."""
        return bool(self.prompts_truncated or self.completions_truncated or self.dropped)

    def summary(self) -> str:
        """One line, e.g. ``"of 100 pairs: 3 prompts truncated, 1 with completions truncated, 0 dropped"``."""
        return (f"of {self.total} pairs: {self.prompts_truncated} prompts truncated, "
                f"{self.completions_truncated} with completions truncated, {self.dropped} dropped "
                "(over the max_length / max_prompt_length limits)")


def tokenize_preferences(
    examples: Sequence[PreferenceExample], tokenizer: Any, truncation: TruncationConfig = TruncationConfig()
) -> tuple[list[TokenizedPair], TruncationReport]:
    """Tokenize every example, then apply the over-long policy.

    Raises ValueError if the data is conversational and the tokenizer has no chat template, and one
    DataError listing every row whose prompt tokenizes to nothing or whose chat template rendering is
    not prefix-stable. Logs the report's summary once (warning) when anything was truncated or dropped.
    """
    if any(example.conversational for example in examples) and not tokenizer.chat_template:
        raise ValueError("the data is conversational (message lists) but the tokenizer has no chat template; "
                         "use a tokenizer with a chat template or provide plain-text prompt/chosen/rejected")
    tokenized, problems = [], []
    for index, example in enumerate(examples):
        try:
            tokenized.append(_tokenize_example(example, index, tokenizer))
        except _TokenizeProblem as problem:
            problems.append(f"{example.where}, {problem}")
    raise_if_any(problems)
    pairs, prompts_cut, completions_cut, dropped = [], 0, 0, 0
    for pair in tokenized:
        fitted = _fit(pair, truncation)
        if fitted is None:
            dropped += 1
            continue
        prompts_cut += len(fitted.prompt_ids) < len(pair.prompt_ids)
        completions_cut += (len(fitted.chosen_ids), len(fitted.rejected_ids)) != (
            len(pair.chosen_ids), len(pair.rejected_ids))
        pairs.append(fitted)
    report = TruncationReport(prompts_cut, completions_cut, dropped, len(examples))
    if report.changed:
        logger.warning("over-long preference pairs (%s): %s", truncation.overlong, report.summary())
    return pairs, report


def tokenize_examples(
    examples: Sequence[Example], tokenizer: Any, truncation: TruncationConfig = TruncationConfig()
) -> tuple[list[TokenizedExample], TruncationReport]:
    """`tokenize_preferences` for rows of any format (`alignkit.data.examples`): each group's prompt and
    completions are tokenized and fitted to the limits as a pair would be; an example is dropped whole."""
    if any(example.conversational for example in examples) and not tokenizer.chat_template:
        raise ValueError("the data is conversational (message lists) but the tokenizer has no chat template")
    tokenized, problems = [], []
    for index, example in enumerate(examples):
        try:
            groups = tuple(_tokenize_group(prompt, completions, tokenizer) for prompt, completions in example.groups)
        except _TokenizeProblem as problem:
            problems.append(f"{example.where}, {problem}")
            continue
        tokenized.append(TokenizedExample(groups, example.slots, index, example.where, example.label, example.scores))
    raise_if_any(problems)
    kept, prompts_cut, completions_cut, dropped = [], 0, 0, 0
    for example in tokenized:
        fitted = [_fit_group(prompt, completions, truncation) for prompt, completions in example.groups]
        if any(group is None for group in fitted):
            dropped += 1
            continue
        prompts_cut += any(len(f[0]) < len(g[0]) for f, g in zip(fitted, example.groups))
        completions_cut += any(tuple(map(len, f[1])) != tuple(map(len, g[1])) for f, g in zip(fitted, example.groups))
        kept.append(TokenizedExample(tuple(fitted), example.slots, example.index, example.where, example.label,
                                     example.scores))
    report = TruncationReport(prompts_cut, completions_cut, dropped, len(examples))
    if report.changed:
        logger.warning("over-long examples (%s): %s", truncation.overlong, report.summary())
    return kept, report


class _TokenizeProblem(Exception):
    """Why one example cannot be tokenized (internal; collected into a DataError)."""


def _encode(tokenizer: Any, text: str, special_tokens: bool) -> list[int]:
    """Token ids of ``text``, with or without the tokenizer's special tokens (BOS etc.)."""
    return list(tokenizer(text, add_special_tokens=special_tokens)["input_ids"])


def _render(tokenizer: Any, messages: list, generation_prompt: bool) -> list[int]:
    """Token ids of ``messages`` rendered by the chat template (the template supplies special tokens)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return _encode(tokenizer, text, special_tokens=False)


def _tokenize_example(example: PreferenceExample, index: int, tokenizer: Any) -> TokenizedPair:
    """Prompt and completion ids of one example (untruncated)."""
    prompt_ids, (chosen, rejected) = _tokenize_group(example.prompt, (example.chosen, example.rejected), tokenizer,
                                                     fields=("chosen", "rejected"))
    return TokenizedPair(prompt_ids, chosen, rejected, index, example.where)


def _tokenize_group(prompt: Any, completions: Sequence[Any], tokenizer: Any,
                    fields: Sequence[str] | None = None) -> tuple[Ids, tuple[Ids, ...]]:
    """Prompt ids and each completion's ids (untruncated); `fields` name the completions in errors."""
    fields = fields or [f"completion {number}" for number in range(1, len(completions) + 1)]
    if isinstance(prompt, list):
        prompt_ids = _render(tokenizer, prompt, generation_prompt=True)
        ids = []
        for field, completion in zip(fields, completions):
            full = _render(tokenizer, prompt + completion, generation_prompt=False)
            if full[: len(prompt_ids)] != prompt_ids:
                raise _TokenizeProblem(
                    f"field '{field}': the chat template is not prefix-stable: the prompt rendered with the "
                    "generation prompt is not a prefix of prompt + completion, so completion tokens cannot be "
                    "separated")
            ids.append(full[len(prompt_ids):])
    else:
        prompt_ids = _encode(tokenizer, prompt, special_tokens=True)
        eos = tokenizer.eos_token_id
        if eos is None:
            raise _TokenizeProblem("the tokenizer has no EOS token to end standard-text completions")
        ids = [_encode(tokenizer, completion, special_tokens=False) + [eos] for completion in completions]
    if not prompt_ids:
        raise _TokenizeProblem("field 'prompt': the prompt is empty and the tokenizer adds no BOS token; "
                               "every sequence needs at least one prompt token")
    return tuple(prompt_ids), tuple(tuple(completion) for completion in ids)


def _fit(pair: TokenizedPair, config: TruncationConfig) -> TokenizedPair | None:
    """The pair within the limits (see TruncationConfig), or None if it is over-long and dropped."""
    fitted = _fit_group(pair.prompt_ids, (pair.chosen_ids, pair.rejected_ids), config)
    if fitted is None:
        return None
    prompt, (chosen, rejected) = fitted
    return TokenizedPair(prompt_ids=prompt, chosen_ids=chosen, rejected_ids=rejected, index=pair.index,
                         where=pair.where)


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
