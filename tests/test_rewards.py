"""Rewards, verifiers, judges and InfAlign calibration (alignkit.models.rewards)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from alignkit.models.rewards import (CachedReward, CalibratedReward, Direction, EmpiricalCDF, ExactMatch,
                                     ForbiddenWords, InstructionChecks, JsonSchema, JsonValid, LLMJudge, MaxChars,
                                     MaxWords, MinWords, PairwiseJudge, Refusal, RegexMatch, RequiredWords, Reward, WeightedSum,
                                     best_of_n_transform, exponential, signed_exponential,
                                     worst_of_n_transform)
from alignkit.models.rewards.spec import reward_from_spec
from tests.conftest import tiny_llama


def one(reward: Reward, completion, prompt="p") -> float:
    return float(reward([prompt], [completion])[0])


def test_word_and_char_limits_edge_cases():
    assert one(MaxWords(2), "café crème") == 1.0
    assert one(MaxWords(2), "café crème brûlée") == 0.0
    assert one(MaxWords(2), "") == 0.0
    assert one(MinWords(3), "naïve café über") == 1.0
    assert one(MinWords(3), "naïve-café") == 0.0
    assert one(MinWords(0), "") == 1.0
    assert one(MaxChars(4), "café") == 1.0
    assert one(MaxChars(3), "café") == 0.0
    assert one(MaxChars(3), "   ") == 0.0


def test_required_and_forbidden_words_whole_word_unicode_and_case():
    assert one(RequiredWords(["café"]), "Un CAFÉ noir") == 1.0
    assert one(RequiredWords(["café"], case_sensitive=True), "Un CAFÉ noir") == 0.0
    assert one(RequiredWords(["cat"]), "a category") == 0.0
    assert one(RequiredWords(["cat", "dog"]), "cat only") == 0.0
    assert one(RequiredWords(["caf"]), "café") == 0.0
    assert one(ForbiddenWords(["cat"]), "a category") == 1.0
    assert one(ForbiddenWords(["cat"]), "the Cat.") == 0.0
    assert one(ForbiddenWords(["cat"]), "") == 1.0


def test_regex_anchors_and_must_match():
    assert one(RegexMatch(r"^\d+$"), "42") == 1.0
    assert one(RegexMatch(r"^\d+$"), "42 apples") == 0.0
    assert one(RegexMatch(r"\d+"), "42 apples") == 1.0
    assert one(RegexMatch(r"\d+", fullmatch=True), "42 apples") == 0.0
    assert one(RegexMatch(r"http", must_match=False), "no links") == 1.0
    assert one(RegexMatch(r"http", must_match=False), "see http://x") == 0.0
    assert one(RegexMatch(r"^\w+$"), "") == 0.0


def test_json_valid_and_schema():
    assert one(JsonValid(), '{"a": [1, {"b": null}]}') == 1.0
    assert one(JsonValid(), '```json\n{"a": 1}\n```') == 1.0
    assert one(JsonValid(), '{"a": 1') == 0.0
    assert one(JsonValid(), "") == 0.0
    schema = {"type": "object", "required": ["name", "tags"],
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                             "tags": {"type": "array", "items": {"type": "object", "required": ["k"],
                                                                  "properties": {"k": {"enum": ["x", "y"]}}}}}}
    check = JsonSchema(schema)
    assert one(check, '{"name": "Zoë", "age": 3, "tags": [{"k": "x"}, {"k": "y"}]}') == 1.0
    assert one(check, '{"name": "Zoë", "tags": [{"k": "z"}]}') == 0.0          # nested enum
    assert one(check, '{"name": "Zoë", "tags": [{}]}') == 0.0                  # nested required
    assert one(check, '{"name": "Zoë"}') == 0.0                                 # missing required
    assert one(check, '{"name": "Zoë", "age": "3", "tags": []}') == 0.0        # wrong type
    assert one(check, '{"name": "Zoë", "age": true, "tags": []}') == 0.0       # bool is not integer
    assert one(check, '[1, 2]') == 0.0
    assert one(check, 'not json') == 0.0


def test_exact_match_near_misses_and_final_answer_formats():
    match = ExactMatch({"q": "42"})
    assert one(match, "42", "q") == 1.0
    assert one(match, "  42. ", "q") == 1.0
    assert one(match, "41", "q") == 0.0
    assert one(match, "420", "q") == 0.0
    assert one(match, "The sum is 6*7.\n#### 42", "q") == 1.0
    assert one(match, "#### 41", "q") == 0.0
    assert one(match, r"so \boxed{42}.", "q") == 1.0
    assert one(match, "", "q") == 0.0
    assert one(ExactMatch({"q": "42"}, final_answer=False), "#### 42", "q") == 0.0
    assert one(ExactMatch({"q": "Paris"}), "  paris!", "q") == 1.0
    assert one(ExactMatch({"q": "Paris"}, normalize=False), "paris", "q") == 0.0
    assert one(ExactMatch({"q": "He paid 6*7 = 42\n#### 42"}), "42", "q") == 1.0
    assert one(ExactMatch({"q": r"\frac{1}{2}"}), r"\boxed{\frac{1}{2}}", "q") == 1.0
    messages = [{"role": "user", "content": "q"}]
    assert one(match, [{"role": "assistant", "content": "42"}], messages) == 1.0
    with pytest.raises(KeyError):
        one(match, "42", "unknown")


def test_refusal_and_message_lists():
    assert one(Refusal(), "I’m sorry, I can’t help with that.") == 1.0
    assert one(Refusal(), "Sure, here is a poem.") == 0.0
    assert one(Refusal(), "") == 0.0
    assert one(Refusal(), [{"role": "assistant", "content": "I cannot do that."}]) == 1.0


class Counting(Reward):
    """Vector reward (length, number of 'a') that records every batch it is asked to score."""

    attributes = ("length", "a_count")

    def __init__(self):
        self.batches = []

    def score(self, prompts, completions):
        self.batches.append(list(completions))
        return torch.tensor([[float(len(str(c))), float(str(c).count("a"))] for c in completions])


def test_cached_reward_scores_only_misses_and_keeps_order():
    inner = Counting()
    cached = CachedReward(inner)
    first = cached(["p", "p"], ["aa", "b"])
    again = cached(["p", "p"], ["aa", "b"])
    assert len(inner.batches) == 1 and torch.equal(first, again)
    mixed = cached(["p", "p", "p", "q"], ["ccc", "aa", "ccc", "aa"])
    assert inner.batches[1] == ["ccc", "aa"]   # only the misses, each once ("aa" under prompt q is new)
    assert mixed.tolist() == [[3, 0], [2, 2], [3, 0], [2, 2]]
    msg = [{"role": "user", "content": "hi"}]
    cached([msg], ["x"])
    cached([[{"content": "hi", "role": "user"}]], ["x"])
    assert len(inner.batches) == 3


def test_weighted_sum_and_direction_match_hand_computation():
    lengths = Direction(Counting(), [1.0, 0.0])
    a_count = Direction(Counting(), {"a_count": 2.0})
    total = WeightedSum([lengths, a_count], [0.5, -2.0])
    assert total(["p", "p"], ["aab", "c"]).tolist() == pytest.approx([0.5 * 3 - 2 * 2, 0.5 * 1])
    direction = Direction(Counting(), [3.0, 4.0])
    assert direction(["p"], ["aab"]).tolist() == pytest.approx([(3 * 3 + 4 * 2) / 5])
    with pytest.raises(ValueError):
        Direction(Counting(), [1.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        Direction(Counting(), {"helpfulness": 1.0})
    with pytest.raises(ValueError):
        Direction(MaxWords(3), [1.0])
    with pytest.raises(ValueError):
        WeightedSum([Counting()], [1.0])


@pytest.fixture()
def judge_parts(smol_tokenizer):
    model = tiny_llama(vocab_size=len(smol_tokenizer), pad_token_id=smol_tokenizer.pad_token_id, seed=3)
    return model, smol_tokenizer


PROMPTS = ["What colour is the sky?", [{"role": "user", "content": "2+2?"}], "Say hi"]
COMPLETIONS = ["Blue.", [{"role": "assistant", "content": "It is four, I think, but maybe five."}], "hi"]


def test_llm_judge_within_scale_batch_invariant_and_template_used(judge_parts):
    model, tokenizer = judge_parts
    judge = LLMJudge(model, tokenizer, scale=(1, 10), batch_size=3)
    batch = judge(PROMPTS, COMPLETIONS)
    assert batch.shape == (3,) and bool(((batch >= 1) & (batch <= 10)).all())
    singles = torch.cat([judge([p], [c]) for p, c in zip(PROMPTS, COMPLETIONS)])
    torch.testing.assert_close(batch, singles, atol=1e-4, rtol=0)
    dist = judge.distribution(PROMPTS, COMPLETIONS)
    torch.testing.assert_close(dist.sum(-1), torch.ones(3))
    assert "[Response]\nBlue." in judge.prompt_for(PROMPTS[0], COMPLETIONS[0])
    other = LLMJudge(model, tokenizer, template="Grade {completion} for {prompt} ({lo}-{hi})", scale=(1, 10))
    assert other.prompt_for("x", "y").count("Grade y for x (1-10)") == 1
    assert not torch.allclose(other(PROMPTS, COMPLETIONS), batch)
    small = LLMJudge(model, tokenizer, scale=(1, 5))                   # single-token fast path
    assert bool(((small(PROMPTS, COMPLETIONS) >= 1) & (small(PROMPTS, COMPLETIONS) <= 5)).all())


def test_pairwise_judge_is_symmetric_and_batched(judge_parts):
    model, tokenizer = judge_parts
    judge = PairwiseJudge(model, tokenizer)
    firsts, seconds = COMPLETIONS, ["Green.", "5", "hello there"]
    p = judge(PROMPTS, firsts, seconds)
    swapped = judge(PROMPTS, seconds, firsts)
    assert p.shape == (3,) and bool(((p > 0) & (p < 1)).all())
    torch.testing.assert_close(p + swapped, torch.ones(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(p, torch.cat([judge([a], [b], [c]) for a, b, c in zip(PROMPTS, firsts, seconds)]),
                               atol=1e-4, rtol=0)
    raw = judge.one_order(PROMPTS, firsts, seconds)
    assert not torch.allclose(raw, p)                                  # the order average changes something


def test_calibration_mid_rule_is_uniform_on_reference_and_monotone():
    n = 8
    reference = [0.3 * i - 1.0 for i in range(n)][::-1]
    cdf = EmpiricalCDF().fit({"x": reference, "y": [5.0, 5.0]})
    u = cdf.calibrate(["x"] * n, reference)
    assert float(u.mean()) == pytest.approx(0.5)
    assert float(u.min()) == pytest.approx(1 / (2 * n)) and float(u.max()) == pytest.approx(1 - 1 / (2 * n))
    grid = torch.linspace(-3, 3, 50)
    curve = cdf.calibrate(["x"] * 50, grid)
    assert bool((curve[1:] >= curve[:-1]).all()) and curve[0] == 0 and curve[-1] == 1
    assert cdf.calibrate(["y", "y", "y"], [4.0, 5.0, 6.0]).tolist() == [0.0, 0.5, 1.0]
    right = EmpiricalCDF(tie="right").fit({"y": [5.0, 5.0, 7.0]})
    assert right.calibrate(["y"], [5.0]).tolist() == pytest.approx([2 / 3])
    with pytest.raises(KeyError):
        cdf.calibrate(["unseen"], [0.0])
    assert EmpiricalCDF(unseen="constant").fit({"x": [1.0]}).calibrate(["z"], [9.0]).tolist() == [0.5]
    assert EmpiricalCDF(unseen="pooled").fit({"x": [1.0], "y": [3.0]}).calibrate(["z"], [2.0]).tolist() == [0.5]


def test_transforms_and_calibrated_reward():
    u = torch.tensor([0.0, 0.5, 1.0])
    assert best_of_n_transform(u, 3).tolist() == pytest.approx([0.0, 0.125, 1.0])
    assert worst_of_n_transform(u, 3).tolist() == pytest.approx([0.0, 0.875, 1.0])
    assert exponential(u, 2.0).tolist() == pytest.approx([1.0, math.e, math.e ** 2])
    assert signed_exponential(u, -2.0).tolist() == pytest.approx([-1.0, -math.exp(-1.0), -math.exp(-2.0)])
    words = CalibratedReward(WeightedSum([MinWords(2), MaxWords(1)], [1.0, 0.0]),
                             EmpiricalCDF().fit({"p": [0.0, 0.0, 1.0, 1.0]}), lambda v: best_of_n_transform(v, 2))
    assert words(["p", "p"], ["one", "two words"]).tolist() == pytest.approx([0.25 ** 2, 0.75 ** 2])


def test_sequence_classifier_reward_scalar_and_named_attributes(tmp_path, smol_tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignkit.models.rewards.classifier import SequenceClassifierReward

    def save(labels: int, name: str):
        config = LlamaConfig(vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                             num_attention_heads=4, num_key_value_heads=2, num_labels=labels,
                             pad_token_id=smol_tokenizer.pad_token_id,
                             id2label={i: n for i, n in enumerate(["helpfulness", "verbosity"][:labels])})
        torch.manual_seed(0)
        LlamaForSequenceClassification(config).save_pretrained(tmp_path / name)
        smol_tokenizer.save_pretrained(tmp_path / name)
        return SequenceClassifierReward(str(tmp_path / name), batch_size=2)

    scalar = save(1, "rm1")
    scores = scalar(PROMPTS[1:2] * 3, [COMPLETIONS[1], [{"role": "assistant", "content": "4"}], COMPLETIONS[1]])
    assert scores.shape == (3,) and scalar.attributes == ()
    torch.testing.assert_close(scores[0], scores[2])
    single = scalar(PROMPTS[1:2], [[{"role": "assistant", "content": "4"}]])
    torch.testing.assert_close(scores[1:2], single, atol=1e-5, rtol=0)
    vector = save(2, "rm2")
    assert vector.attributes == ("helpfulness", "verbosity")
    out = vector(["a", "b"], [" x", " y y"])
    assert out.shape == (2, 2)
    assert Direction(vector, {"verbosity": 1.0})(["a", "b"], [" x", " y y"]).tolist() == pytest.approx(out[:, 1].tolist())


def test_instruction_checks_score_each_prompt_by_its_own_check(tmp_path):
    rows = [{"prompt": [{"role": "user", "content": "Say hi in 2 words."}], "check": {"type": "max_words", "n": 2}},
            {"prompt": "No commas please.", "check": {"type": "no_commas"}}]
    path = tmp_path / "checks.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    reward = reward_from_spec(f"verifier:checks={path}")
    prompts = [rows[0]["prompt"], rows[1]["prompt"], rows[0]["prompt"], rows[1]["prompt"]]
    completions = ["Hi there", "Yes I will", "Hi there friend", "Yes, I will"]
    assert reward(prompts, completions).tolist() == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(KeyError, match="no instruction check"):
        InstructionChecks(rows)(["unknown prompt"], ["x"])


def test_word_count_and_helpful_checks(tmp_path):
    assert reward_from_spec("verifier:words").score(["p", "p"], ["one two  three", ""]).tolist() == [3.0, 0.0]
    rows = [{"prompt": "Describe a circus. Answer in at most 8 words.", "check": {"type": "max_words", "n": 8}},
            {"prompt": "Explain rain.", "check": {"type": "max_words", "n": 20}, "topic": "Why clouds fall"}]
    path = tmp_path / "checks.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    helpful = reward_from_spec(f"verifier:helpful={path}")
    prompts = [rows[0]["prompt"]] * 3 + [rows[1]["prompt"]] * 2
    answers = ["A circus has clowns and tents.",  # passes, on topic (the first sentence: "circus")
               "A circus has clowns, tents, lions, music and acrobats.",  # on topic, too long: fails its check
               "Tents and clowns everywhere.",  # short, but off the topic "Describe a circus."
               "Clouds fall as drops of water.",  # on the row's own topic
               "Rain is water."]  # passes max_words but shares no stem with "Why clouds fall"
    assert helpful.score(prompts, answers).tolist() == [1.0, 0.0, 0.0, 1.0, 0.0]
