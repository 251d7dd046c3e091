"""`alignkit.decode.search` (KV-cached rollouts, search driver, DeAL) and `alignkit.decode.transfer_q`, on tiny
random llamas over the SmolLM2 vocabulary, against greedy `generate`, the uncached path and closed-form counts."""

from __future__ import annotations

import copy

import pytest
import torch
from tests.conftest import tiny_llama

from alignkit.data.prompts import render_prompt
from alignkit.decode.core import encode_left_padded, generated_length
from alignkit.decode.search import Prefix, deal, rollout
from alignkit.decode.transfer_q import transfer_q
from alignkit.models.rewards import Reward, TextReward

PROMPTS = [[{"role": "user", "content": "What colour is the sky?"}], "Plain text prompt about dragons:"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: one thread, no contention


class CountChar(TextReward):
    def __init__(self, char: str = "e"):
        self.char = char

    def check(self, text: str) -> float:
        return text.count(self.char)


class StartsWith(TextReward):
    def __init__(self, prefix: str):
        self.prefix = prefix

    def check(self, text: str) -> float:
        return float(text.startswith(self.prefix))


class Constant(Reward):
    def score(self, prompts, completions) -> torch.Tensor:
        return torch.full((len(completions),), 3.0)


def chat_model(tokenizer, seed=0):
    # untied: tied random weights just echo the last token
    return tiny_llama(vocab_size=len(tokenizer), seed=seed, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)


def prompt_ids(tokenizer, prompt) -> torch.Tensor:
    text = render_prompt(tokenizer, prompt)  # a string prompt too goes through the chat template
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


def greedy(model, tokenizer, prompt, max_new_tokens) -> tuple[str, int, list[int]]:
    """Greedy `generate` on the prompt alone: text, token count (EOS included) and new ids."""
    ids = prompt_ids(tokenizer, prompt)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
    new = out[0, ids.shape[1]:]
    n = generated_length(new, tokenizer)
    return tokenizer.decode(new[:n], skip_special_tokens=True).strip(), n, new[:n].tolist()


def first_step_topk(model, tokenizer, prompt, k) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        probs = model(input_ids=prompt_ids(tokenizer, prompt)).logits[0, -1].float().softmax(-1)
    return probs.topk(k)


def eos_at(tokenizer, token_id: int):
    """A copy of the tokenizer whose EOS is `token_id` (an ordinary token the model does produce)."""
    changed = copy.deepcopy(tokenizer)
    changed.eos_token = tokenizer.convert_ids_to_tokens(token_id)
    assert changed.eos_token_id == token_id
    return changed


def block_eos(model, tokenizer):
    """EOS unreachable: an output bias of -1e4 on it (fixed-length runs)."""
    bias = torch.zeros(model.config.vocab_size)
    bias[tokenizer.eos_token_id] = -1e4
    model.lm_head.bias = torch.nn.Parameter(bias)
    return model


def as_tuple(completions):
    return [(c.text, c.tokens, c.diagnostics) for c in completions]


def test_rollouts_fork_the_prefix_cache_and_continue_greedily(smol_tokenizer):
    model, k, length = chat_model(smol_tokenizer), 3, 4
    texts = [render_prompt(smol_tokenizer, prompt) for prompt in PROMPTS]
    encoded = encode_left_padded(smol_tokenizer, texts, "cpu")
    with torch.inference_mode():
        prefix, logits = Prefix.start(model, encoded["input_ids"], encoded["attention_mask"], use_cache=True)
        candidates = logits.topk(k).indices
        got = rollout(prefix, candidates, length, smol_tokenizer.eos_token_id, smol_tokenizer.pad_token_id)
    assert got.shape == (2 * k, length)
    assert prefix.cache.get_seq_length() == encoded["input_ids"].shape[1] and len(prefix.ids) == 2  # untouched
    for row, prompt in enumerate(PROMPTS):
        for j in range(k):
            ids = torch.cat([prompt_ids(smol_tokenizer, prompt), candidates[row, j].view(1, 1)], dim=1)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=length,
                                     do_sample=False, pad_token_id=smol_tokenizer.pad_token_id)
            assert got[row * k + j].tolist() == out[0, ids.shape[1]:].tolist()


def test_deal_with_one_candidate_and_no_lookahead_is_greedy_generate(smol_tokenizer):
    model = chat_model(smol_tokenizer)
    got = deal(model, smol_tokenizer, PROMPTS, reward=CountChar(), k=1, lookahead=0, max_new_tokens=12)
    expected = [greedy(model, smol_tokenizer, p, 12) for p in PROMPTS]
    assert [(c.text, c.tokens) for c in got] == [(text, n) for text, n, _ in expected]
    assert expected[0][0] != expected[1][0] and all(len(text) > 10 for text, _, _ in expected)


def test_deal_and_transfer_q_stop_at_eos_like_generate(smol_tokenizer):
    model = chat_model(smol_tokenizer)
    ids = greedy(model, smol_tokenizer, PROMPTS[0], 12)[2]
    step = next(i for i in range(3, 12) if ids[i] not in ids[:i])
    tokenizer = eos_at(smol_tokenizer, ids[step])
    text, n, _ = greedy(model, tokenizer, PROMPTS[0], 12)
    assert n == step + 1
    for method, extra in ((deal, dict(lookahead=0, k=1)), (transfer_q, dict(alpha=0.0, k=4, lookahead=2))):
        (got,) = method(model, tokenizer, PROMPTS[:1], reward=CountChar(), max_new_tokens=12, **extra)
        assert (got.text, got.tokens) == (text, n)


def test_deal_with_a_constant_reward_is_greedy(smol_tokenizer):
    model = chat_model(smol_tokenizer)
    got = deal(model, smol_tokenizer, PROMPTS, reward=Constant(), k=4, lookahead=3, lam=5.0, max_new_tokens=10)
    assert [(c.text, c.tokens) for c in got] == [greedy(model, smol_tokenizer, p, 10)[:2] for p in PROMPTS]


def test_deal_beams_with_a_constant_reward_is_beam_search(smol_tokenizer):
    """Σ log P ranking: with k = beams candidates per beam, the kept beams are the best `beams` of all beams × V
    continuations, i.e. `generate`'s beam search without length penalty (EOS unreachable, fixed length)."""
    model = block_eos(chat_model(smol_tokenizer), smol_tokenizer)
    got = deal(model, smol_tokenizer, PROMPTS, reward=Constant(), k=3, lookahead=0, beams=3, max_new_tokens=8)
    for prompt, completion in zip(PROMPTS, got):
        ids = prompt_ids(smol_tokenizer, prompt)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, num_beams=3,
                                 do_sample=False, length_penalty=0.0, pad_token_id=smol_tokenizer.pad_token_id)
        assert completion.text == smol_tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
        assert completion.text != greedy(model, smol_tokenizer, prompt, 8)[0]


def test_transfer_q_with_alpha_zero_greedy_is_the_prior_greedy(smol_tokenizer):
    model, rollout_model = chat_model(smol_tokenizer), chat_model(smol_tokenizer, seed=1)
    expected = [greedy(model, smol_tokenizer, p, 10)[:2] for p in PROMPTS]
    for roller in (None, rollout_model):
        got = transfer_q(model, smol_tokenizer, PROMPTS, reward=CountChar(), rollout_model=roller, k=5, alpha=0.0,
                         lookahead=3, max_new_tokens=10)
        assert [(c.text, c.tokens) for c in got] == expected


@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_transfer_q_sampling_with_alpha_zero_draws_from_the_renormalised_top_k(smol_tokenizer, temperature):
    model, k = chat_model(smol_tokenizer), 5
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # peaked logits, so that the temperature changes the draws
    top_probs, top_ids = first_step_topk(model, smol_tokenizer, PROMPTS[0], k)
    texts = [smol_tokenizer.decode([i], skip_special_tokens=True).strip() for i in top_ids.tolist()]
    assert len(set(texts)) == k
    probs = top_probs ** (1 / temperature) / (top_probs ** (1 / temperature)).sum()
    expected, got = [], []
    for seed in range(24):
        torch.manual_seed(seed)
        expected.append(texts[int(torch.multinomial(probs, 1))])
        (completion,) = transfer_q(model, smol_tokenizer, PROMPTS[:1], reward=CountChar(), k=k, alpha=0.0,
                                   lookahead=2, mode="topk", temperature=temperature, max_new_tokens=1, seed=seed)
        got.append(completion.text)
    assert got == expected and len(set(expected)) > 1


def test_a_reward_for_one_token_makes_both_methods_pick_it(smol_tokenizer):
    model, k = chat_model(smol_tokenizer), 5
    _, top_ids = first_step_topk(model, smol_tokenizer, PROMPTS[0], k)
    texts = [smol_tokenizer.decode([i], skip_special_tokens=True).strip() for i in top_ids.tolist()]
    target = next(t for j, t in enumerate(texts) if j > 0 and t and
                  not any(o.startswith(t) or t.startswith(o) for i, o in enumerate(texts) if i != j))
    assert not greedy(model, smol_tokenizer, PROMPTS[0], 6)[0].startswith(target)
    reward = StartsWith(target)
    (by_deal,) = deal(model, smol_tokenizer, PROMPTS[:1], reward=reward, k=k, lookahead=0, lam=100.0,
                      max_new_tokens=6)
    (by_tq,) = transfer_q(model, smol_tokenizer, PROMPTS[:1], reward=reward, k=k, alpha=100.0, lookahead=0,
                          max_new_tokens=6)
    assert by_deal.text.startswith(target) and by_tq.text.startswith(target)


def test_cached_and_uncached_deal_beam_search_agree(smol_tokenizer):
    model = chat_model(smol_tokenizer)
    ids = greedy(model, smol_tokenizer, PROMPTS[0], 8)[2]
    tokenizer = eos_at(smol_tokenizer, ids[3])  # some beams finish early
    settings = dict(reward=CountChar(), k=3, lookahead=2, beams=2, max_new_tokens=8)
    cached = deal(model, tokenizer, PROMPTS, batch_size=2, **settings)
    assert as_tuple(cached) == as_tuple(deal(model, tokenizer, PROMPTS, batch_size=2, use_cache=False, **settings))
    one_by_one = deal(model, tokenizer, PROMPTS, batch_size=1, **settings)  # left padding changes nothing
    assert [(c.text, c.tokens) for c in cached] == [(c.text, c.tokens) for c in one_by_one]
    assert [(c.text, c.tokens) for c in cached] != [greedy(model, tokenizer, p, 8)[:2] for p in PROMPTS]
    assert cached[0].tokens < 8  # a hypothesis that finished early stayed in its beam set and won


def test_cached_and_uncached_transfer_q_agree(smol_tokenizer):
    model, rollout_model = chat_model(smol_tokenizer), chat_model(smol_tokenizer, seed=1)
    for roller in (None, rollout_model):
        settings = dict(reward=CountChar(), rollout_model=roller, k=4, alpha=1.0, lookahead=3, max_new_tokens=8)
        cached = transfer_q(model, smol_tokenizer, PROMPTS, **settings)
        assert as_tuple(cached) == as_tuple(transfer_q(model, smol_tokenizer, PROMPTS, use_cache=False, **settings))
        assert [(c.text, c.tokens) for c in cached] != [greedy(model, smol_tokenizer, p, 8)[:2] for p in PROMPTS]


@pytest.mark.parametrize("beams", [1, 2])
def test_deal_counts_match_the_closed_form(smol_tokenizer, beams):
    model = block_eos(chat_model(smol_tokenizer), smol_tokenizer)
    k, L, T = 3, 2, 5
    (got,) = deal(model, smol_tokenizer, PROMPTS[:1], reward=CountChar(), k=k, lookahead=L, beams=beams,
                  max_new_tokens=T)
    # prompt forward + step-1 rollouts of one row, then per later step and beam: 1 forward + k·L rollout rows
    forwards = 1 + k * L + (T - 1) * beams * (1 + k * L)
    rewards = k + (T - 1) * beams * k
    assert got.tokens == T
    assert got.diagnostics == {"forward_passes": forwards, "forward_passes_per_token": forwards / T,
                               "reward_calls": rewards, "reward_calls_per_token": rewards / T}


def test_transfer_q_counts_match_the_closed_form(smol_tokenizer):
    model = block_eos(chat_model(smol_tokenizer), smol_tokenizer)
    rollout_model = block_eos(chat_model(smol_tokenizer, seed=1), smol_tokenizer)
    k, L, T = 4, 3, 5
    (own,) = transfer_q(model, smol_tokenizer, PROMPTS[:1], reward=CountChar(), k=k, lookahead=L, max_new_tokens=T)
    own_counts = (own.tokens, own.diagnostics["forward_passes"], own.diagnostics["reward_calls"])
    assert own_counts == (T, T * (1 + k * L), T * k)
    (other,) = transfer_q(model, smol_tokenizer, PROMPTS[:1], reward=CountChar(), rollout_model=rollout_model,
                          baseline_reward=Constant(), k=k, lookahead=L, max_new_tokens=T)
    # the rollout model follows the beam too: its prompt forward and one forward per later step
    assert other.diagnostics == {"forward_passes": 2 * T + T * k * L, "forward_passes_per_token": 2 + k * L,
                                 "reward_calls": T * k, "reward_calls_per_token": k, "baseline_reward_calls": T * k}


def test_transfer_q_rejects_a_rollout_model_with_another_tokenizer(smol_tokenizer):
    other = copy.deepcopy(smol_tokenizer)
    other.add_tokens(["<new-token>"])
    with pytest.raises(ValueError, match="same tokenizer"):
        transfer_q(chat_model(smol_tokenizer), smol_tokenizer, PROMPTS[:1], reward=CountChar(),
                   rollout_model=chat_model(smol_tokenizer, seed=1), rollout_tokenizer=other, max_new_tokens=2)
