"""The decoding loop under the sampler: one prefill per prompt shared by its n samples, finished rows leave the
batch; the same tokens as full forwards without a cache (greedy: as `model.generate`)."""

from __future__ import annotations

import torch
from conftest import tiny_llama

from alignkit.models.sampling import decode, draw, next_tokens

PROMPTS = [[5, 9, 11, 3], [7, 8], [20, 21, 22, 23, 24, 25]]


def left_padded(rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row):], mask[r, width - len(row):] = torch.tensor(row), 1
    return ids, mask


def test_greedy_equals_generate_and_n_greedy_samples_share_one_prefill():
    model = tiny_llama(seed=3)
    ids, mask = left_padded(PROMPTS)
    expected = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=6,
                              pad_token_id=0, eos_token_id=None)[:, ids.size(1):].tolist()
    got = decode(model, ids, mask, n=1, max_new_tokens=6, eos_token_id=None, temperature=0)
    assert got.ids == expected
    three = decode(model, ids, mask, n=3, max_new_tokens=6, eos_token_id=None, temperature=0)
    assert three.ids == [row for row in expected for _ in range(3)]
    assert three.forwards == len(PROMPTS) + 3 * len(PROMPTS) * 5  # one prefill row per prompt, then 3 rows each


def test_sampling_draws_from_the_uncached_model_with_the_same_uniforms():
    """Each step's token is `draw` of softmax(logits / T) at the row's last position, with one uniform per
    row: recomputed here by full forwards without a KV cache over the growing sequences."""
    model = tiny_llama(seed=4)
    ids, mask = left_padded(PROMPTS)
    torch.manual_seed(11)
    got = decode(model, ids, mask, n=1, max_new_tokens=5, eos_token_id=None, temperature=0.7).ids
    torch.manual_seed(11)
    expected: list[list[int]] = [[] for _ in PROMPTS]
    for _ in range(5):
        rows = [prompt + new for prompt, new in zip(PROMPTS, expected)]
        with torch.no_grad():
            last = torch.stack([model(torch.tensor([row])).logits[0, -1] for row in rows])
        tokens = draw((last / 0.7).softmax(-1), torch.rand(len(rows)))
        for new, token in zip(expected, tokens.tolist()):
            new.append(token)
    assert got == expected


def test_draw_inverts_the_cumulative_mass_and_never_draws_a_zero():
    probs = torch.tensor([[0.5, 0.3, 0.0, 0.2]]).expand(6, 4)
    uniform = torch.tensor([0.0, 0.49, 0.5, 0.79, 0.8, 1 - 2 ** -24])
    assert draw(probs, uniform).tolist() == [0, 0, 1, 1, 3, 3]  # mass 0.5, 0.8, 0.8, 1.0: index 2 is skipped
    assert draw(3 * probs, uniform).tolist() == [0, 0, 1, 1, 3, 3]  # unnormalised mass: the same draws
    assert draw(torch.tensor([[0.0, 1.0, 0.0]]), torch.tensor([0.0])).tolist() == [1]


def test_finished_rows_leave_the_batch():
    model = tiny_llama(seed=3)
    ids, mask = left_padded(PROMPTS)
    greedy = decode(model, ids, mask, n=1, max_new_tokens=6, eos_token_id=None, temperature=0).ids
    eos = greedy[1][1]  # prompt 1 emits this token second: make it EOS
    got = decode(model, ids, mask, n=1, max_new_tokens=6, eos_token_id=eos, temperature=0)
    for row, full in zip(got.ids, greedy):
        stop = full.index(eos) + 1 if eos in full else len(full)
        assert row == full[:stop]  # the same tokens up to and including EOS; the other rows go on unchanged
    assert len(got.ids[1]) == greedy[1].index(eos) + 1 < 6  # prompt 1 stopped early
    # forwards: the prefill (3 rows, each row's first token), then one row per live sample for each later token
    assert got.forwards == 3 + sum(len(row) - 1 for row in got.ids) < 3 + 3 * 5


def test_nucleus_keeps_the_smallest_set_reaching_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    draws = {next_tokens(logits, 1.0, 0.7)[0].item() for _ in range(200)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.7; 0.15 and 0.05 are cut
    token, entropy = next_tokens(logits, 1.0, 1.0)
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    assert torch.allclose(entropy, -(p * p.log()).sum())
