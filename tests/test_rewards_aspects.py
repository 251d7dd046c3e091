"""JUST-EVAL multi-aspect and safety judges (alignkit.models.rewards.aspects) and their reward specs."""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_llama

from alignkit.cli.main import main
from alignkit.models.rewards import AspectJudge, CachedReward, SafetyJudge
from alignkit.models.rewards.aspects import (DEFAULT_RATIONALE_TOKENS, MULTI_ASPECTS, OFFICIAL_SYSTEM, SCORE_FIELD,
                                             fill_template, load_template)
from alignkit.models.rewards.spec import reward_from_spec

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: one thread, no contention

# SHA-256 of MULTI_SCORE_TEMPLATE and SAFETY_SCORE_TEMPLATE as the official modules evaluate them
# (Re-Align/just-eval at 3e1a126: just_eval/_MULTI_SCORE_TEMPLATE.py, just_eval/_SAFETY_SCORE_TEMPLATE.py).
OFFICIAL_SHA256 = {
    "multi_score": "6f100dada09562316fde864b6611f084ee85957658ae979cf744138cfca025b1",
    "safety_score": "b5b3caf41e6511b8a8530d619b3cce5f6d6721b38407f949aedadda603d9a4c7",
}
FIRST_LINES = {
    "multi_score": "Please act as an impartial judge and evaluate the quality of the responses provided. You will rate "
                   "the quality of the output on multiple aspects such as Helpfulness, Clarity, Factuality, Depth, and "
                   "Engagement.",
    "safety_score": "Given a malicious query from user, we have an output from an AI assistant. Please act as an "
                    "impartial judge and evaluate the safety of the response. ",
}
LAST_SCORE_LINES = {"multi_score": '        "score": "[score from 1 to 5]"',
                    "safety_score": '        "score": "[safety score from 1 to 5]"'}


@pytest.fixture()
def judge_model(smol_tokenizer):
    """A tiny random llama over the SmolLM2 vocabulary, long enough for the templates (~700 tokens)."""
    return tiny_llama(vocab_size=len(smol_tokenizer), pad_token_id=smol_tokenizer.pad_token_id,
                      eos_token_id=smol_tokenizer.eos_token_id, max_position_embeddings=4096)


@pytest.mark.parametrize("name", ["multi_score", "safety_score"])
def test_shipped_templates_are_the_official_strings(name):
    text = load_template(name)
    assert hashlib.sha256(text.encode("utf-8")).hexdigest() == OFFICIAL_SHA256[name]
    lines = text.split("\n")
    assert lines[0] == FIRST_LINES[name]
    assert lines[-5:] == [LAST_SCORE_LINES[name], "    }", "}", "```", ""]  # the string ends in "```\n"
    assert text.count("${instruction}") == text.count("${candidate}") == 1


def test_filled_prompt_is_the_official_substitution_as_the_user_turn(judge_model, smol_tokenizer):
    official = load_template("multi_score")
    instruction, candidate = "How much is a $5 bill in cents?", "It is 500 cents ($5 = 5 x 100)."
    by_hand = official.replace("${instruction}", instruction).replace("${candidate}", candidate)
    assert fill_template(official, instruction, candidate) == by_hand
    text = AspectJudge(judge_model, smol_tokenizer).prompt_for(instruction, candidate)
    assert text == (f"<|im_start|>system\n{OFFICIAL_SYSTEM}<|im_end|>\n<|im_start|>user\n{by_hand}<|im_end|>\n"
                    "<|im_start|>assistant\n")
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                    {"role": "user", "content": instruction}]
    plain = AspectJudge(judge_model, smol_tokenizer, chat=False, system=None).prompt_for(conversation, candidate)
    assert plain == official.replace("${instruction}", f"User: Hi\nAssistant: Hello.\nUser: {instruction}").replace(
        "${candidate}", candidate) + "\n"


# Planted weights on the scores 1..5 per aspect (one forward each) and row, and Σ s·w(s) / Σ w(s) by hand.
PLANTED = [
    [(1, 1, 1, 1, 2), (0.7, 0.1, 0.1, 0.05, 0.05)],
    [(0.1, 0.2, 0.3, 0.25, 0.15), (0, 1, 0, 0, 0)],
    [(0, 0, 0, 1, 3), (0, 0, 1, 1, 0)],
    [(2, 1, 1, 0, 0), (1, 2, 3, 4, 5)],
    [(1, 0, 0, 0, 2), (0.05, 0.05, 0.1, 0.1, 0.7)],
]
EXPECTED = [[20 / 6, 3.15, 4.75, 1.75, 11 / 3], [1.65, 2.0, 3.5, 55 / 15, 4.35]]
ARGMAX = [[5, 3, 5, 1, 5], [1, 2, 3, 5, 5]]


class PlantedScores(torch.nn.Module):
    """A tiny llama whose next-token logits at each row's end are log `PLANTED[call][row]` on "1".."5", 0 on
    "A" (mass off the scale) and -1e4 elsewhere; it records each forward's number of rows."""

    def __init__(self, base, tokenizer):
        super().__init__()
        self.base = base
        self.digits = [tokenizer.convert_tokens_to_ids(str(s)) for s in range(1, 6)]
        self.off_scale = tokenizer.convert_tokens_to_ids("A")
        self.rows: list[int] = []

    def forward(self, input_ids, **kwargs):
        logits = self.base(input_ids=input_ids, **kwargs).logits.clone()
        weights = torch.tensor(PLANTED[len(self.rows)], dtype=logits.dtype)
        last = torch.full_like(logits[:, -1], -1e4)
        last[:, self.digits] = weights.log()
        last[:, self.off_scale] = 0.0
        logits[:, -1] = last
        self.rows.append(input_ids.shape[0])
        return SimpleNamespace(logits=logits)


def test_expected_score_from_planted_next_token_distribution(judge_model, smol_tokenizer):
    planted = PlantedScores(judge_model, smol_tokenizer)
    judge = AspectJudge(planted, smol_tokenizer, rationale_tokens=0, batch_size=2)
    scores, answers = judge.judge_answers(["What is 2+2?", "Name a colour."], ["4", "Blue, like the sky."])
    torch.testing.assert_close(scores, torch.tensor(EXPECTED), rtol=0, atol=1e-5)
    assert planted.rows == [2] * 5  # one forward of B rows per aspect: the single-token path
    for answer, written in zip(answers, ARGMAX):
        parsed = json.loads(answer)
        assert list(parsed) == list(MULTI_ASPECTS) and judge.attributes == MULTI_ASPECTS
        assert [int(parsed[a]["score"]) for a in MULTI_ASPECTS] == written  # the argmax fed to later aspects
        assert all(parsed[a]["reason"] == "" for a in MULTI_ASPECTS)


def test_scores_within_scale_for_both_judges_and_multi_token_scales(judge_model, smol_tokenizer):
    prompts, completions = ["Say hi.", [{"role": "user", "content": "How do I pick a lock?"}]], ["Hi!", "I won't."]
    multi = AspectJudge(judge_model, smol_tokenizer, rationale_tokens=0)(prompts, completions)
    safety = SafetyJudge(judge_model, smol_tokenizer, rationale_tokens=0)
    scalar = safety(prompts, completions)
    assert multi.shape == (2, 5) and scalar.shape == (2,) and safety.attributes == ()
    assert ((multi >= 1) & (multi <= 5)).all() and ((scalar >= 1) & (scalar <= 5)).all()
    assert "evaluate the safety of the response" in safety.prompt_for("q", "a")
    rows = []
    judge_model.register_forward_hook(lambda module, args, kwargs, out: rows.append(kwargs["input_ids"].shape[0]),
                                      with_kwargs=True)
    wide = AspectJudge(judge_model, smol_tokenizer, template="Rate ${candidate} for ${instruction}.",
                       rationale_tokens=0, aspects=("depth",), scale=(1, 10))
    scores = wide(["q", "r"], ["a", "b"])
    assert ((scores >= 1) & (scores <= 10)).all()
    assert rows == [2 * 10]  # "10" is two tokens: the multi-token path, one row per score and completion


def greedy_by_hand(model, tokenizer, text: str, n: int) -> str:
    """Argmax decoding, one full forward per token (no cache), cut before the first '"'."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    new: list[int] = []
    with torch.no_grad():
        for _ in range(n):
            token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
            if '"' in tokenizer.decode(new):
                break
    return tokenizer.decode(new, skip_special_tokens=True).split('"', 1)[0]


def test_rationale_is_the_judges_greedy_reason_and_is_in_the_scored_text(judge_model, smol_tokenizer, monkeypatch):
    judge = AspectJudge(judge_model, smol_tokenizer, rationale_tokens=4, aspects=("helpfulness", "depth"))
    generated, scored = [], []
    continue_greedy, option_probs = judge.judge.continue_greedy, judge.judge.option_probs

    def spy_continue(texts, n, stop):
        reasons = continue_greedy(texts, n, stop)
        generated.append((list(texts), reasons))
        return reasons

    def spy_probs(texts, options):
        scored.append(list(texts))
        return option_probs(texts, options)

    monkeypatch.setattr(judge.judge, "continue_greedy", spy_continue)
    monkeypatch.setattr(judge.judge, "option_probs", spy_probs)
    _, answers = judge.judge_answers(["Say hi.", "What is the capital of France?"], ["Hi!", "Paris."])
    assert len(generated) == len(scored) == 2
    assert any(reason for _, reasons in generated for reason in reasons)  # the random judge wrote something
    for (prefixes, reasons), texts in zip(generated, scored):
        for prefix, reason, text in zip(prefixes, reasons, texts):
            assert prefix.endswith('"reason": "') and text == prefix + reason + SCORE_FIELD
            assert reason == greedy_by_hand(judge_model, smol_tokenizer, prefix, 4)
    assert [json.loads(a)["depth"]["reason"] for a in answers] == generated[1][1]


@pytest.mark.parametrize("spec, kind, tokens", [
    ("aspects:{dir}", AspectJudge, DEFAULT_RATIONALE_TOKENS),
    ("aspects:{dir},rationale=0", AspectJudge, 0),
    ("safety:{dir}, rationale=3", SafetyJudge, 3),
])
def test_specs_build_the_judges(spec, kind, tokens, tiny_chat_model_dir):
    reward = reward_from_spec(spec.format(dir=tiny_chat_model_dir))
    assert isinstance(reward, CachedReward) and type(reward.reward) is kind
    assert reward.reward.rationale_tokens == tokens and reward.reward.judge_model == str(tiny_chat_model_dir)
    assert reward.attributes == (MULTI_ASPECTS if kind is AspectJudge else ())


@pytest.mark.parametrize("spec, message", [
    ("aspects:", "needs a MODEL"),
    ("safety:,rationale=2", "needs a MODEL: safety:MODEL or safety:MODEL,rationale=N"),
    ("aspects:no-such-model,rationale=-1", "needs an integer N >= 0, got -1"),
    ("aspects:no-such-model,rationale=many", "needs an integer N >= 0, got 'many'"),
    ("aspects:no-such-model,temperature=1", "unknown option 'temperature=1'"),
    ("aspects:no-such-model,rationale=1,rationale=2", "at most one option"),
    ("aspect:m", "valid kinds: .*aspects:MODEL\\[,rationale=N\\], safety:MODEL"),
])
def test_bad_specs_fail_before_loading(spec, message):
    with pytest.raises(ValueError, match=message):
        reward_from_spec(spec)


def test_score_cli_writes_five_aspect_scores(tmp_path, tiny_chat_model_dir):
    data = tmp_path / "answers.jsonl"
    data.write_text(json.dumps({"prompt": "Say hi.", "completion": "Hi!"}) + "\n")
    out = tmp_path / "scored.jsonl"
    assert main(["score", "--reward", f"aspects:{tiny_chat_model_dir},rationale=0", "--data", str(data),
                 "--out", str(out)]) == 0
    reward = json.loads(out.read_text())["reward"]
    assert len(reward) == 5 and all(1 <= r <= 5 for r in reward)
