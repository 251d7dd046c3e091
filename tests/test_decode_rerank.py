"""Sample-and-rerank (best-of-N, worst-of-N, calibrated best-of-N) and its win-rate / ASR estimators."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import tiny_llama

from alignkit.data.prompts import render_prompt
from alignkit.decode.core import encode_left_padded
from alignkit.decode.rerank import (
    best_of_n,
    sample_and_rerank,
    sample_candidates,
    selected_indices,
    win_rate,
    worst_of_n,
    worst_of_n_attack_success,
)
from alignkit.decode.sampling import draw_samples
from alignkit.models.sampling import decode
from alignkit.models.rewards import CalibratedReward, EmpiricalCDF, TextReward

PROMPTS = [[{"role": "user", "content": "Name a colour."}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something about the sea."}],
           "A plain string prompt"]
T = 6


class Length(TextReward):
    """Characters of the completion; counts the completions it scores and the calls."""

    def __init__(self):
        self.scored, self.calls = 0, 0

    def check(self, text: str) -> float:
        return float(len(text))

    def score(self, prompts, completions):
        self.scored, self.calls = self.scored + len(completions), self.calls + 1
        return super().score(prompts, completions)


def direct_samples(model, tokenizer, prompts, n, batch_size, seed):
    """The decoding loop by hand (tested against uncached forwards in test_models_sampling.py): prompts
    rendered, sorted by token length, left-padded per batch, one `decode(n=n)` per batch after
    `torch.manual_seed(seed)`."""
    rendered = [render_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(tokenizer(rendered[i], add_special_tokens=False)["input_ids"]))
    out = [None] * len(prompts)
    torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        encoded = encode_left_padded(tokenizer, [rendered[i] for i in batch], "cpu")
        new = decode(model, encoded["input_ids"], encoded["attention_mask"], n=n, max_new_tokens=T,
                     eos_token_id=tokenizer.eos_token_id).ids
        texts = [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
        for k, index in enumerate(batch):
            out[index] = texts[k * n:(k + 1) * n]
    return out


@pytest.fixture()
def model(smol_tokenizer):
    return tiny_llama(vocab_size=len(smol_tokenizer), pad_token_id=smol_tokenizer.pad_token_id,
                      eos_token_id=smol_tokenizer.eos_token_id)


def test_best_of_one_is_plain_sampling(model, smol_tokenizer):
    got = best_of_n(model, smol_tokenizer, PROMPTS, reward=Length(), n=1, max_new_tokens=T, batch_size=2, seed=3)
    plain = direct_samples(model, smol_tokenizer, PROMPTS, n=1, batch_size=2, seed=3)
    assert [c.text for c in got] == [texts[0] for texts in plain]
    assert all(c.diagnostics["selected_index"] == 0 for c in got)


def test_selection_is_the_best_and_worst_of_the_same_samples(model, smol_tokenizer):
    samples = direct_samples(model, smol_tokenizer, PROMPTS, n=4, batch_size=3, seed=5)
    assert all(len(set(texts)) == 4 for texts in samples)  # the check below must tell samples apart
    for method, pick in ((best_of_n, max), (worst_of_n, min)):
        got = method(model, smol_tokenizer, PROMPTS, reward=Length(), n=4, max_new_tokens=T, batch_size=3, seed=5)
        for completion, texts in zip(got, samples):
            lengths = [len(t) for t in texts]
            index = lengths.index(pick(lengths))  # first of any tie
            assert completion.text == texts[index]
            assert completion.diagnostics["selected_index"] == index
            assert completion.diagnostics["selected_reward"] == lengths[index]
            assert completion.diagnostics["mean_reward"] == pytest.approx(sum(lengths) / 4)


def test_ties_go_to_the_first_sample():
    scores = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, -1.0, 5.0, -1.0]])
    assert selected_indices(scores, "max").tolist() == [1, 0, 2]
    assert selected_indices(scores, "min").tolist() == [3, 0, 1]
    with pytest.raises(ValueError, match="select"):
        selected_indices(scores, "argmax")


def test_reward_calls_and_forward_passes_closed_form(model, smol_tokenizer):
    n, reward = 4, Length()
    candidates = sample_candidates(model, smol_tokenizer, PROMPTS, reward=reward, n=n, max_new_tokens=T,
                                   batch_size=2, seed=0)
    assert all(count == T for row in candidates.tokens for count in row)  # fixed-length run: no EOS drawn
    assert reward.calls == 1 and reward.scored == n * len(PROMPTS)
    assert candidates.reward_calls == [n] * len(PROMPTS)
    # one prefill row per prompt (its cache shared by the n samples), then T − 1 steps of n rows
    assert candidates.forward_passes == [1 + n * (T - 1)] * len(PROMPTS)
    got = sample_and_rerank(model, smol_tokenizer, PROMPTS, reward=Length(), n=n, select="max", max_new_tokens=T,
                            batch_size=2, seed=0)
    assert [c.diagnostics["forward_passes_per_token"] for c in got] == [(1 + n * (T - 1)) / T] * len(PROMPTS)
    assert [c.diagnostics["reward_calls"] for c in got] == [n] * len(PROMPTS)
    assert [c.tokens for c in got] == [T] * len(PROMPTS)


def test_unbatched_sampling_is_n_separate_decodes(model, smol_tokenizer):
    texts, tokens, passes = draw_samples(model, smol_tokenizer, PROMPTS[:2], n=3, max_new_tokens=T, batch_size=2,
                                         seed=7, batched=False)
    rendered = [render_prompt(smol_tokenizer, p) for p in PROMPTS[:2]]
    order = sorted(range(2), key=lambda i: len(smol_tokenizer(rendered[i], add_special_tokens=False)["input_ids"]))
    encoded = encode_left_padded(smol_tokenizer, [rendered[i] for i in order], "cpu")
    torch.manual_seed(7)
    runs = [[text.strip() for text in smol_tokenizer.batch_decode(
        decode(model, encoded["input_ids"], encoded["attention_mask"], n=1, max_new_tokens=T,
               eos_token_id=smol_tokenizer.eos_token_id).ids, skip_special_tokens=True)] for _ in range(3)]
    assert [texts[i] for i in order] == [[run[b] for run in runs] for b in range(2)]
    assert passes == [3 * T, 3 * T] and tokens == [[T] * 3] * 2


def test_calibrated_selection_picks_the_raw_pick_and_reports_the_empirical_cdf(model, smol_tokenizer):
    settings = {"n": 4, "max_new_tokens": T, "batch_size": 3, "seed": 5}
    raw = best_of_n(model, smol_tokenizer, PROMPTS, reward=Length(), **settings)
    samples = sample_candidates(model, smol_tokenizer, PROMPTS, reward=Length(), **settings).texts
    # reference completions: the candidates themselves plus two fixed strings → distinct CDF steps
    references = [texts + ["x" * 5, "y" * 40] for texts in samples]
    reward = Length()
    calibrated = best_of_n(model, smol_tokenizer, PROMPTS, reward=reward, calibration=references, **settings)
    assert reward.scored == 4 * len(PROMPTS) + 6 * len(PROMPTS)
    for got, expected, refs in zip(calibrated, raw, references):
        assert (got.text, got.diagnostics["selected_index"]) == (expected.text, expected.diagnostics["selected_index"])
        lengths, chosen = [len(r) for r in refs], len(got.text)
        by_hand = (sum(v < chosen for v in lengths) + 0.5 * sum(v == chosen for v in lengths)) / len(lengths)
        assert got.diagnostics["selected_reward_calibrated"] == pytest.approx(by_hand)
        assert got.diagnostics["reward_calls"] == 4 + 6


def test_calibrated_reward_object_with_right_tie_rule(model, smol_tokenizer):
    reward = Length()
    cdf = EmpiricalCDF(tie="right").fit([(p, [0.0, 10.0, 20.0, 1000.0]) for p in PROMPTS])
    got = best_of_n(model, smol_tokenizer, PROMPTS, reward=reward, calibration=CalibratedReward(reward, cdf),
                    n=3, max_new_tokens=T, seed=1)
    for completion in got:
        chosen = len(completion.text)
        assert completion.diagnostics["selected_reward_calibrated"] == pytest.approx(
            sum(v <= chosen for v in (0.0, 10.0, 20.0, 1000.0)) / 4)
        assert completion.diagnostics["reward_calls"] == 3
    with pytest.raises(ValueError, match="same reward"):
        best_of_n(model, smol_tokenizer, PROMPTS, reward=Length(), calibration=CalibratedReward(reward, cdf),
                  n=2, max_new_tokens=2)


@pytest.mark.parametrize("n", [1, 4, 8])
def test_win_rates_of_best_and_worst_of_n_on_uniform_rewards(n):
    generator = torch.Generator().manual_seed(0)
    draws = torch.rand(50000, n, generator=generator)
    single = torch.rand(50000, 1, generator=generator)  # one paired comparison per synthetic prompt
    assert win_rate(draws.amax(dim=1, keepdim=True), single) == pytest.approx(n / (n + 1), abs=0.02)
    assert win_rate(draws.amin(dim=1, keepdim=True), single) == pytest.approx(1 / (n + 1), abs=0.02)


def test_win_rate_counts_ties_half_and_averages_per_prompt():
    assert win_rate(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5
    assert win_rate(torch.tensor([3.0, 1.0]), torch.tensor([1.0, 2.0])) == pytest.approx((1 + 1 + 0.5 + 0) / 4)
    paired = win_rate(torch.tensor([[2.0], [0.0], [1.0]]), torch.tensor([[1.0], [1.0], [1.0]]))
    assert paired == pytest.approx((1 + 0 + 0.5) / 3)


def test_worst_of_n_attack_success():
    scores = torch.tensor([[0.9, 0.2, 0.8], [0.7, 0.6, 0.9], [0.1, 0.9, 0.9]])
    assert worst_of_n_attack_success(scores, 0.5) == pytest.approx(2 / 3)
    assert worst_of_n_attack_success(scores, 0.5, n=1) == pytest.approx(1 / 3)
    uniform = torch.rand(20000, 4, generator=torch.Generator().manual_seed(1))
    assert worst_of_n_attack_success(uniform, 0.1) == pytest.approx(1 - 0.9 ** 4, abs=0.02)
