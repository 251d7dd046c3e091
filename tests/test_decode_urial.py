"""URIAL: verbatim prompt files, the FastChat `urial_backticks` assembly, the cached-prefix path against the
plain path, and stop-string cutting / post-processing."""

from __future__ import annotations

import hashlib
import importlib

import pytest
import torch

from alignkit.decode.urial import (
    PROMPT_DIR,
    clear_output,
    cut_at_stop,
    load_urial_text,
    shared_prefix_length,
    tokens_until_stop,
    urial,
    urial_prompt,
)

from tests.conftest import tiny_llama

urial_module = importlib.import_module("alignkit.decode.urial")  # the package exports the function `urial`

# SHA-256 of the text returned for Re-Align/URIAL@4c4d740b urial_prompts/*.txt (UTF-8), computed once at copy time.
EXPECTED_SHA256 = {
    "inst_1k_v4.help.txt": "529f92cb3002791b4cce65e9f416707eac0086030c58347ae1115d770e7c52e3",
    "inst_1k_v4.txt": "06f0583a36b2d7aa2761a920a910e3c075453bebac52f7d798a458259e0c0780",
}
# decoding.md §1.2, the inst_1k_v4 system prompt quoted verbatim.
V4_SYSTEM_PROMPT = (
    "# Instruction\n\nBelow is a list of conversations between a human and an AI assistant (you). \n"
    "Users place their queries under \"# Query:\", and your responses are under  \"# Answer:\".\n"
    "You are a helpful, respectful, and honest assistant.\n"
    "You should always answer as helpfully as possible while ensuring safety.\n"
    "Your answers should be well-structured and provide detailed information. They should also have an engaging tone.\n"
    "Your responses must not contain any fake, harmful, unethical, racist, sexist, toxic, dangerous, or illegal "
    "content, even if it may be helpful.\n"
    "Your response must be socially responsible, and thus you can reject to answer some controversial topics."
)


@pytest.mark.parametrize("name", sorted(EXPECTED_SHA256))
def test_prompt_files_are_byte_exact(name):
    data = (PROMPT_DIR / name).read_bytes()
    assert hashlib.sha256(data).hexdigest() == EXPECTED_SHA256[name]


def test_prompt_files_hold_the_documented_text():
    v4, helpful = load_urial_text("inst_1k_v4"), load_urial_text("inst_1k_v4.help")
    assert v4.startswith(V4_SYSTEM_PROMPT + "\n\n# Query:\n```\n")
    for text in (v4, helpful):
        assert text.startswith("# Instruction\n\n")
        assert text.count("# Query:\n```\n") == 3 and text.count("# Answer:\n```\n") == 3
        assert "Please let me know if you have any other questions!" in text
        assert text.endswith("```")
    assert "I'm sorry to hear that. However, I cannot assist with that request." in helpful
    assert "Natalia sold clips" in v4
    with pytest.raises(ValueError, match="unknown URIAL prompt"):
        load_urial_text("inst_missing")


def test_urial_prompt_one_turn():
    expected = load_urial_text() + "\n# Query:\n```\nWhat is AI?\n```\n\n# Answer:\n```\n"
    assert urial_prompt(["What is AI?"]) == expected


def test_urial_prompt_two_turns():
    expected = (load_urial_text("inst_1k_v4") + "\n# Query:\n```\nHi\n```\n" + "\n# Answer:\n```\nHello!\n```\n"
                + "\n# Query:\n```\nBye\n```\n" + "\n# Answer:\n```\n")
    assert urial_prompt(["Hi", "Hello!", "Bye"], prompt="inst_1k_v4") == expected
    with pytest.raises(ValueError):
        urial_prompt(["Hi", "Hello!"])


def test_clear_output_and_stop_cut():
    text, stopped = cut_at_stop("```\nHello! <|endoftext|>Sure.\n```\n\n# Query:\n```\nnext\n# User x", ("# Query", "# User"))
    assert stopped and clear_output(text) == "Hello! Sure."
    assert cut_at_stop("no stop here", ("# Query",)) == ("no stop here", False)
    assert cut_at_stop("a # User b # Query c", ("# Query", "# User")) == ("a ", True)


def test_tokens_until_stop_matches_a_linear_scan(smol_tokenizer):
    ids = smol_tokenizer("Hi there\n```\n\n# Query:\n```\nmore text # User")["input_ids"]
    row = torch.tensor(ids + [smol_tokenizer.pad_token_id] * 3)
    expected = next(t for t in range(1, len(ids) + 1) if "# Query" in smol_tokenizer.decode(ids[:t]))
    assert tokens_until_stop(smol_tokenizer, row, ("# Query", "# User")) == expected < len(ids)
    eos_row = torch.tensor(ids[:2] + [smol_tokenizer.eos_token_id] + ids[2:])
    assert tokens_until_stop(smol_tokenizer, eos_row, ("# Query",)) == 3


def test_shared_prefix_length():
    assert shared_prefix_length([1, 2, 3], [[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([1, 2, 3], [[1, 2, 3, 4], [1, 2, 7, 6]]) == 2
    assert shared_prefix_length([1, 2, 3], [[1, 2, 3]]) == 2  # at least one token left to run


def _model(tokenizer):
    """Random model whose greedy output depends on the prompt (untied head, larger init)."""
    return tiny_llama(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
                      max_position_embeddings=2048, initializer_range=0.5)


def _recording_generate(model):
    """Record the new token ids of every `generate` call and the widths of every forward."""
    calls, widths = [], []
    original = model.generate

    def generate(*args, **kwargs):
        output = original(*args, **kwargs)
        calls.extend(output[:, kwargs["input_ids"].shape[1]:].tolist())
        return output
    model.generate = generate
    model.register_forward_pre_hook(
        lambda m, a, k: widths.append((k.get("input_ids") if "input_ids" in k else a[0]).shape[1]), with_kwargs=True)
    return calls, widths


PROMPTS = ["What is 2+2?", "Tell me a long story about a dragon and a knight, please.",
           [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"}]]


def test_cached_prefix_equals_plain_path(smol_tokenizer):
    model = _model(smol_tokenizer)
    calls, widths = _recording_generate(model)
    cached = urial(model, smol_tokenizer, PROMPTS, max_new_tokens=8, batch_size=2)
    cached_ids, cached_widths = list(calls), list(widths)
    calls.clear(), widths.clear()
    plain = urial(model, smol_tokenizer, PROMPTS, max_new_tokens=8, batch_size=1, use_prefix_cache=False)
    order = sorted(range(3), key=lambda i: len(smol_tokenizer(urial_prompt(urial_module.conversation_turns(PROMPTS[i])))["input_ids"]))
    assert [cached_ids[order.index(i)] for i in range(3)] == [calls[order.index(i)] for i in range(3)]
    assert len({tuple(ids) for ids in calls}) == 3  # the prompts matter, so a misaligned batch would show
    assert [c.text for c in cached] == [p.text for p in plain]
    prefix_tokens = len(smol_tokenizer(load_urial_text())["input_ids"])
    assert cached_widths[0] == prefix_tokens and cached_widths.count(prefix_tokens) == 1  # prefilled once
    assert max(cached_widths[1:]) < 100  # batches run only their suffixes
    assert all(w > prefix_tokens for w in widths if w > 1)  # the plain path runs every whole prompt
    assert cached[0].diagnostics["prefix_tokens"] == prefix_tokens and plain[0].diagnostics["prefix_tokens"] == 0
    assert cached[0].diagnostics["forward_passes"] == pytest.approx(1 / 3 + 8)


def test_merge_across_the_boundary_falls_back_to_the_common_prefix(smol_tokenizer, monkeypatch):
    # The real frame always starts the suffix with "\n#", which SmolLM2's pre-tokenizer never merges; a preamble
    # ending inside a word ("Hel" + "lo") makes the merge happen.
    preamble = "# Instruction\n\nSay Hel"
    monkeypatch.setattr(urial_module, "load_urial_text", lambda prompt="inst_1k_v4.help": preamble)
    monkeypatch.setattr(urial_module, "urial_prompt", lambda turns, prompt="inst_1k_v4.help": preamble + "lo " + turns[0])
    preamble_ids = smol_tokenizer(preamble)["input_ids"]
    assert smol_tokenizer(preamble + "lo Hi")["input_ids"][:len(preamble_ids)] != preamble_ids  # the case is real
    model = _model(smol_tokenizer)
    calls, _ = _recording_generate(model)
    cached = urial(model, smol_tokenizer, ["Hi", "Bye"], max_new_tokens=6)
    plain = urial(model, smol_tokenizer, ["Hi", "Bye"], max_new_tokens=6, use_prefix_cache=False)
    assert calls[:2] == calls[2:]
    assert 0 < cached[0].diagnostics["prefix_tokens"] < len(preamble_ids)
    assert [c.text for c in cached] == [p.text for p in plain]


def test_generation_stops_at_a_stop_string(smol_tokenizer):
    model = _model(smol_tokenizer)
    calls, _ = _recording_generate(model)
    free = urial(model, smol_tokenizer, ["Hi"], max_new_tokens=10, stop_strings=())[0]
    full_text = smol_tokenizer.decode(calls[0], skip_special_tokens=True)
    stop = smol_tokenizer.decode(calls[0][5:6])  # a piece of the text the model writes by itself
    assert stop.strip() and free.diagnostics["stopped_on_string"] == 0 and free.tokens == 10
    stopped = urial(model, smol_tokenizer, ["Hi"], max_new_tokens=10, stop_strings=(stop,))[0]
    assert stopped.diagnostics["stopped_on_string"] == 1
    assert stopped.text == clear_output(full_text[:full_text.find(stop)])
    assert stopped.tokens == next(t for t in range(1, 11) if stop in smol_tokenizer.decode(calls[0][:t]))
    assert len(calls[1]) <= 6 < 10  # generate itself stopped early


def test_chat_template_is_refused(smol_tokenizer):
    with pytest.raises(ValueError, match="chat template"):
        urial(_model(smol_tokenizer), smol_tokenizer, ["Hi"], chat_template=True)
