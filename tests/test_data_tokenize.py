"""Tokenizing preference pairs (SmolLM2 tokenizer), the over-long policy, fingerprints and collation."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from alignkit.data import (
    DataError,
    Example,
    TokenizedExample,
    TruncationConfig,
    collate_rows,
    load_examples,
    template_fingerprint,
    tokenize_examples,
)

CONVERSATIONS = [
    {
        "prompt": [{"role": "user", "content": "What colour is the sky?"}],
        "chosen": [{"role": "assistant", "content": "Blue, on a clear day."}],
        "rejected": [{"role": "assistant", "content": "Green."}],
    },
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"}],
        "chosen": [{"role": "assistant", "content": "Goodbye!"}],
        "rejected": [{"role": "assistant", "content": "No."}],
    },
]
TEXTS = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green and purple."},
    {"prompt": "Two plus two is", "chosen": " four.", "rejected": " five."},
]


def render(tokenizer, messages, generation_prompt=False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def test_conversational_ids_decode_to_the_template(smol_tokenizer):
    examples = load_examples(CONVERSATIONS, "preference")
    pairs, report = tokenize_examples(examples, smol_tokenizer, TruncationConfig())
    assert report.total == 2 and not report.changed
    for row, pair in zip(CONVERSATIONS, pairs):
        for field, ids in (("chosen", pair.slot("chosen")[0]), ("rejected", pair.slot("rejected")[0])):
            full = smol_tokenizer.decode(pair.prompt_ids + ids)
            assert full == render(smol_tokenizer, row["prompt"] + row[field])
        assert smol_tokenizer.decode(pair.prompt_ids) == render(smol_tokenizer, row["prompt"], True)
        assert smol_tokenizer.decode(pair.slot("chosen")[0]).startswith(row["chosen"][0]["content"])
    assert [pair.index for pair in pairs] == [0, 1]


def test_standard_text_ids(smol_tokenizer):
    pairs, _ = tokenize_examples(load_examples(TEXTS, "preference"), smol_tokenizer, TruncationConfig())
    eos = smol_tokenizer.eos_token_id
    for row, pair in zip(TEXTS, pairs):
        assert list(pair.prompt_ids) == smol_tokenizer(row["prompt"])["input_ids"]
        assert pair.slot("chosen")[0][-1] == eos and pair.slot("rejected")[0][-1] == eos
        assert smol_tokenizer.decode(pair.slot("chosen")[0][:-1]) == row["chosen"]
        assert smol_tokenizer.decode(pair.slot("rejected")[0][:-1]) == row["rejected"]


def test_conversational_data_needs_a_chat_template(smol_tokenizer):
    smol_tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        tokenize_examples(load_examples(CONVERSATIONS, "preference"), smol_tokenizer, TruncationConfig())


def test_template_that_is_not_prefix_stable_is_reported_per_row(smol_tokenizer):
    # A template that renders a lone prompt differently from the prompt inside a full conversation.
    smol_tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}[generation]{% endif %}")
    with pytest.raises(DataError) as caught:
        tokenize_examples(load_examples(CONVERSATIONS, "preference"), smol_tokenizer, TruncationConfig())
    assert caught.value.problems[0].startswith("dataset, row 1, field 'chosen': the chat template is not prefix-stable")
    assert len(caught.value.problems) == 2


def test_empty_standard_prompt_without_bos_is_an_error(smol_tokenizer):
    examples = load_examples([{"prompt": "", "chosen": "a", "rejected": "b"}], "preference")
    with pytest.raises(DataError, match=r"dataset, row 1, field 'prompt': the prompt is empty.*no BOS"):
        tokenize_examples(examples, smol_tokenizer, TruncationConfig())


def test_empty_standard_prompt_is_fine_when_the_tokenizer_adds_bos(smol_tokenizer):
    from tokenizers.processors import TemplateProcessing

    bos = smol_tokenizer.bos_token
    smol_tokenizer._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, smol_tokenizer.bos_token_id)])
    examples = load_examples([{"prompt": "", "chosen": "a", "rejected": "b"}], "preference")
    (pair,), _ = tokenize_examples(examples, smol_tokenizer, TruncationConfig())
    assert pair.prompt_ids == (smol_tokenizer.bos_token_id,)
    assert pair.slot("chosen")[0] == (*smol_tokenizer("a", add_special_tokens=False)["input_ids"], smol_tokenizer.eos_token_id)


def long_example(prompt_words: int, completion_words: int) -> Example:
    prompt = " ".join(f"p{i}" for i in range(prompt_words))
    return Example.pair(prompt=prompt, chosen=" " + " ".join(["yes"] * completion_words),
                             rejected=" no", where=f"dataset, row {prompt_words}")


def test_truncate_prompt_keeps_last_prompt_tokens_and_fits(smol_tokenizer, caplog):
    examples = [long_example(200, 5), long_example(5, 5), long_example(30, 20)]
    full, _ = tokenize_examples(examples, smol_tokenizer, TruncationConfig(max_length=10_000, max_prompt_length=9_999))
    config = TruncationConfig(max_length=40, max_prompt_length=30)
    with caplog.at_level(logging.WARNING, logger="alignkit.data"):
        pairs, report = tokenize_examples(examples, smol_tokenizer, config)
    assert (report.prompts_truncated, report.completions_truncated, report.dropped, report.total) == (2, 0, 0, 3)
    for before, after in zip(full, pairs):
        assert len(after.prompt_ids) <= 30
        assert len(after.prompt_ids) + max(len(after.slot("chosen")[0]), len(after.slot("rejected")[0])) <= 40
        assert after.prompt_ids == before.prompt_ids[len(before.prompt_ids) - len(after.prompt_ids):]
        assert (after.slot("chosen")[0], after.slot("rejected")[0]) == (before.slot("chosen")[0], before.slot("rejected")[0])
    assert pairs[1] == full[1]
    assert len(pairs[0].prompt_ids) == 30  # limited by max_prompt_length
    assert len(pairs[2].prompt_ids) == 40 - len(full[2].slot("chosen")[0])  # limited by max_length
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and report.summary() in warnings[0].getMessage()


def test_completion_longer_than_max_length_is_cut_from_the_right(smol_tokenizer):
    examples = [long_example(50, 100)]
    (full,), _ = tokenize_examples(examples, smol_tokenizer, TruncationConfig(max_length=1000, max_prompt_length=999))
    (pair,), report = tokenize_examples(examples, smol_tokenizer, TruncationConfig(max_length=60, max_prompt_length=20))
    assert report.prompts_truncated == 1 and report.completions_truncated == 1
    assert pair.prompt_ids == full.prompt_ids[-20:]
    assert pair.slot("chosen")[0] == full.slot("chosen")[0][:40]
    assert pair.slot("rejected")[0] == full.slot("rejected")[0]  # short enough already


def test_drop_policy_counts_and_logs_once(smol_tokenizer, caplog):
    examples = [long_example(5, 3), long_example(200, 3), long_example(6, 3), long_example(3, 300)]
    config = TruncationConfig(max_length=64, max_prompt_length=32, overlong="drop")
    with caplog.at_level(logging.WARNING, logger="alignkit.data"):
        pairs, report = tokenize_examples(examples, smol_tokenizer, config)
    assert [pair.index for pair in pairs] == [0, 2]
    assert (report.dropped, report.prompts_truncated, report.completions_truncated, report.total) == (2, 0, 0, 4)
    assert "2 dropped" in report.summary() and "of 4 examples" in report.summary()
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_nothing_logged_when_everything_fits(smol_tokenizer, caplog):
    with caplog.at_level(logging.WARNING, logger="alignkit.data"):
        tokenize_examples(load_examples(TEXTS, "preference"), smol_tokenizer, TruncationConfig())
    assert not caplog.records


def test_truncation_config_is_validated():
    with pytest.raises(ValueError):
        TruncationConfig(max_length=10, max_prompt_length=10)
    with pytest.raises(ValueError):
        TruncationConfig(overlong="keep")


def test_template_fingerprint_is_stable_and_sensitive(smol_tokenizer):
    first = template_fingerprint(smol_tokenizer)
    assert first == template_fingerprint(copy.deepcopy(smol_tokenizer))
    assert len(first) == 64 and int(first, 16) >= 0
    changed = copy.deepcopy(smol_tokenizer)
    changed.chat_template = smol_tokenizer.chat_template + " "
    assert template_fingerprint(changed) != first
    added = copy.deepcopy(smol_tokenizer)
    added.add_special_tokens({"additional_special_tokens": ["<|new|>"]})
    assert template_fingerprint(added) != first


def test_collate_layout_and_masks():
    pairs = [TokenizedExample.pair((5, 6), (7,), (8, 9, 10), index=4, where="a"),
             TokenizedExample.pair((11,), (12, 13, 14, 15), (16,), index=9, where="b")]
    batch = collate_rows(pairs, pad_token_id=0)
    assert batch["input_ids"].tolist() == [
        [5, 6, 7, 0, 0],
        [11, 12, 13, 14, 15],
        [5, 6, 8, 9, 10],
        [11, 16, 0, 0, 0],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1] * 5, [1] * 5, [1, 1, 0, 0, 0]]
    assert batch["completion_mask"].tolist() == [
        [False, False, True, False, False],
        [False, True, True, True, True],
        [False, False, True, True, True],
        [False, True, False, False, False],
    ]
    assert batch["index"].tolist() == [4, 9]
    assert batch["input_ids"].dtype == torch.long and batch["completion_mask"].dtype == torch.bool


def test_collate_real_pairs(smol_tokenizer):
    examples = load_examples(CONVERSATIONS, "preference") + load_examples(TEXTS, "preference")  # one kind per load
    pairs, _ = tokenize_examples(examples, smol_tokenizer, TruncationConfig())
    pad = smol_tokenizer.pad_token_id
    batch = collate_rows(pairs, pad_token_id=pad)
    count = len(pairs)
    completions = [p.slot("chosen")[0] for p in pairs] + [p.slot("rejected")[0] for p in pairs]
    prompts = [p.prompt_ids for p in pairs] * 2
    assert batch["completion_mask"].sum(dim=1).tolist() == [len(c) for c in completions]
    assert not batch["completion_mask"][:, 0].any()
    for row, (prompt, completion) in enumerate(zip(prompts, completions)):
        length = len(prompt) + len(completion)
        assert batch["input_ids"][row, :length].tolist() == list(prompt + completion)
        assert (batch["input_ids"][row, length:] == pad).all()
        assert batch["attention_mask"][row].sum().item() == length
        assert batch["input_ids"][row][batch["completion_mask"][row]].tolist() == list(completion)
    assert batch["input_ids"].shape[0] == 2 * count
