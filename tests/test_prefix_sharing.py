"""Prefix sharing and packing: `[prompt | chosen | rejected]` in one row, several pairs packed per row, and
`[prompt | c_1 | … | c_K]` for lists give the plain path's log-probs and gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import CONVERSATIONAL_EXAMPLES, tiny_llama

from alignkit.data import TokenizedExample, collate_rows, collate_shared_prefix, tokenize_examples
from alignkit.data.collation import pack_rows
from alignkit.models.logprobs import CompletionScorer, completion_logps, grouped_logps, pair_logps


def test_layout_of_one_pair():
    pair = TokenizedExample.pair(prompt_ids=(10, 11, 12), chosen_ids=(20, 21), rejected_ids=(30, 31, 32), index=7, where="x")
    short = TokenizedExample.pair(prompt_ids=(10,), chosen_ids=(20,), rejected_ids=(30,), index=8, where="y")
    batch = collate_shared_prefix([pair, short], pad_token_id=0)
    assert batch["input_ids"][0].tolist() == [10, 11, 12, 20, 21, 30, 31, 32]
    assert batch["input_ids"][1].tolist() == [10, 20, 30, 0, 0, 0, 0, 0]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]  # each answer restarts after the prompt
    assert batch["segment_ids"][0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert batch["segment_ids"][1].tolist() == [0, 1, 2, -1, -1, -1, -1, -1]
    assert batch["context_ids"][0].tolist() == [0, 0, 0, 0, 0, 0, 0, 0]  # answers see the prompt (segment 0)
    assert batch["completion_mask"][0].tolist() == [False] * 3 + [True] * 5
    # The first rejected token (position 5) is predicted from the last prompt token (position 2).
    assert batch["source_index"][0, 3:].tolist() == [2, 3, 2, 5, 6]
    assert batch["slots"][0].tolist() == [-1, -1, -1, 0, 0, 2, 2, 2]  # chosen of pair 0 -> 0, rejected -> B + 0
    assert batch["slots"][1, :3].tolist() == [-1, 1, 3]
    assert batch["index"].tolist() == [7, 8]
    assert batch["sequence_tokens"].item() == (3 + 2) + (3 + 3) + (1 + 1) + (1 + 1)


def test_pack_rows_is_first_fit_decreasing():
    assert pack_rows([5, 3, 8, 2, 4]) == [[2], [0, 1], [3, 4]]  # capacity 8: 8 | 5+3 | 4+2
    assert pack_rows([5, 3, 8, 2, 4], capacity=11) == [[1, 2], [0, 3, 4]]  # 8+3 | 5+4+2
    assert pack_rows([5, 30, 2], capacity=10) == [[1], [0, 2]]  # too long for a row: one of its own
    assert pack_rows([4, 4, 4]) == [[0], [1], [2]]  # nothing fits together: the unpacked layout


def test_packed_layout_of_two_pairs_in_one_row():
    first = TokenizedExample.pair(prompt_ids=(10, 11), chosen_ids=(20,), rejected_ids=(30, 31), index=0, where="a")
    second = TokenizedExample.pair(prompt_ids=(12,), chosen_ids=(22, 23), rejected_ids=(32,), index=1, where="b")
    batch = collate_shared_prefix([first, second], pad_token_id=0, pack=True, row_tokens=9)
    assert batch["input_ids"].tolist() == [[10, 11, 20, 30, 31, 12, 22, 23, 32]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 2, 3, 0, 1, 2, 1]]
    assert batch["segment_ids"].tolist() == [[0, 0, 1, 2, 2, 3, 4, 4, 5]]
    assert batch["context_ids"].tolist() == [[0, 0, 0, 0, 0, 3, 3, 3, 3]]
    # The second pair's answers are predicted from its own prompt token (position 5), never from pair 1.
    assert batch["source_index"][0, 6:].tolist() == [5, 6, 5]
    assert batch["slots"].tolist() == [[-1, -1, 0, 2, 2, -1, 1, 1, 3]]


def _scores_and_grads(model, batch, per_prompt=2):
    groups = grouped_logps(CompletionScorer(model), batch, per_prompt)
    model.zero_grad()
    sum(weight * g.sum.sum() for weight, g in zip((1.0, -2.0, 0.5), groups)).backward()
    return groups, {name: p.grad.clone() for name, p in model.named_parameters()}


def _assert_same(expected, actual):
    (groups_a, grads_a), (groups_b, grads_b) = expected, actual
    for a, b in zip(groups_a, groups_b):
        assert ((a.sum - b.sum).abs() / a.count).max() < 1e-5
        assert torch.allclose(a.sum, b.sum, atol=1e-5, rtol=1e-6), (a.sum, b.sum)
        assert torch.equal(a.count, b.count)
    assert groups_a[0].sum.abs().min() > 1.0
    worst = max(((grads_a[k] - grads_b[k]).abs().max() / grads_a[k].abs().max().clamp(min=1.0)).item()
                for k in grads_a)
    assert worst < 1e-5


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("row_tokens", [None, 10_000])  # first-fit in the longest pair's width; all in one row
def test_packed_rows_equal_plain_path(smol_tokenizer, attention, row_tokens):
    model = tiny_llama(vocab_size=len(smol_tokenizer), initializer_range=0.3)
    model.set_attn_implementation(attention)
    pairs, _ = tokenize_examples(CONVERSATIONAL_EXAMPLES, smol_tokenizer)
    # A long and a short extra pair, so first-fit has room to pack pairs next to each other.
    long_prompt = pairs[0].prompt_ids + pairs[1].prompt_ids
    pairs.append(TokenizedExample.pair(long_prompt, pairs[1].slot("chosen")[0], pairs[0].slot("rejected")[0], len(pairs), "long"))
    pairs.append(TokenizedExample.pair(pairs[0].prompt_ids[:4], (5, 6), (7,), len(pairs), "short"))
    packed = collate_shared_prefix(pairs, smol_tokenizer.pad_token_id, pack=True, row_tokens=row_tokens)
    assert packed["input_ids"].size(0) < len(pairs)  # packing did put several pairs in a row
    plain = _scores_and_grads(model, collate_rows(pairs, smol_tokenizer.pad_token_id))
    _assert_same(plain, _scores_and_grads(model, packed))


def test_list_layout_equals_each_completion_scored_alone(smol_tokenizer):
    """`[prompt | c_1 | c_2 | c_3]` (listwise objectives) against each prompt + completion as its own row."""
    model = tiny_llama(vocab_size=len(smol_tokenizer), initializer_range=0.3)
    pairs, _ = tokenize_examples(CONVERSATIONAL_EXAMPLES, smol_tokenizer)

    lists = [TokenizedExample(((p.prompt_ids, (p.slot("chosen")[0], p.slot("rejected")[0], p.slot("chosen")[0][::-1])),),
                              (("ranked", 3),), p.index, p.where) for p in pairs]
    shared = _scores_and_grads(model, collate_shared_prefix(lists, smol_tokenizer.pad_token_id, pack=True), 3)

    rows = [(e.groups[0][0], e.groups[0][1][k]) for k in range(3) for e in lists]
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.long)
    completion = torch.zeros(len(rows), width, dtype=torch.bool)
    for r, (prompt, answer) in enumerate(rows):
        input_ids[r, :len(prompt) + len(answer)] = torch.tensor(prompt + tuple(answer))
        attention[r, :len(prompt) + len(answer)] = 1
        completion[r, len(prompt):len(prompt) + len(answer)] = True
    alone = completion_logps(model, input_ids, attention, completion)
    model.zero_grad()
    weights = torch.tensor([1.0, -2.0, 0.5]).repeat_interleave(len(lists))
    (alone.sum * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    groups = [type(alone)(s, c) for s, c in zip(alone.sum.detach().chunk(3), alone.count.chunk(3))]
    _assert_same((groups, grads), shared)


def test_collate_rejects_examples_it_cannot_score():
    empty = TokenizedExample.pair(prompt_ids=(1,), chosen_ids=(), rejected_ids=(2,), index=0, where="x")
    with pytest.raises(ValueError, match="completion is empty"):
        collate_shared_prefix([empty], pad_token_id=0)
    no_prompt = TokenizedExample.pair(prompt_ids=(), chosen_ids=(1,), rejected_ids=(2,), index=0, where="x")
    with pytest.raises(ValueError, match="prompt is empty"):
        collate_shared_prefix([no_prompt], pad_token_id=0)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prefix_equals_plain_path(smol_tokenizer, attention):
    model = tiny_llama(vocab_size=len(smol_tokenizer), initializer_range=0.3)
    model.set_attn_implementation(attention)
    pairs, _ = tokenize_examples(CONVERSATIONAL_EXAMPLES, smol_tokenizer)
    scorer = CompletionScorer(model)

    def scores_and_grads(batch):
        chosen, rejected = pair_logps(scorer, batch)
        model.zero_grad()
        (chosen.sum.sum() - 2 * rejected.sum.sum()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        return chosen, rejected, grads

    plain = scores_and_grads(collate_rows(pairs, smol_tokenizer.pad_token_id))
    shared = scores_and_grads(collate_shared_prefix(pairs, smol_tokenizer.pad_token_id))
    for a, b in zip(plain[:2], shared[:2]):
        # fp32 sums of ~150 carry ~1e-5 of rounding; per token the paths agree far below 1e-5.
        assert ((a.sum - b.sum).abs() / a.count).max() < 1e-5
        assert torch.allclose(a.sum, b.sum, atol=1e-5, rtol=1e-6), (a.sum, b.sum)
        assert torch.equal(a.count, b.count)
    assert plain[0].sum.abs().min() > 1.0  # real log-probs, not zeros
    # Gradients of a loss of size ~400 reach ~100: compare relative to each tensor's scale.
    worst = max(((plain[2][k] - shared[2][k]).abs().max() / plain[2][k].abs().max().clamp(min=1.0)).item()
                for k in plain[2])
    assert worst < 1e-5


def test_training_with_any_layout_agrees(tmp_path, tiny_chat_model_dir, monkeypatch):
    import json

    from safetensors.torch import load_file

    from alignkit.train import load_config, train

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    rows = [{"prompt": [{"role": "user", "content": f"Describe the number {i}" + " in detail" * (i % 3)}],
             "chosen": [{"role": "assistant", "content": f"{i} is small." + " Truly." * (i % 2)}],
             "rejected": [{"role": "assistant", "content": "No" + "!" * i}]} for i in range(8)]
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = [f"model.name_or_path={tiny_chat_model_dir}", f"data.train={data}", "optim.lr=1e-3", "batch_size=4",
              "max_steps=2", "progress=false", "report_to=none", "reference.cache=false"]
    plain = train(load_config(None, common + ["prefix_sharing=false", f"output_dir={tmp_path / 'plain'}"]))
    b = load_file(plain.final_dir / "model.safetensors")
    for layout in (["packing=false"], ["packing=true"], ["packing=true", "pack_row_tokens=4096"]):
        shared = train(load_config(None, common + layout + [f"output_dir={tmp_path / '_'.join(layout)}"]))
        a = load_file(shared.final_dir / "model.safetensors")
        assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5, layout
        assert shared.metrics["loss"] == pytest.approx(plain.metrics["loss"], abs=1e-5)
        assert shared.metrics["tokens_in_step"] == plain.metrics["tokens_in_step"]  # same pairs, same count


def test_falls_back_to_plain_rows_and_says_so(tmp_path, tiny_chat_model_dir, monkeypatch, caplog):
    import functools

    from alignkit.train import load_config
    from alignkit.train import setup

    monkeypatch.setattr(setup, "accepts_block_mask", lambda model: False)
    model = tiny_llama()
    config = load_config(None, [])
    with caplog.at_level("WARNING"):
        collate = setup.batch_layout(config, model, pad_token_id=0)
    assert isinstance(collate, functools.partial) and collate.func is collate_rows
    assert "prefix sharing needs sdpa or eager attention" in caplog.text
    monkeypatch.undo()
    assert setup.batch_layout(config, model, pad_token_id=0).func is collate_shared_prefix
