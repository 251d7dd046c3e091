"""Nudging (Fei, Razeghi, Singh; arXiv 2410.09300; decoding.md §2): a small aligned *guide* model writes the
tokens where a large *base* model is unsure; the base writes everything else.

Rule (γ = `gamma`; "top-1 probability ≥ γ means the base is confident"): at each position the base's greedy
token v* = argmax_v π_base(v | x, y_<t) is written when p* = π_base(v* | x, y_<t) ≥ γ. When p* < γ the guide
drafts up to `draft_tokens` tokens greedily; the first word of the draft is always accepted, and the base takes
over at the first later word-initial draft token y_j whose base p*(x, y_<j) ≥ γ: the draft is cut before y_j
and the base writes its own greedy token there. Greedy decoding throughout (temperature 0, as in the official
code), so `seed` has no effect.

Two levels:
* token level (same vocabulary and ids): the caching notebook [code: fywalter/nudging@2ffbf1f
  nudging_with_caching.ipynb]: the whole draft is verified in ONE base forward, and both KV caches are
  cropped (`DynamicCache.crop`, via the longest common prefix) to the accepted tokens; tokens the base writes
  reach the guide's cache in one forward before its next draft.
* text level (different tokenizers): the word-level API algorithm of decoding.md §2.1 (`nudging_text.py`).

Deviations, stated: the official API and notebook start every answer with a guide draft; here the base
writes first when it is confident (`guide_first=True` restores the official order). The notebook hands over
when p* > γ, this module (like the API's `check_need_nudging`) when p* ≥ γ. The API's repetition heuristics
(`repetition_check`, three repeated nudging words, `remove_redundant_repetitions`) are not applied.
UNVERIFIED default: γ = 0.4 (README and notebook); the argparse default of run_api.py is 0.3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.decode.core import Completion, ForwardCounter, evaluating, prompt_text
from alignkit.decode.generate import Prompt
from alignkit.decode.nudging_text import (
    IncrementalLM,
    NudgingSettings,
    Outcome,
    TextView,
    encode,
    nudge_text,
    top1,
)

NudgingMode = Literal["auto", "token", "text"]


def is_word_initial(tokenizer: PreTrainedTokenizerBase, token: int) -> bool:
    """A token that starts a word: its piece carries the SentencePiece/BPE space marker (`▁`/`Ġ`, as the
    notebook checks) or its decoded text starts with whitespace."""
    piece = tokenizer.convert_ids_to_tokens(token)
    return piece[:1] in ("▁", "Ġ") or tokenizer.decode([token])[:1].isspace()


def takeover_index(draft: Sequence[int], base_top_probs: Sequence[float], gamma: float,
                   word_initial: Sequence[bool]) -> int:
    """How many draft tokens to keep: the first j ≥ 1 with draft[j] word-initial and the base's top-1
    probability before draft[j] (`base_top_probs[j - 1]`) ≥ γ; len(draft) when there is none (notebook step 2)."""
    for j in range(1, len(draft)):
        if word_initial[j] and base_top_probs[j - 1] >= gamma:
            return j
    return len(draft)


def guide_draft(guide: IncrementalLM, prefix: list[int], limit: int, eos: int | None) -> list[int]:
    """The guide's greedy continuation of `prefix`, at most `limit` tokens, ending early with EOS (kept)."""
    draft: list[int] = []
    for _ in range(limit):
        token, _ = top1(guide.logits_after(prefix + draft)[-1])
        draft.append(token)
        if token == eos:
            break
    return draft


def nudge_tokens(base: IncrementalLM, guide: IncrementalLM, base_prompt: list[int], guide_prompt: list[int],
                 tokenizer: PreTrainedTokenizerBase, settings: NudgingSettings) -> Outcome:
    """Token-level nudging with both KV caches kept in step (the caching notebook's loop, base first).

    A draft d_0..d_{k-1} is verified in one base forward over it: row m of that forward holds the base's
    distribution after d_m, so `takeover_index` reads the base's p* before every d_j (j ≥ 1) at once. The
    base's cache is then cropped to the kept tokens lazily, by the LCP in the next `logits_after` call; the
    guide's likewise before its next draft. A draft that ends with EOS is accepted whole and ends the answer.
    """
    eos = tokenizer.eos_token_id
    out: list[int] = []
    nudged = rounds = 0
    base_logits = base.logits_after(base_prompt)[-1]
    first = True
    while len(out) < settings.max_new_tokens:
        token, prob = top1(base_logits)
        if prob >= settings.gamma and not (first and settings.guide_first):
            first = False
            out.append(token)
            if token == eos:
                break
            base_logits = base.logits_after(base_prompt + out)[-1]
            continue
        first = False
        if rounds >= settings.max_rounds:
            break
        rounds += 1
        draft = guide_draft(guide, guide_prompt + out, min(settings.draft_tokens, settings.max_new_tokens - len(out)),
                            eos)
        if draft[-1] == eos:
            out, nudged = out + draft, nudged + len(draft)
            break
        rows = base.logits_after(base_prompt + out + draft, positions=len(draft))
        keep = takeover_index(draft, [top1(row)[1] for row in rows], settings.gamma,
                              [is_word_initial(tokenizer, t) for t in draft])
        out, nudged = out + draft[:keep], nudged + keep
        base_logits = rows[keep - 1]
    return Outcome(tokenizer.decode(out, skip_special_tokens=True).strip(), len(out), nudged, rounds)


def same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether two tokenizers map every token string to the same id (token-level nudging is possible)."""
    return a is b or a.get_vocab() == b.get_vocab()


def nudging(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *,
            guide: PreTrainedModel, guide_tokenizer: PreTrainedTokenizerBase | None = None, gamma: float = 0.4,
            draft_tokens: int = 16, max_new_tokens: int = 128, chat_template: bool = False,
            guide_chat_template: bool = True, seed: int | None = 0, batch_size: int = 1,
            mode: NudgingMode = "auto", use_cache: bool = True, max_rounds: int = 150,
            guide_first: bool = False) -> list[Completion]:
    """Nudge the base `model` with the small aligned `guide` (arXiv 2410.09300; decoding.md §2).

    Defaults: γ = 0.4 (README/notebook; argparse 0.3, UNVERIFIED which the paper used), `draft_tokens` = 16
    (`completion_token_num_nudging`), `max_rounds` = 150 (`max_round`), greedy decoding. The base reads the raw
    prompt (`chat_template=False`, the official base format), the guide its chat template. `mode="auto"` picks
    the token level when both tokenizers have the same vocabulary, else the text level; `use_cache=False`
    recomputes every forward over the whole sequence (reference path). Prompts are processed one after
    another: only `batch_size=1` is supported (`seed` is unused: decoding is greedy).

    Diagnostics: `nudged_fraction` (guide-written / all output tokens, in base tokens), `nudging_rounds`
    (guide drafts), `forward_passes` (rows through forward, both models) and `forward_passes_per_token`.
    """
    if batch_size != 1:
        raise ValueError(f"nudging processes one prompt at a time; batch_size must be 1, got {batch_size}")
    if not 0 <= gamma <= 1 or draft_tokens < 1 or max_new_tokens < 1:
        raise ValueError(f"need 0 <= gamma <= 1, draft_tokens >= 1, max_new_tokens >= 1; got {gamma}, "
                         f"{draft_tokens}, {max_new_tokens}")
    guide_tokenizer = guide_tokenizer or tokenizer
    shared = same_vocabulary(tokenizer, guide_tokenizer)
    if mode == "token" and not shared:
        raise ValueError("token-level nudging needs tokenizers with the same vocabulary and ids")
    token_level = mode == "token" or (mode == "auto" and shared)
    settings = NudgingSettings(gamma, draft_tokens, max_new_tokens, max_rounds, guide_first)
    completions = []
    with evaluating(model, guide):
        for prompt in prompts:
            base_text = prompt_text(tokenizer, prompt, chat_template)
            guide_text = prompt_text(guide_tokenizer, prompt, guide_chat_template)
            base_lm, guide_lm = IncrementalLM(model, use_cache), IncrementalLM(guide, use_cache)
            with ForwardCounter(model, guide) as counter:
                if token_level:
                    outcome = nudge_tokens(base_lm, guide_lm, encode(tokenizer, base_text),
                                           encode(guide_tokenizer, guide_text), tokenizer, settings)
                else:
                    outcome = nudge_text(TextView(base_lm, tokenizer, base_text),
                                         TextView(guide_lm, guide_tokenizer, guide_text),
                                         lambda text: len(encode(tokenizer, text)), settings)
            completions.append(completion_of(outcome, counter.rows))
    return completions


def completion_of(outcome: Outcome, forward_passes: int) -> Completion:
    """The `Completion` of a nudged answer with its diagnostics."""
    tokens = max(outcome.tokens, 1)
    return Completion(outcome.text, outcome.tokens, {
        "nudged_fraction": outcome.nudged_tokens / tokens,
        "nudging_rounds": float(outcome.rounds),
        "forward_passes": float(forward_passes),
        "forward_passes_per_token": forward_passes / tokens,
    })
