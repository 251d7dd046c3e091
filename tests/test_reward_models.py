"""Reward-model objectives: Bradley–Terry, multi-attribute regression and GenARM's ARM loss in closed form,
and a scalar-head reward model trained through the trainer on a synthetic task."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from alignkit.data import collate_rows, load_examples, tokenize_examples
from alignkit.models.reward_head import RewardScorer
from alignkit.objectives import arm, get, rm_multi, rm_pairwise
from alignkit.train import load_config, train


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_bradley_terry_closed_form_and_margin():
    chosen, rejected = t([2.0, -1.0, 0.5]), t([1.0, 0.5, 0.5])
    losses, metrics = rm_pairwise(chosen, rejected)
    assert losses.tolist() == pytest.approx([-log_sigmoid(1.0), -log_sigmoid(-1.5), math.log(2)], abs=1e-12)
    assert metrics["rewards/accuracies"].tolist() == [1.0, 0.0, 0.0]
    with_margin, _ = rm_pairwise(chosen, rejected, margin=0.5)
    assert with_margin.tolist() == pytest.approx([-log_sigmoid(0.5), -log_sigmoid(-2.0), -log_sigmoid(-0.5)], abs=1e-12)
    assert rm_pairwise(chosen[:, None], rejected[:, None])[0].tolist() == losses.tolist()  # [B, 1] heads too


def test_arm_closed_form_is_reference_free_dpo():
    chosen, rejected = t([-10.0, -4.0]), t([-12.0, -3.0])  # summed ARM log-probs
    losses, _ = arm(chosen, rejected, beta=0.5, gamma=0.25)
    # z = β(r_w − r_l) − γ: 0.5·2 − 0.25 = 0.75 and 0.5·(−1) − 0.25 = −0.75
    assert losses.tolist() == pytest.approx([-log_sigmoid(0.75), -log_sigmoid(-0.75)], abs=1e-12)
    smoothed, _ = arm(chosen, rejected, beta=0.5, label_smoothing=0.2)
    assert smoothed[0].item() == pytest.approx(-0.8 * log_sigmoid(1.0) - 0.2 * log_sigmoid(-1.0), abs=1e-12)
    assert arm(chosen, chosen)[0].tolist() == pytest.approx([math.log(2)] * 2)  # equal rewards: ln 2
    assert not get("arm").needs_reference and get("arm").head == "lm"  # an ARM is a causal LM


def test_multi_attribute_regression_closed_form():
    predicted, target = t([[1.0, 2.0], [0.0, 0.0]]), t([[0.0, 4.0], [1.0, -1.0]])
    losses, metrics = rm_multi(predicted, target)
    assert losses.tolist() == pytest.approx([(1 + 4) / 2, (1 + 1) / 2])
    assert metrics["abs_error"].tolist() == pytest.approx([1.5, 1.0])
    with pytest.raises(ValueError, match="num_labels"):
        rm_multi(predicted[:, :1], target)


GOOD, BAD = ["good", "great", "fine", "nice", "lovely"], ["bad", "awful", "poor", "nasty", "grim"]


def synthetic_pairs(count: int, seed: int) -> list[dict]:
    """Chosen answers use positive words, rejected ones negative words; the reward must tell them apart."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        topic = rng.choice(["the weather", "the food", "the film", "the trip"])
        words = rng.randint(1, 4)
        rows.append({"prompt": [{"role": "user", "content": f"How was {topic}?"}],
                     "chosen": [{"role": "assistant", "content": " ".join(rng.choices(GOOD, k=words))}],
                     "rejected": [{"role": "assistant", "content": " ".join(rng.choices(BAD, k=words))}]})
    return rows


def test_pairwise_reward_model_learns_a_synthetic_preference(tmp_path, tiny_chat_model_dir, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in synthetic_pairs(64, seed=0)))
    result = train(load_config(None, [
        f"model.name_or_path={tiny_chat_model_dir}", f"data.train={data}", "objective.name=rm_pairwise",
        "batch_size=8", "epochs=4", "optim.lr=3e-3", "optim.schedule=constant", "progress=false",
        "report_to=none", f"output_dir={tmp_path / 'rm'}"]))
    # The saved reward model loads with plain transformers and scores held-out pairs.
    model = AutoModelForSequenceClassification.from_pretrained(result.final_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    assert model.config.num_labels == 1
    held_out, _ = tokenize_examples(load_examples(synthetic_pairs(40, seed=1), "preference"), tokenizer)
    with torch.no_grad():
        chosen, rejected = RewardScorer(model)(**{k: v for k, v in collate_rows(held_out, tokenizer.pad_token_id).items()
                                                  if k in ("input_ids", "attention_mask", "completion_mask")}).chunk(2)
    accuracy = (chosen > rejected).float().mean().item()
    assert accuracy > 0.9, accuracy


def test_reward_scorer_layouts_agree(tiny_chat_model_dir, smol_tokenizer):
    """The reward of a completion is the head at its last token, in plain rows and in shared-prefix rows."""
    from alignkit.data import collate_shared_prefix
    from alignkit.models.reward_head import load_reward_model

    model = load_reward_model(tiny_chat_model_dir, num_labels=2).model.eval()
    examples, _ = tokenize_examples(load_examples(synthetic_pairs(3, seed=2), "preference"), smol_tokenizer)
    keys = ("input_ids", "attention_mask", "completion_mask", "position_ids", "segment_ids", "context_ids",
            "source_index", "slots")
    with torch.no_grad():
        plain = RewardScorer(model)(**{k: v for k, v in collate_rows(examples, 0).items() if k in keys})
        shared = RewardScorer(model)(**{k: v for k, v in collate_shared_prefix(examples, 0, pack=True).items()
                                        if k in keys and k != "source_index"})
        (prompt, (_, rejected)), = examples[0].groups
        alone = model(torch.tensor([prompt + rejected])).logits[0]
    assert plain.shape == (6, 2)
    assert torch.allclose(plain, shared, atol=1e-4)
    assert torch.allclose(plain[3], alone, atol=1e-4)  # row B + 0: the first pair's rejected answer


@pytest.mark.parametrize("num_labels", [1, 3])
def test_inference_reward_equals_the_trained_reading(tiny_chat_model_dir, smol_tokenizer, num_labels):
    """A reward model scores at inference (`SequenceClassifierReward`, what `alignkit score --reward classifier:`
    and best-of-N use) exactly what training read (`RewardScorer` on the training layout): the head at each
    completion's last token as training tokenizes it — the EOS appended to string completions included."""
    from alignkit.data import collate_shared_prefix
    from alignkit.models.reward_head import load_reward_model
    from alignkit.models.rewards import SequenceClassifierReward

    torch.manual_seed(0)
    model = load_reward_model(tiny_chat_model_dir, num_labels=num_labels).model.double().eval()  # no rounding noise
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)  # a head whose reading differs from token to token
    rows = [{"prompt": "What colour is the sky?", "completion": " Blue, mostly."},
            {"prompt": "2+2?", "completion": " It is four, I think, but let me check again."},
            {"prompt": [{"role": "user", "content": "Say hi."}], "completion": [{"role": "assistant", "content": "Hi!"}]},
            {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a fruit."}],
             "completion": [{"role": "assistant", "content": "A pear."}]}]
    for group in (rows[:2], rows[2:]):  # string rows, chat rows
        examples, _ = tokenize_examples(load_examples(group, "sft"), smol_tokenizer)
        batch = collate_shared_prefix(examples, smol_tokenizer.pad_token_id, pack=True)
        inputs = {key: batch[key] for key in ("input_ids", "completion_mask", "position_ids", "segment_ids",
                                              "context_ids", "source_index", "slots")}
        with torch.no_grad():
            trained = RewardScorer(model)(**inputs)
        reward = SequenceClassifierReward(model=model, tokenizer=smol_tokenizer, batch_size=1)
        scored = reward([row["prompt"] for row in group], [row["completion"] for row in group])
        expected = trained[:, 0] if num_labels == 1 else trained
        assert scored.shape == expected.shape
        assert torch.allclose(scored, expected, atol=1e-6, rtol=0), (scored - expected).abs().max()
