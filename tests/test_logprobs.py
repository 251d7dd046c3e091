"""Completion log-probs (`alignkit.models.logprobs`) against a naive full-logits computation and TRL's fused head."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CONVERSATIONAL_EXAMPLES, tiny_llama

from alignkit.data import collate_rows, tokenize_examples
from alignkit.models.logprobs import CompletionScorer, SequenceLogps, completion_logps, pair_logps

VOCAB = 128
PAD = 0


def naive_logps(model, input_ids, attention_mask, completion_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """Project every position onto the vocabulary, log_softmax, gather the next token, keep completion tokens."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    token_logps = logits[:, :-1].log_softmax(-1).gather(2, input_ids[:, 1:].unsqueeze(2)).squeeze(2)
    scored = completion_mask[:, 1:].bool()
    # torch.where, not a multiply: a pad position's value must not leak in even if it were non-finite
    sums = torch.where(scored, token_logps, torch.zeros_like(token_logps)).sum(1)
    return sums, scored.sum(1).float()


def make_batch(rows, width, side):
    """rows: (prompt ids, completion ids); padded to `width` on `side`."""
    n = len(rows)
    input_ids = torch.full((n, width), PAD, dtype=torch.long)
    attention_mask = torch.zeros((n, width), dtype=torch.long)
    completion_mask = torch.zeros((n, width), dtype=torch.bool)
    for i, (prompt, completion) in enumerate(rows):
        ids = list(prompt) + list(completion)
        start = 0 if side == "right" else width - len(ids)
        input_ids[i, start:start + len(ids)] = torch.tensor(ids)
        attention_mask[i, start:start + len(ids)] = 1
        completion_mask[i, start + len(prompt):start + len(ids)] = True
    return input_ids, attention_mask, completion_mask


ROWS = [
    ([1, 5, 9, 14], [20, 21, 22, 2]),  # 4 completion tokens
    ([1, 7], [30, 2]),  # short prompt, 2 completion tokens
    ([1, 3, 4, 5, 6, 8, 10], [2]),  # 1 completion token, longest prompt
    ([1, 40, 41], [50, 51, 52, 53, 54, 2]),  # 6 completion tokens, full width
]
WIDTH = 9


@pytest.mark.parametrize("side", ["right", "left"])
def test_matches_naive_full_logits(side):
    model = tiny_llama(VOCAB)
    input_ids, attention_mask, completion_mask = make_batch(ROWS, WIDTH, side)
    with torch.no_grad():
        got = completion_logps(model, input_ids, attention_mask, completion_mask)
        want_sum, want_count = naive_logps(model, input_ids, attention_mask, completion_mask)
    assert isinstance(got, SequenceLogps)
    assert got.sum.shape == (4,) and got.count.shape == (4,)
    assert got.count.tolist() == [4.0, 2.0, 1.0, 6.0]
    assert torch.equal(got.count, completion_mask.sum(1).float())
    assert torch.isfinite(got.sum).all() and (got.sum < 0).all()
    diff = (got.sum - want_sum).abs().max().item()
    print(f"completion_logps vs naive ({side} padding): max abs diff {diff:.3g}")
    assert diff < 1e-5
    torch.testing.assert_close(got.mean, want_sum / want_count, rtol=0, atol=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding_does_not_change_scores(side):
    """Each row scored alone (no padding at all) gives the same sum as inside the padded batch. Left padding
    puts the pads before the real tokens, where only the attention mask keeps them out (causal attention alone
    hides right padding), so this fails if the mask is dropped."""
    model = tiny_llama(VOCAB)
    batch = make_batch(ROWS, WIDTH, side)
    with torch.no_grad():
        together = completion_logps(model, *batch).sum
        alone = torch.cat([completion_logps(model, *make_batch([row], len(row[0]) + len(row[1]), side)).sum
                           for row in ROWS])
    assert (together - alone).abs().max().item() < 1e-5


def test_mean_is_sum_over_count_and_empty_row_is_zero():
    model = tiny_llama(VOCAB)
    input_ids, attention_mask, completion_mask = make_batch(ROWS[:2], WIDTH, "right")
    completion_mask[1] = False  # a row without completion tokens
    with torch.no_grad():
        got = completion_logps(model, input_ids, attention_mask, completion_mask)
    assert got.count.tolist() == [4.0, 0.0]
    assert got.sum[1].item() == 0.0 and got.mean[1].item() == 0.0
    assert got.mean[0].item() == pytest.approx(got.sum[0].item() / 4, abs=1e-7)


@pytest.mark.parametrize("side", ["right", "left"])
def test_parameter_gradients_match_naive(side):
    model = tiny_llama(VOCAB)
    model_naive = copy.deepcopy(model)
    input_ids, attention_mask, completion_mask = make_batch(ROWS, WIDTH, side)
    weights = torch.tensor([0.7, -1.3, 2.0, 0.4])  # distinct per-row weights, so a row mix-up changes the gradient
    (completion_logps(model, input_ids, attention_mask, completion_mask).sum * weights).sum().backward()
    (naive_logps(model_naive, input_ids, attention_mask, completion_mask)[0] * weights).sum().backward()
    worst = 0.0
    for (name, p), (_, q) in zip(model.named_parameters(), model_naive.named_parameters()):
        assert p.grad is not None, name
        worst = max(worst, (p.grad - q.grad).abs().max().item())
    print(f"parameter gradients vs naive ({side} padding): max abs diff {worst:.3g}")
    assert worst < 1e-5
    assert any(p.grad.abs().max() > 1e-3 for p in model.parameters())  # not trivially zero


def test_mask_on_position_zero_raises():
    model = tiny_llama(VOCAB)
    input_ids, attention_mask, completion_mask = make_batch(ROWS, WIDTH, "right")
    completion_mask[2, 0] = True
    with pytest.raises(ValueError, match="position 0"):
        completion_logps(model, input_ids, attention_mask, completion_mask)


class _FixedScorer(torch.nn.Module):
    """Returns row index as the sum and 10 + row index as the count, to check the split."""

    def forward(self, input_ids, attention_mask, completion_mask):
        rows = torch.arange(input_ids.size(0), dtype=torch.float)
        return rows, rows + 10


def test_pair_logps_splits_chosen_first():
    batch = dict(zip(("input_ids", "attention_mask", "completion_mask"), make_batch(ROWS * 2, WIDTH, "right")))
    chosen, rejected = pair_logps(_FixedScorer(), batch)
    assert chosen.sum.tolist() == [0, 1, 2, 3] and chosen.count.tolist() == [10, 11, 12, 13]
    assert rejected.sum.tolist() == [4, 5, 6, 7] and rejected.count.tolist() == [14, 15, 16, 17]


def _conversational_pairs(tokenizer):
    pairs, _ = tokenize_examples(CONVERSATIONAL_EXAMPLES, tokenizer)
    return pairs


def test_pair_logps_on_real_pairs_match_rows_scored_alone(smol_tokenizer):
    pairs = _conversational_pairs(smol_tokenizer)
    model = tiny_llama(len(smol_tokenizer), pad_token_id=smol_tokenizer.pad_token_id,
                       eos_token_id=smol_tokenizer.eos_token_id)
    batch = collate_rows(pairs, smol_tokenizer.pad_token_id)
    with torch.no_grad():
        chosen, rejected = pair_logps(CompletionScorer(model), batch)
        for which, got in (("chosen", chosen), ("rejected", rejected)):
            rows = [(pair.prompt_ids, pair.slot(which)[0]) for pair in pairs]
            alone = torch.cat([completion_logps(model, *make_batch([row], len(row[0]) + len(row[1]), "right")).sum
                               for row in rows])
            assert got.count.tolist() == [float(len(pair.slot(which)[0])) for pair in pairs], which
            assert (got.sum - alone).abs().max().item() < 1e-4, which  # sums of ~10 tokens over a 49k vocab
    assert not torch.allclose(chosen.sum, rejected.sum)


def test_parity_with_trl_fused_lm_head(smol_tokenizer):
    from trl.trainer.utils import add_fused_lm_head

    pairs = _conversational_pairs(smol_tokenizer)
    model = tiny_llama(len(smol_tokenizer), pad_token_id=smol_tokenizer.pad_token_id,
                       eos_token_id=smol_tokenizer.eos_token_id)
    batch = collate_rows(pairs, smol_tokenizer.pad_token_id)
    input_ids, attention_mask, completion_mask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    # the rows really differ in completion span and padding
    assert len(set(completion_mask.sum(1).tolist())) > 2 and (attention_mask == 0).any()

    trl_model = copy.deepcopy(model)
    add_fused_lm_head(trl_model)
    labels = input_ids.masked_fill(~completion_mask, -100)
    with torch.no_grad():
        out = trl_model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True,
                        use_cache=False)
        # as DPOTrainer._compute_loss: keep the last seq_len - 1 positions, sum over the sequence
        shift_completion_mask = completion_mask[..., 1:]
        trl_sums = out.log_probs[:, -shift_completion_mask.size(1):].sum(dim=1)
        trl_counts = out.label_mask.sum(dim=1).float()
        ours = completion_logps(model, input_ids, attention_mask, completion_mask)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
        naive_tokens = logits[:, :-1].log_softmax(-1).gather(2, input_ids[:, 1:].unsqueeze(2)).squeeze(2)
        naive_tokens = torch.where(shift_completion_mask, naive_tokens, torch.zeros_like(naive_tokens))
    token_diff = (out.log_probs - naive_tokens).abs().max().item()
    print(f"TRL fused per-token log-probs vs naive: max abs diff {token_diff:.3g}")
    assert token_diff < 1e-5
    diff = (ours.sum - trl_sums).abs().max().item()
    print(f"completion_logps vs TRL fused LM head: max abs diff {diff:.3g} (sums ~{ours.sum.abs().mean():.1f})")
    assert diff < 1e-5
    assert torch.equal(ours.count, trl_counts)


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_chunked_lm_head_gives_the_same_logps_and_gradients(chunk):
    model = tiny_llama(initializer_range=0.3)
    torch.manual_seed(1)
    ids = torch.randint(3, 128, (3, 10))
    attention = torch.ones_like(ids)
    completion = torch.zeros_like(ids, dtype=torch.bool)
    completion[:, 4:] = True

    def run(head_chunk):
        model.zero_grad()
        scores = completion_logps(model, ids, attention, completion, head_chunk=head_chunk)
        scores.sum.sum().backward()
        return scores.sum.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    whole, whole_grads = run(None)
    chunked, chunked_grads = run(chunk)
    assert torch.allclose(whole, chunked, atol=1e-5, rtol=0)
    assert max((whole_grads[n] - chunked_grads[n]).abs().max().item() for n in whole_grads) < 1e-5
    with torch.no_grad():
        assert torch.allclose(completion_logps(model, ids, attention, completion, head_chunk=chunk).sum, whole,
                              atol=1e-5, rtol=0)
