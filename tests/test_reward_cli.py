"""`reward_from_spec` and `alignkit score --reward` (raw, calibrated and transformed rewards)."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from alignkit.cli.main import main
from alignkit.models.rewards import (CachedReward, ForbiddenWords, JsonSchema, JsonValid, LLMJudge, MaxChars,
                                     MaxWords, MinWords, Refusal, RegexMatch, RequiredWords,
                                     SequenceClassifierReward)
from alignkit.models.rewards.spec import reward_from_spec


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: one thread, no contention


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("spec, kind, check", [
    ("verifier:max_words=10", MaxWords, lambda r: r.n == 10),
    ("verifier:min_words=2", MinWords, lambda r: r.n == 2),
    ("verifier:max_chars=80", MaxChars, lambda r: r.n == 80),
    ("verifier:required_words=cat, dog", RequiredWords, lambda r: r.check("a dog and a Cat") == 1.0
     and r.check("a dog") == 0.0),
    ("verifier:forbidden_words=bad", ForbiddenWords, lambda r: r.check("bad") == 0.0),
    ("verifier:json", JsonValid, lambda r: r.check('{"a": 1}') == 1.0),
    ("verifier:refusal", Refusal, lambda r: r.check("I'm sorry, I cannot") == 1.0),
    ("verifier:regex=^a=b:[0-9]+,$", RegexMatch, lambda r: r.check("a=b:12,") == 1.0 and r.check("a=b:,") == 0.0),
])
def test_verifier_specs(spec, kind, check):
    reward = reward_from_spec(spec)
    assert isinstance(reward, CachedReward) and isinstance(reward.reward, kind) and check(reward.reward)


def test_json_schema_spec(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["a"]}))
    reward = reward_from_spec(f"verifier:json_schema={schema}")
    assert isinstance(reward.reward, JsonSchema)
    assert reward(["p", "p"], ['{"a": 1}', '{"b": 1}']).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("spec, message", [
    ("bogus:x", "valid kinds: classifier:PATH, judge:MODEL, verifier:"),
    ("max_words=3", "valid kinds"),
    ("verifier:nope", "valid verifiers: verifier:max_words=N"),
    ("verifier:max_words", "needs a value"),
    ("verifier:max_words=many", "expected an integer"),
    ("verifier:json=1", "takes no value"),
    ("verifier:regex=(", "invalid regular expression"),
    ("classifier:", "needs a PATH"),
])
def test_bad_specs(spec, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        reward_from_spec(spec)


def test_model_specs(tmp_path, tiny_chat_model_dir, smol_tokenizer):
    judge = reward_from_spec(f"judge:{tiny_chat_model_dir}")
    assert isinstance(judge, CachedReward) and isinstance(judge.reward, LLMJudge)
    scores = judge(["Hi"], ["Hello."])
    assert 1 <= scores.item() <= 10
    folder = _classifier_dir(tmp_path, smol_tokenizer, 1)
    classifier = reward_from_spec(f"classifier:{folder}")
    assert isinstance(classifier.reward, SequenceClassifierReward) and classifier.attributes == ()


def _classifier_dir(tmp_path, tokenizer, num_labels):
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         num_labels=num_labels)
    torch.manual_seed(num_labels)
    folder = tmp_path / f"rm-{num_labels}"
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


ROWS = [
    {"id": 0, "prompt": "p1", "completion": "one two"},
    {"id": 1, "prompt": "p1", "completion": "one two three four"},
    {"id": 2, "prompt": "p2", "completion": "too many words here"},
    {"id": 3, "prompt": "p2", "completion": "yes"},
    {"id": 4, "prompt": [{"role": "user", "content": "p3"}], "completion": "hello there"},
]
REFERENCE = [  # the `alignkit sample` format
    {"prompt": "p1", "samples": ["a", "a b", "a b c d", "", "x y z w v"]},  # max_words=3: 1 1 0 0 0
    {"prompt": "p2", "samples": ["ok", "fine"]},  # 1 1
    {"prompt": [{"role": "user", "content": "p3"}],
     "samples": [[{"role": "assistant", "content": "hi"}], [{"role": "assistant", "content": "a b c d e"}]]},  # 1 0
]


def test_score_reward_verifier_writes_exact_values(tmp_path):
    data = _jsonl(tmp_path / "rows.jsonl", ROWS)
    before = data.read_bytes()
    out = tmp_path / "scored.jsonl"
    assert main(["score", "--reward", "verifier:max_words=3", "--data", str(data), "--out", str(out)]) == 0
    written = _read(out)
    assert [row["reward"] for row in written] == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert [{k: v for k, v in row.items() if k != "reward"} for row in written] == ROWS
    assert all("reward_calibrated" not in row for row in written)
    assert data.read_bytes() == before
    assert main(["score", "--reward", "verifier:max_words=3", "--data", str(data), "--out", str(data),
                 "--overwrite"]) == 2
    assert data.read_bytes() == before


@pytest.mark.parametrize("tie, transform, n, calibrated, transformed", [
    # mid: (count_less + count_equal / 2) / m; p1 rewards (1, 0) against [0 0 0 1 1], p2 (0, 1) against
    # [1 1], p3 1 against [0 1]
    ("mid", "best_of_n", "2", [0.8, 0.3, 0.0, 0.5, 0.75], [0.64, 0.09, 0.0, 0.25, 0.5625]),
    ("right", "worst_of_n", "3", [1.0, 0.6, 0.0, 1.0, 1.0], [1.0, 1 - 0.4 ** 3, 0.0, 1.0, 1.0]),
    ("mid", "none", None, [0.8, 0.3, 0.0, 0.5, 0.75], None),
])
def test_score_reward_calibrated(tmp_path, tie, transform, n, calibrated, transformed):
    data = _jsonl(tmp_path / "rows.jsonl", ROWS)
    reference = _jsonl(tmp_path / "ref.jsonl", REFERENCE)
    before = (data.read_bytes(), reference.read_bytes())
    out = tmp_path / "scored.jsonl"
    args = ["score", "--reward", "verifier:max_words=3", "--data", str(data), "--reference-samples", str(reference),
            "--tie", tie, "--transform", transform, "--out", str(out)] + (["--n", n] if n else [])
    assert main(args) == 0
    written = _read(out)
    assert [row["reward"] for row in written] == [1.0, 0.0, 0.0, 1.0, 1.0]
    assert [row["reward_calibrated"] for row in written] == pytest.approx(calibrated, abs=1e-6)
    if transformed is None:
        assert all("reward_transformed" not in row for row in written)
    else:
        assert [row["reward_transformed"] for row in written] == pytest.approx(transformed, abs=1e-6)
    assert (data.read_bytes(), reference.read_bytes()) == before


def test_score_reward_errors(tmp_path, capsys):
    data = _jsonl(tmp_path / "rows.jsonl", ROWS)
    reference = _jsonl(tmp_path / "ref.jsonl", REFERENCE[:2])  # no p3
    out = tmp_path / "scored.jsonl"
    base = ["score", "--reward", "verifier:max_words=3", "--data", str(data), "--out", str(out)]
    assert main(base + ["--reference-samples", str(reference)]) == 2
    err = capsys.readouterr().err
    assert "line 5" in err and "p3" in err and "no reference samples" in err and not out.exists()
    assert main(base + ["--transform", "best_of_n", "--n", "2"]) == 2
    assert "--reference-samples" in capsys.readouterr().err
    assert main(base + ["--reference-samples", str(reference), "--transform", "best_of_n"]) == 2
    assert "--n" in capsys.readouterr().err
    assert main(["score", "--reward", "verifier:bogus", "--data", str(data), "--out", str(out)]) == 2
    assert "valid verifiers" in capsys.readouterr().err
    full = _jsonl(tmp_path / "full.jsonl", REFERENCE)
    before = full.read_bytes()
    assert main(["score", "--reward", "verifier:json", "--data", str(data), "--reference-samples", str(full),
                 "--out", str(full), "--overwrite"]) == 2
    assert full.read_bytes() == before and not out.exists()
    with pytest.raises(SystemExit):
        main(["score", "--reward", "verifier:json", "--models", "x", "--data", str(data), "--out", str(out)])
    with pytest.raises(SystemExit):
        main(["score", "--data", str(data), "--out", str(out)])


def test_score_reward_classifier_matches_direct_scoring(tmp_path, smol_tokenizer):
    rows = [{"prompt": "What colour is the sky?", "completion": " Blue."},
            {"prompt": "2+2?", "completion": " It is four, I think, but let me check again."},
            {"prompt": "Hi", "completion": " Hello!"}]
    data = _jsonl(tmp_path / "rows.jsonl", rows)
    prompts, completions = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    for num_labels in (1, 2):
        folder = _classifier_dir(tmp_path, smol_tokenizer, num_labels)
        out = tmp_path / f"scored-{num_labels}.jsonl"
        assert main(["score", "--reward", f"classifier:{folder}", "--data", str(data), "--out", str(out),
                     "--batch-size", "2"]) == 0
        written = [row["reward"] for row in _read(out)]
        direct = SequenceClassifierReward(str(folder))(prompts, completions)
        assert torch.isfinite(direct).all()
        if num_labels == 1:
            assert all(isinstance(value, float) for value in written)
        else:
            assert all(isinstance(value, list) and len(value) == 2 for value in written)
        assert torch.allclose(torch.tensor(written), direct, atol=1e-5, rtol=0)
    reference = _jsonl(tmp_path / "ref.jsonl", [{"prompt": r["prompt"], "samples": [" a", " b c"]} for r in rows])
    assert main(["score", "--reward", f"classifier:{_classifier_dir(tmp_path, smol_tokenizer, 2)}", "--data",
                 str(data), "--reference-samples", str(reference), "--out", str(tmp_path / "vec.jsonl")]) == 2
