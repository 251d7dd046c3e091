"""Nudging (decoding.md §2): limits γ=0 / γ=1 against plain greedy decoding, cached vs uncached paths, the
LCP-cached incremental forward against a full recompute, and the takeover rule on a hand-made draft."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from tests.conftest import tiny_llama

from alignkit.decode.core import generated_length
from alignkit.decode.nudging import BASE_FORMAT, is_word_initial, nudging, takeover_index
from alignkit.decode.nudging_text import IncrementalLM, TextView, encode

PROMPT = "The quick brown fox"
# the base reads the bare prompt in most tests (its default is the official just-eval format, tested below)
nudge_raw = partial(nudging, base_format="{prompt}", guide_chat_template=False)  # both read the raw prompt
# Larger initial weights than the default 0.02 make the random models' next-token distributions peaked
# (top-1 probabilities spread over roughly 0.15–0.95), so that an intermediate γ lets both models write.
PEAKED = {"initializer_range": 1.0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: one thread, no contention


@pytest.fixture()
def models(smol_tokenizer):
    """(base, guide): two tiny random llamas with different seeds over the SmolLM2 vocabulary."""
    ids = dict(vocab_size=len(smol_tokenizer), eos_token_id=smol_tokenizer.eos_token_id,
               pad_token_id=smol_tokenizer.pad_token_id, **PEAKED)
    return tiny_llama(seed=0, **ids), tiny_llama(seed=1, **ids)


def greedy_ids(model, ids: list[int], max_new_tokens: int) -> list[int]:
    """Independent truth: the new token ids of `model.generate` greedy decoding."""
    inputs = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=model.config.pad_token_id)
    return out[0, inputs.shape[1]:].tolist()


def greedy(model, tokenizer, text: str, max_new_tokens: int) -> tuple[str, int]:
    """Greedy decoding of a raw text prompt: (stripped text, generated length up to EOS)."""
    new = torch.tensor(greedy_ids(model, encode(tokenizer, text), max_new_tokens))
    return tokenizer.decode(new, skip_special_tokens=True).strip(), generated_length(new, tokenizer)


@pytest.mark.parametrize("mode", ["token", "text"])
def test_gamma_zero_is_the_base_greedy_decoding(models, smol_tokenizer, mode):
    base, guide = models
    result = nudge_raw(base, smol_tokenizer, [PROMPT], guide=guide, gamma=0.0, max_new_tokens=24, mode=mode)[0]
    text, length = greedy(base, smol_tokenizer, PROMPT, 24)
    assert (result.text, result.tokens) == (text, length)
    assert result.diagnostics["nudged_fraction"] == 0.0
    assert result.diagnostics["nudging_rounds"] == 0.0


@pytest.mark.parametrize("lazy_draft", [True, False])
def test_gamma_one_is_the_guide_greedy_decoding_token_level(models, smol_tokenizer, lazy_draft):
    base, guide = models
    result = nudge_raw(base, smol_tokenizer, [PROMPT], guide=guide, gamma=1.0, max_new_tokens=40, draft_tokens=16,
                     mode="token", lazy_draft=lazy_draft)[0]
    text, length = greedy(guide, smol_tokenizer, PROMPT, 40)
    assert (result.text, result.tokens) == (text, length)
    assert result.diagnostics["nudged_fraction"] == 1.0
    assert result.diagnostics["nudging_rounds"] == 3.0  # drafts of 16 + 16 + 8 tokens


def test_gamma_one_is_the_guide_greedy_decoding_text_level(models, smol_tokenizer):
    """Text level counts the guide's text in base tokens (re-tokenized), so the answer is a prefix of the
    guide's longer greedy text, at least `max_new_tokens` base tokens long."""
    base, guide = models
    result = nudge_raw(base, smol_tokenizer, [PROMPT], guide=guide, gamma=1.0, max_new_tokens=40, mode="text")[0]
    text, _ = greedy(guide, smol_tokenizer, PROMPT, 80)
    assert result.text and text.startswith(result.text)
    assert result.tokens >= 40
    assert result.diagnostics["nudged_fraction"] == 1.0


@pytest.mark.parametrize("mode, lazy_draft", [("token", True), ("token", False), ("text", True)])
def test_cached_and_uncached_paths_agree_where_both_models_write(models, smol_tokenizer, mode, lazy_draft):
    base, guide = models
    prompts = [PROMPT, [{"role": "user", "content": "Name a colour."}]]
    settings = {"guide": guide, "gamma": 0.5, "max_new_tokens": 32, "draft_tokens": 8, "mode": mode,
                "lazy_draft": lazy_draft}
    cached = nudge_raw(base, smol_tokenizer, prompts, **settings)
    uncached = nudge_raw(base, smol_tokenizer, prompts, use_cache=False, **settings)
    for fast, slow in zip(cached, uncached):
        assert (fast.text, fast.tokens) == (slow.text, slow.tokens)
        for key in ("nudged_fraction", "nudging_rounds"):
            assert fast.diagnostics[key] == slow.diagnostics[key]
        assert 0.0 < fast.diagnostics["nudged_fraction"] < 1.0
        assert fast.diagnostics["forward_passes_per_token"] > 1.0


def test_lazy_and_verified_drafts_keep_the_same_tokens(models, smol_tokenizer):
    """Without EOS in a draft the two round forms keep identical tokens (the lazy one only skips computing
    draft tokens that would be thrown away)."""
    base, guide = models
    prompts = [PROMPT, [{"role": "user", "content": "Name a colour."}]]
    settings = {"guide": guide, "gamma": 0.5, "max_new_tokens": 32, "draft_tokens": 8, "mode": "token"}
    lazy = nudge_raw(base, smol_tokenizer, prompts, lazy_draft=True, **settings)
    verified = nudge_raw(base, smol_tokenizer, prompts, lazy_draft=False, **settings)
    for fast, full in zip(lazy, verified):
        assert (fast.text, fast.tokens) == (full.text, full.tokens)
        assert fast.diagnostics["nudged_fraction"] == full.diagnostics["nudged_fraction"]
        assert 0.0 < fast.diagnostics["nudged_fraction"] < 1.0


@pytest.mark.parametrize("lazy_draft", [True, False])
def test_guide_first_keeps_the_draft_up_to_its_second_word_at_gamma_zero(models, smol_tokenizer, lazy_draft):
    """Official order (the guide drafts first): at γ=0 the base takes over at the draft's second word."""
    base, guide = models
    result = nudge_raw(base, smol_tokenizer, [PROMPT], guide=guide, gamma=0.0, max_new_tokens=30, mode="token",
                     guide_first=True, lazy_draft=lazy_draft)[0]
    prompt = encode(smol_tokenizer, PROMPT)
    draft = greedy_ids(guide, prompt, 16)
    keep = next(j for j in range(1, 16) if is_word_initial(smol_tokenizer, draft[j]))
    rest = greedy_ids(base, prompt + draft[:keep], 30 - keep)
    assert result.text == smol_tokenizer.decode(draft[:keep] + rest, skip_special_tokens=True).strip()
    assert result.diagnostics["nudged_fraction"] == keep / 30
    assert result.diagnostics["nudging_rounds"] == 1.0


def test_takeover_is_at_the_first_confident_word_start_after_the_first_word():
    draft = [10, 11, 12, 13, 14]
    starts = [True, False, True, True, True]
    # the base's top-1 probability before draft[j] is probs[j - 1]
    assert takeover_index(draft, [0.9, 0.1, 0.5, 0.1, 0.1], 0.4, starts) == 3  # j=1 not a word start, j=2 < γ
    assert takeover_index(draft, [0.9, 0.1, 0.1, 0.1, 0.1], 0.4, starts) == 5  # no takeover: keep all
    assert takeover_index(draft, [0.9, 0.4, 0.1, 0.1, 0.1], 0.4, starts) == 2  # ≥ γ counts as confident


def test_word_initial_tokens_are_the_ones_with_a_leading_space(smol_tokenizer):
    space, plain = encode(smol_tokenizer, " fox")[0], encode(smol_tokenizer, "fox")[0]
    assert is_word_initial(smol_tokenizer, space) and not is_word_initial(smol_tokenizer, plain)


def full_logits(model, ids: list[int], positions: int) -> torch.Tensor:
    """Independent truth: logits of one uncached forward over the whole sequence (positional input)."""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -positions:].float()


@pytest.fixture()
def plain_model(smol_tokenizer):
    """A default-initialised tiny llama (logits of order 1e-2, so that atol=1e-5 is a meaningful bound)."""
    return tiny_llama(vocab_size=len(smol_tokenizer), seed=2)


def test_lcp_cached_forward_equals_full_recompute_on_ids(plain_model):
    lm, lengths = IncrementalLM(plain_model), []
    record = plain_model.register_forward_pre_hook(  # records IncrementalLM's calls (keyword input_ids) only
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]) if "input_ids" in kwargs else None,
        with_kwargs=True)
    steps = [[5, 6, 7, 8], [5, 6, 7, 8, 9, 10, 11], [5, 6, 7], [5, 6, 40, 41, 42]]  # extend, shrink, change
    try:
        for ids in steps:
            with torch.no_grad():
                cached = lm.logits_after(ids, positions=2)
            torch.testing.assert_close(cached, full_logits(plain_model, ids, 2), atol=1e-5, rtol=0)
            assert lm.cache.get_seq_length() == len(ids)
    finally:
        record.remove()
    assert lengths == [4, 3, 2, 3]  # only the tokens after the common prefix (at least `positions`) are run


def test_lcp_cached_forward_equals_full_recompute_on_text(plain_model, smol_tokenizer):
    view = TextView(IncrementalLM(plain_model), smol_tokenizer, "Question: name an animal.\nAnswer:")
    for text in [" The fox", " The fox jumps over the dog", " The fo", " A cat sleeps"]:
        view.sync(text)
        with torch.no_grad():
            cached = view.lm.logits_after(view.ids)
        expected = full_logits(plain_model, encode(smol_tokenizer, view.prompt + text), 1)
        torch.testing.assert_close(cached, expected, atol=1e-5, rtol=0)
        assert view.lm.cache.get_seq_length() == len(view.ids)


def test_only_batch_size_one_is_supported(models, smol_tokenizer):
    base, guide = models
    with pytest.raises(ValueError, match="batch_size"):
        nudge_raw(base, smol_tokenizer, [PROMPT], guide=guide, batch_size=2)


def test_default_base_prompt_is_the_official_instruction_format(models, smol_tokenizer):
    base, guide = models
    result = nudging(base, smol_tokenizer, [[{"role": "user", "content": "Name a colour."}]], guide=guide, gamma=0.0,
                     max_new_tokens=12)[0]
    assert BASE_FORMAT == "You are a helpful assistant.\nInstruction: {prompt}\n"
    assert result.text == greedy(base, smol_tokenizer, BASE_FORMAT.format(prompt="Name a colour."), 12)[0]
