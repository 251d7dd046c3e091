"""Per-token guidance (`GuidedLogits`, `combine_logprobs`) and the GenARM preset, on tiny random llamas."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessorList

from alignkit.data.prompts import render_prompts
from alignkit.decode.core import decode_new, encode_left_padded
from alignkit.decode.guidance import GuidedLogits, combine_logprobs, genarm
from tests.conftest import tiny_llama

# Strictly increasing token lengths, so genarm's length sort keeps this order within one batch.
PROMPTS = ["Hi", "The sky is blue and", "Once upon a time, in a land far away, there lived"]
SAMPLING = {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0}


@pytest.fixture()
def base(smol_tokenizer):
    return tiny_llama(vocab_size=len(smol_tokenizer), pad_token_id=smol_tokenizer.pad_token_id,
                      eos_token_id=smol_tokenizer.eos_token_id)


@pytest.fixture()
def other_arm(smol_tokenizer):
    return tiny_llama(vocab_size=len(smol_tokenizer), seed=1, pad_token_id=smol_tokenizer.pad_token_id,
                      eos_token_id=smol_tokenizer.eos_token_id)


def tiny_gpt2(tokenizer) -> GPT2LMHeadModel:
    """A 2-layer random GPT-2: absolute position embeddings, so wrong guide position ids change its output
    (RoPE llamas are blind to a constant position shift)."""
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=32, n_layer=2, n_head=4,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    return GPT2LMHeadModel(config).float().eval()


def _encoded(tokenizer, prompts=PROMPTS):
    encoded = encode_left_padded(tokenizer, prompts, "cpu")
    lengths = encoded["attention_mask"].sum(-1).tolist()
    assert lengths == sorted(set(lengths)) and encoded["attention_mask"][0, 0] == 0  # left padding in play
    return encoded


def _generate(model, tokenizer, encoded, processor=None, seed=0, **settings):
    torch.manual_seed(seed)
    extra = {"logits_processor": LogitsProcessorList([processor])} if processor is not None else {}
    with torch.inference_mode():
        return model.generate(**encoded, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                              **extra, **settings)


def test_combine_logprobs_closed_form():
    base_logprobs = torch.tensor([[math.log(0.5), math.log(0.25), math.log(0.25)]])
    term = torch.tensor([[0.0, -1.0, -2.0]])
    ignored = torch.full((1, 3), float("nan"))  # a zero weight drops its term entirely
    combined = combine_logprobs(base_logprobs, [(2.0, term), (0.0, ignored)], temperature=0.5)
    expected = torch.tensor([[2 * math.log(0.5), 2 * math.log(0.25) - 4.0, 2 * math.log(0.25) - 8.0]])
    torch.testing.assert_close(combined, expected)
    with pytest.raises(ValueError, match="temperature"):
        combine_logprobs(base_logprobs, [], temperature=0.0)


def test_alpha_zero_equals_plain_sampling(base, other_arm, smol_tokenizer):
    encoded = _encoded(smol_tokenizer)
    plain = _generate(base, smol_tokenizer, encoded, max_new_tokens=8, **SAMPLING)
    guided = _generate(base, smol_tokenizer, encoded, GuidedLogits([(0.0, other_arm)]).for_prompts(
        encoded["attention_mask"]), max_new_tokens=8, **SAMPLING)
    assert torch.equal(guided, plain)

    texts, lengths = decode_new(smol_tokenizer, plain[:, encoded["input_ids"].shape[1]:])
    completions = genarm(base, smol_tokenizer, PROMPTS, arm=other_arm, alpha=0.0, temperature=1.0,
                         max_new_tokens=8, seed=0)
    assert [c.text for c in completions] == texts and [c.tokens for c in completions] == lengths


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_copy_of_base_as_arm_closed_form_and_greedy(family, base, smol_tokenizer):
    base = tiny_gpt2(smol_tokenizer) if family == "gpt2" else base
    arm, alpha, temperature = copy.deepcopy(base), 1.0, 0.5
    encoded = _encoded(smol_tokenizer, render_prompts(smol_tokenizer, PROMPTS))  # genarm templates string prompts
    processor = GuidedLogits([(alpha, arm)], temperature=temperature).for_prompts(encoded["attention_mask"])
    output = _generate(base, smol_tokenizer, encoded, processor, max_new_tokens=4, do_sample=False,
                       output_scores=True, output_logits=True, return_dict_in_generate=True)
    for guided, raw in zip(output.scores, output.logits):  # every step, padded rows included
        expected = ((1 + alpha) * raw.log_softmax(-1) / temperature).softmax(-1)
        torch.testing.assert_close(guided.softmax(-1), expected, atol=1e-5, rtol=0)

    plain = _generate(base, smol_tokenizer, encoded, max_new_tokens=8, do_sample=False)
    texts, _ = decode_new(smol_tokenizer, plain[:, encoded["input_ids"].shape[1]:])
    completions = genarm(base, smol_tokenizer, PROMPTS, arm=arm, alpha=alpha, do_sample=False, max_new_tokens=8)
    assert [c.text for c in completions] == texts
    assert completions[0].diagnostics["temperature"] == pytest.approx(0.5)  # default 1 / (1 + α)


def test_cached_guide_equals_uncached_and_processor_is_reusable(base, other_arm, smol_tokenizer):
    encoded = _encoded(smol_tokenizer)
    vocabulary = len(smol_tokenizer)

    def last_token_bonus(input_ids: torch.Tensor) -> torch.Tensor:  # a term callable: favour repeating
        return torch.nn.functional.one_hot(input_ids[:, -1], vocabulary).float()

    def guided(use_cache: bool) -> GuidedLogits:
        return GuidedLogits([(0.7, other_arm), (0.4, copy.deepcopy(base))], [(0.5, last_token_bonus)],
                            temperature=0.8, use_cache=use_cache).for_prompts(encoded["attention_mask"])

    cached_processor = guided(use_cache=True)
    cached = _generate(base, smol_tokenizer, encoded, cached_processor, max_new_tokens=10, **SAMPLING)
    uncached = _generate(base, smol_tokenizer, encoded, guided(use_cache=False), max_new_tokens=10, **SAMPLING)
    plain = _generate(base, smol_tokenizer, encoded, max_new_tokens=10, **SAMPLING)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, plain)  # the guidance changed the samples
    again = _generate(base, smol_tokenizer, encoded, cached_processor, max_new_tokens=10, **SAMPLING)
    assert torch.equal(again, cached)  # second generate call: state reset, not continued


def test_guide_with_another_vocabulary_is_rejected(base, smol_tokenizer):
    small_base, small_guide = tiny_llama(vocab_size=128), tiny_llama(vocab_size=96)
    processor = GuidedLogits([(1.0, small_guide)])
    with pytest.raises(ValueError, match="vocabulary"):
        processor(torch.tensor([[1, 5, 7]]), small_base(torch.tensor([[1, 5, 7]])).logits[:, -1])
    with pytest.raises(ValueError, match="vocabulary"):
        genarm(base, smol_tokenizer, PROMPTS, arm=tiny_llama(vocab_size=1000), max_new_tokens=2)


def test_forward_passes_multi_objective_without_early_stop(base, other_arm, smol_tokenizer):
    max_new_tokens = 5
    base.generation_config.min_new_tokens = max_new_tokens  # EOS masked out: every row runs to the end
    prompts = [[{"role": "user", "content": text}] for text in reversed(PROMPTS)]
    completions = genarm(base, smol_tokenizer, prompts, arm=[base, other_arm], alpha=[0.5, 0.3],
                         max_new_tokens=max_new_tokens, batch_size=2)
    assert [c.tokens for c in completions] == [max_new_tokens] * 3
    for completion in completions:  # base + 2 ARMs (one of them the base itself), one row per step
        assert completion.diagnostics["forward_passes"] == 3 * max_new_tokens
        assert completion.diagnostics["forward_passes_per_token"] == 3
        assert completion.diagnostics["temperature"] == pytest.approx(1 / 1.8)
