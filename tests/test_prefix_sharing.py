"""Prefix sharing: `[prompt | chosen | rejected]` in one row gives the plain path's log-probs and gradients."""

from __future__ import annotations

import pytest
import torch
from conftest import CONVERSATIONAL_EXAMPLES, tiny_llama

from alignkit.data import TokenizedPair, collate_pairs, collate_shared_prefix, tokenize_preferences
from alignkit.models.logprobs import CompletionScorer, pair_logps


def test_layout_of_one_pair():
    pair = TokenizedPair(prompt_ids=(10, 11, 12), chosen_ids=(20, 21), rejected_ids=(30, 31, 32), index=7, where="x")
    short = TokenizedPair(prompt_ids=(10,), chosen_ids=(20,), rejected_ids=(30,), index=8, where="y")
    batch = collate_shared_prefix([pair, short], pad_token_id=0)
    assert batch["input_ids"][0].tolist() == [10, 11, 12, 20, 21, 30, 31, 32]
    assert batch["input_ids"][1].tolist() == [10, 20, 30, 0, 0, 0, 0, 0]
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 3, 4, 5]  # each answer restarts after the prompt
    assert batch["segment_ids"][0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert batch["segment_ids"][1].tolist() == [0, 1, 2, -1, -1, -1, -1, -1]
    assert batch["completion_mask"][0].tolist() == [False] * 3 + [True] * 5
    # The first rejected token (position 5) is predicted from the last prompt token (position 2).
    assert batch["source_index"][0, 3:].tolist() == [2, 3, 2, 5, 6]
    assert batch["slots"][0].tolist() == [-1, -1, -1, 0, 0, 2, 2, 2]  # chosen of pair 0 -> 0, rejected -> B + 0
    assert batch["slots"][1, :3].tolist() == [-1, 1, 3]
    assert batch["index"].tolist() == [7, 8]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prefix_equals_plain_path(smol_tokenizer, attention):
    model = tiny_llama(vocab_size=len(smol_tokenizer), initializer_range=0.3)
    model.set_attn_implementation(attention)
    pairs, _ = tokenize_preferences(CONVERSATIONAL_EXAMPLES, smol_tokenizer)
    scorer = CompletionScorer(model)

    def scores_and_grads(batch):
        chosen, rejected = pair_logps(scorer, batch)
        model.zero_grad()
        (chosen.sum.sum() - 2 * rejected.sum.sum()).backward()
        grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        return chosen, rejected, grads

    plain = scores_and_grads(collate_pairs(pairs, smol_tokenizer.pad_token_id))
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


def test_training_with_and_without_prefix_sharing_agrees(tmp_path, tiny_chat_model_dir, monkeypatch):
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
              "max_steps=2", "progress=false", "tensorboard=false", "reference.cache=false"]
    shared = train(load_config(None, common + [f"output_dir={tmp_path / 'shared'}"]))
    plain = train(load_config(None, common + ["prefix_sharing=false", f"output_dir={tmp_path / 'plain'}"]))
    a, b = load_file(shared.final_dir / "model.safetensors"), load_file(plain.final_dir / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    assert shared.metrics["loss"] == pytest.approx(plain.metrics["loss"], abs=1e-5)
    assert shared.metrics["tokens_in_step"] == plain.metrics["tokens_in_step"]  # same pairs, same count


def test_falls_back_to_plain_rows_and_says_so(tmp_path, tiny_chat_model_dir, monkeypatch, caplog):
    import functools

    from alignkit.train import load_config
    from alignkit.train import loop

    monkeypatch.setattr(loop, "accepts_block_mask", lambda model: False)
    model = tiny_llama()
    config = load_config(None, [])
    with caplog.at_level("WARNING"):
        collate = loop.batch_layout(config, model, pad_token_id=0)
    assert isinstance(collate, functools.partial) and collate.func is collate_pairs
    assert "prefix sharing needs sdpa or eager attention" in caplog.text
    monkeypatch.undo()
    assert loop.batch_layout(config, model, pad_token_id=0).func is collate_shared_prefix
