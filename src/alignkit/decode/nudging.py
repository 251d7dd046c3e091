"""Nudging (Fei, Razeghi, Singh; arXiv 2410.09300; official code fywalter/nudging): a small aligned *guide*
model writes the tokens where a large *base* model is unsure; the base writes everything else.

Rule (γ = `gamma`; "top-1 probability ≥ γ means the base is confident"): at each position the base's greedy
token v* = argmax_v π_base(v | x, y_<t) is written when p* = π_base(v* | x, y_<t) ≥ γ. When p* < γ the guide
drafts up to `draft_tokens` tokens greedily; the first word of the draft is always accepted, and the base takes
over at the first later word-initial draft token y_j whose base p*(x, y_<j) ≥ γ: the draft is cut before y_j
and the base writes its own greedy token there. Greedy decoding throughout (temperature 0, as in the official
code), so `seed` has no effect.

Two levels:
* token level (same vocabulary and ids), both KV caches kept in step (`DynamicCache.crop` via the longest
  common prefix); tokens the base writes reach the guide's cache in one forward before its next draft. By
  default the guide drafts lazily, one token at a time, and stops where the base takes over, so no draft
  token is computed and thrown away (one guide forward per kept token plus one per round). With
  `lazy_draft=False` it follows the caching notebook [code: fywalter/nudging@2ffbf1f
  nudging_with_caching.ipynb]: a full `draft_tokens` draft, verified in ONE base forward, then cut. The two
  keep the same tokens except when the full draft ends with EOS after the takeover point (the notebook
  accepts such a draft whole; the lazy draft is cut at the takeover point).
* text level (different tokenizers): the official API's word-level algorithm [code: utils.py, run_api.py]
  (`nudging_text.py`).

Deviations, stated: the official API and notebook start every answer with a guide draft; here the base
writes first when it is confident (`guide_first=True` restores the official order). The notebook hands over
when p* > γ, this module (like the API's `check_need_nudging`) when p* ≥ γ. The API's repetition heuristics
(`repetition_check`, three repeated nudging words, `remove_redundant_repetitions`) are not applied.
UNVERIFIED default: γ = 0.4 (README and notebook); the argparse default of run_api.py is 0.3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from alignkit.data.prompts import ChatTemplate, Prompt, render_prompt, render_prompts, resolve_chat_template
from alignkit.decode.core import Completion, ForwardCounter
from alignkit.models.modes import evaluating
from alignkit.decode.methods import Method, register_method
from alignkit.decode.nudging_text import (
    IncrementalLM,
    NudgingSettings,
    Outcome,
    TextView,
    encode,
    nudge_text,
    top1,
)

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

NudgingMode = Literal["auto", "token", "text"]

# The base model's prompt in the official code for instruction data (just-eval): f"{system}\n{instruction}\n
# {answer_start}" with system "You are a helpful assistant.", instruction "Instruction: " + the query, and an
# empty answer start [code: fywalter/nudging@9019a09 dataset_utils.py PROMPTS["justeval"], utils.py
# apply_instruct_template for base models].
BASE_FORMAT = "You are a helpful assistant.\nInstruction: {prompt}\n"


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


def guide_writes(base: IncrementalLM, guide: IncrementalLM, base_prefix: list[int], guide_prefix: list[int],
                 base_logits: torch.Tensor, tokenizer: PreTrainedTokenizerBase, limit: int,
                 gamma: float) -> tuple[list[int], torch.Tensor]:
    """One nudging round, drafted lazily: the guide writes greedily one token at a time (its first forward also
    catches its cache up with the tokens the base wrote) and the base reads each drafted token, until the next
    draft token d_j (j ≥ 1) is word-initial while the base is confident before it (p* ≥ γ), or `limit` tokens,
    or EOS. Returns the kept tokens and the base's logits after them (computed on the way: no extra forward).

    The kept tokens equal those of drafting `limit` tokens and cutting at `takeover_index`, except that a draft
    whose EOS comes after the takeover point is cut there instead of being accepted whole.
    """
    eos = tokenizer.eos_token_id
    written: list[int] = []
    while len(written) < limit:
        token, _ = top1(guide.logits_after(guide_prefix + written)[-1])
        if written and is_word_initial(tokenizer, token) and top1(base_logits)[1] >= gamma:
            break
        written.append(token)
        if token == eos:
            break
        base_logits = base.logits_after(base_prefix + written)[-1]
    return written, base_logits


def guide_writes_verified(base: IncrementalLM, guide: IncrementalLM, base_prefix: list[int],
                          guide_prefix: list[int], tokenizer: PreTrainedTokenizerBase, limit: int,
                          gamma: float) -> tuple[list[int], torch.Tensor | None]:
    """One nudging round as the caching notebook does it: the guide drafts `limit` tokens, the base verifies the
    whole draft in ONE forward (row m holds its distribution after d_m), and the draft is cut at
    `takeover_index`. A draft that ends with EOS is accepted whole (base logits None: the answer ends)."""
    eos = tokenizer.eos_token_id
    draft = guide_draft(guide, guide_prefix, limit, eos)
    if draft[-1] == eos:
        return draft, None
    rows = base.logits_after(base_prefix + draft, positions=len(draft))
    keep = takeover_index(draft, [top1(row)[1] for row in rows], gamma, [is_word_initial(tokenizer, t) for t in draft])
    return draft[:keep], rows[keep - 1]


def nudge_tokens(base: IncrementalLM, guide: IncrementalLM, base_prompt: list[int], guide_prompt: list[int],
                 tokenizer: PreTrainedTokenizerBase, settings: NudgingSettings, lazy_draft: bool = True) -> Outcome:
    """Token-level nudging with both KV caches kept in step (base first; `IncrementalLM` crops each cache to the
    longest common prefix with the kept tokens). The base writes while p* ≥ γ; otherwise one round of
    `guide_writes` (lazy, default) or `guide_writes_verified` (the notebook's draft-then-verify) runs.
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
        limit = min(settings.draft_tokens, settings.max_new_tokens - len(out))
        if lazy_draft:
            written, base_logits = guide_writes(base, guide, base_prompt + out, guide_prompt + out, base_logits,
                                                tokenizer, limit, settings.gamma)
        else:
            written, base_logits = guide_writes_verified(base, guide, base_prompt + out, guide_prompt + out,
                                                         tokenizer, limit, settings.gamma)
        out, nudged = out + written, nudged + len(written)
        if written[-1] == eos:
            break
    return Outcome(tokenizer.decode(out, skip_special_tokens=True).strip(), len(out), nudged, rounds)


def same_vocabulary(a: PreTrainedTokenizerBase, b: PreTrainedTokenizerBase) -> bool:
    """Whether two tokenizers map every token string to the same id (token-level nudging is possible)."""
    return a is b or a.get_vocab() == b.get_vocab()


def nudging_prompts(tokenizer: PreTrainedTokenizerBase, guide_tokenizer: PreTrainedTokenizerBase,
                    prompts: Sequence[Prompt], chat_template: ChatTemplate, guide_chat_template: ChatTemplate,
                    base_format: str) -> list[tuple[str, str]]:
    """(base text, guide text) per prompt. The base reads `base_format` around the raw query text
    (`render_prompt(..., False)`: a string as is, a message list's last user message) unless `chat_template` is
    True or names a template; the guide renders the prompt with `guide_chat_template` (by default its chat
    template, a string prompt as one user message)."""
    base_template = resolve_chat_template(chat_template)
    if base_template is False:
        base_texts = [base_format.format(prompt=render_prompt(tokenizer, prompt, False)) for prompt in prompts]
    else:
        base_texts = render_prompts(tokenizer, prompts, base_template)
    return list(zip(base_texts, render_prompts(guide_tokenizer, prompts, guide_chat_template)))


def nudging(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *,
            guide: PreTrainedModel, guide_tokenizer: PreTrainedTokenizerBase | None = None, gamma: float = 0.4,
            draft_tokens: int = 16, max_new_tokens: int = 128, chat_template: ChatTemplate = False,
            guide_chat_template: ChatTemplate = True, seed: int | None = 0, batch_size: int = 1,
            mode: NudgingMode = "auto", use_cache: bool = True, max_rounds: int = 150,
            guide_first: bool = False, lazy_draft: bool = True, base_format: str = BASE_FORMAT) -> list[Completion]:
    """Nudge the base `model` with the small aligned `guide` (arXiv 2410.09300).

    Defaults: γ = 0.4 (README/notebook; argparse 0.3, UNVERIFIED which the paper used), `draft_tokens` = 16
    (`completion_token_num_nudging`), `max_rounds` = 150 (`max_round`), greedy decoding. The base reads the raw
    prompt in `base_format` (`{prompt}` is the query text; default the official just-eval format
    `BASE_FORMAT`) unless `chat_template=True` (or a template name or file, as in `render_prompt`); the guide
    reads its chat template, a string prompt as one user message (`guide_chat_template`: False feeds the guide
    the raw prompt, or name a template; see `nudging_prompts`). `mode="auto"` picks
    the token level when both tokenizers have the same vocabulary, else the text level; `use_cache=False`
    recomputes every forward over the whole sequence (reference path); `lazy_draft` (token level) drafts one
    token at a time instead of the notebook's full draft (see the module docstring). Prompts are processed one after
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
        for base_text, guide_text in nudging_prompts(tokenizer, guide_tokenizer, prompts, chat_template,
                                                     guide_chat_template, base_format):
            base_lm, guide_lm = IncrementalLM(model, use_cache), IncrementalLM(guide, use_cache)
            with ForwardCounter(model, guide) as counter:
                if token_level:
                    outcome = nudge_tokens(base_lm, guide_lm, encode(tokenizer, base_text),
                                           encode(guide_tokenizer, guide_text), tokenizer, settings, lazy_draft)
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


register_method(Method(
    name="nudging", function=nudging, mechanism="model collaboration", needs=("guide",),
    source="Nudging, Fei et al. arXiv 2410.09300; fywalter/nudging",
    description="the base writes while its top-1 probability >= gamma, else a small aligned guide writes a word"))
