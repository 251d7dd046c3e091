"""Nudging building blocks: an LCP-cached incremental forward and the text-level (cross-tokenizer) loop.

* `IncrementalLM`: one causal LM over a token sequence that may grow, shrink or change between calls. It
  keeps a `DynamicCache` of the last sequence; for a new one it crops the cache to the longest common token
  prefix (LCP) and runs only the tokens after it, so a call costs one forward over the changed tail.
  With `use_cache=False` every call recomputes the whole sequence (the reference path).
* `TextView`: one model's view of `its own prompt text + the shared output text` as token ids. Tokens the
  model writes itself are appended as ids; when the shared output no longer equals what the view covers
  (the other model wrote, or a probe text), the model re-tokenizes its prompt + the output (as the official
  API code does: only text crosses between the models).
* `nudge_text`: the word-level Nudging algorithm (Fei et al., arXiv 2410.09300) [code: fywalter/nudging@2ffbf1f
  utils.py `completion_with_nudging`, `complete_with_base`], used when the two tokenizers differ.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from alignkit.data.rows import common_prefix_length
from alignkit.lazy import lazy

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

torch = lazy("torch")


@dataclass(frozen=True)
class NudgingSettings:
    """γ, the guide's draft length, the output budget (base tokens), the round cap, and who writes first."""

    gamma: float
    draft_tokens: int
    max_new_tokens: int
    max_rounds: int
    guide_first: bool


class Outcome(NamedTuple):
    """A finished nudged completion: text, length and guide share (both in base tokens), nudging rounds."""

    text: str
    tokens: int
    nudged_tokens: int
    rounds: int


def top1(logits: torch.Tensor) -> tuple[int, float]:
    """The greedy token of a [V] logit vector and its probability max_v softmax(logits)_v."""
    probs = logits.float().softmax(-1)
    prob, token = probs.max(-1)
    return int(token), float(prob)


class IncrementalLM:
    """A causal LM with an LCP-reusing KV cache over token ids."""

    def __init__(self, model: PreTrainedModel, use_cache: bool = True):
        self.model = model
        self.use_cache = use_cache
        self.ids: list[int] = []
        self.cache: DynamicCache | None = None
        self.last_logits: torch.Tensor | None = None

    def logits_after(self, ids: Sequence[int], positions: int = 1) -> torch.Tensor:
        """[positions, V] float32 logits at the last `positions` input positions of `ids`; row i predicts the
        token after ids[len(ids) - positions + i]. Cached: crop to the LCP with the last sequence, run the rest."""
        ids = list(ids)
        if not 1 <= positions <= len(ids):
            raise ValueError(f"need 1 <= positions <= {len(ids)} tokens, got {positions}")
        if self.use_cache and positions == 1 and ids == self.ids and self.last_logits is not None:
            return self.last_logits[None]
        start = 0
        if self.use_cache and self.cache is not None:
            start = min(common_prefix_length(self.ids, ids), len(ids) - positions)
        if start == 0:
            from transformers import DynamicCache

            self.cache = DynamicCache() if self.use_cache else None
        else:
            self.cache.crop(start - self.cache.get_seq_length())  # negative count = tokens to drop (5.x API)
        inputs = torch.tensor([ids[start:]], device=self.model.device)
        output = self.model(input_ids=inputs, cache=self.cache, use_cache=self.use_cache, logits_to_keep=positions)
        logits = output.logits[0, -positions:].float()
        self.ids, self.last_logits = ids, logits[-1]
        return logits


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """Token ids of a text without added special tokens (special-token strings in the text are parsed)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class TextView:
    """One model's token view of `prompt + output text`, kept as its own ids while it writes itself."""

    def __init__(self, lm: IncrementalLM, tokenizer: PreTrainedTokenizerBase, prompt: str):
        self.lm, self.tokenizer, self.prompt = lm, tokenizer, prompt
        self.eos = tokenizer.eos_token_id
        self.text = ""
        self.ids = encode(tokenizer, prompt)
        if not self.ids:
            raise ValueError("the prompt encodes to no tokens")

    def sync(self, text: str) -> None:
        """Cover `prompt + text`: unchanged if the view already covers `text`, else re-tokenized from text."""
        if text != self.text:
            self.ids, self.text = encode(self.tokenizer, self.prompt + text), text

    def next_token(self, text: str) -> tuple[int, float]:
        """The model's greedy next token after `prompt + text` and its top-1 probability."""
        self.sync(text)
        return top1(self.lm.logits_after(self.ids)[-1])

    def piece(self, token: int) -> str:
        """Text that appending `token` adds (difference of decodes, safe for SentencePiece and byte BPE)."""
        before = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        return self.tokenizer.decode(self.ids + [token], skip_special_tokens=True)[len(before):]

    def append(self, token: int) -> str:
        """Write one own token: extend the ids and the covered text; returns the token's text."""
        piece = self.piece(token)
        self.ids, self.text = self.ids + [token], self.text + piece
        return piece

    def draft(self, text: str, limit: int) -> tuple[str, bool]:
        """Greedy continuation of `prompt + text`, at most `limit` tokens; (draft text, stopped at EOS)."""
        self.sync(text)
        start = len(text)
        for _ in range(limit):
            token, _ = top1(self.lm.logits_after(self.ids)[-1])
            if token == self.eos:
                return self.text[start:], True
            self.append(token)
        return self.text[start:], False


def accepted_draft_words(base: TextView, out: str, draft: str, gamma: float) -> tuple[str, bool]:
    """The part of the guide's draft kept, and whether the base takes over after it.

    The draft is split into words on " " (leading spaces kept); the first word is always accepted. For
    j = 1.., the base is probed on `out + words[:j]`; it takes over at the first j where its greedy piece is a
    non-empty prefix of " " + words[j] or its top-1 probability is ≥ γ [code: utils.py, stage 1]. Empty words
    (runs of spaces) are skipped, as in the official code. Without a takeover the whole draft is kept.
    """
    space = draft[:len(draft) - len(draft.lstrip(" "))]
    words = draft.lstrip(" ").split(" ")
    for j in range(1, len(words)):
        if not words[j]:
            continue
        kept = space + " ".join(words[:j])
        token, prob = base.next_token(out + kept)
        piece = base.piece(token)
        if prob >= gamma or (piece and (" " + words[j]).startswith(piece)):
            return kept, True
    return draft, False


def nudge_text(base: TextView, guide: TextView, count_base_tokens: Callable[[str], int],
               settings: NudgingSettings) -> Outcome:
    """Text-level nudging (arXiv 2410.09300): the models exchange text and each re-tokenizes it.

    The base writes greedily while its top-1 probability is ≥ γ (the first base token after a takeover is
    accepted unconditionally, `complete_with_base`); otherwise the guide drafts up to `draft_tokens` tokens,
    and `accepted_draft_words` decides how much of it is kept. Stops at either model's EOS, after
    `max_new_tokens` base tokens (guide text counted by base-tokenizing each kept piece) or `max_rounds`.
    """
    out, written, nudged, rounds = "", 0, 0, 0
    forced, first = False, True
    while written < settings.max_new_tokens:
        token, prob = base.next_token(out)
        if forced or (prob >= settings.gamma and not (first and settings.guide_first)):
            forced = first = False
            out += base.append(token)
            written += 1
            if token == base.eos:
                break
            continue
        first = False
        if rounds >= settings.max_rounds:
            break
        rounds += 1
        draft, finished = guide.draft(out, min(settings.draft_tokens, settings.max_new_tokens - written))
        kept, forced = (draft, False) if finished else accepted_draft_words(base, out, draft, settings.gamma)
        out += kept
        pieces = count_base_tokens(kept)
        written, nudged = written + pieces, nudged + pieces
        if finished:
            break
    return Outcome(out.strip(), written, nudged, rounds)
