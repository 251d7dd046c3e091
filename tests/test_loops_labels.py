"""The presets' labelling rules against hand computations: RSF's argmax vᵀr, SPA's implicit-reward labels and
confidences, CycleAlign's agreement, Spearman's ρ of the directions evaluation."""

from __future__ import annotations

import math
import random

import pytest

from alignkit.loops.evaluate import spearman
from alignkit.loops.labels import agreement, dpa_angles, implicit_judgment, ranking, rsf_pick


def test_rsf_keeps_exactly_the_argmax_of_the_direction_times_the_rewards():
    # (helpfulness, verbosity) of four samples
    rewards = [[90.0, 10.0], [60.0, 70.0], [20.0, 95.0], [80.0, 40.0]]
    # v = (1, 0): helpfulness alone → sample 0; v = (0, 1) → sample 2
    assert rsf_pick(rewards, [1, 0]) == 0 and rsf_pick(rewards, [0, 1]) == 2
    # v ∝ (71, 71): sums 100, 130, 115, 120 → sample 1; v = (87, 50) (θ = 30°): 83.3, 87.2, 64.9, 89.6 → sample 3
    assert rsf_pick(rewards, [71, 71]) == 1
    assert rsf_pick(rewards, [87, 50]) == 3
    assert rsf_pick([[1.0, 1.0], [1.0, 1.0]], [3, 4]) == 0  # a tie goes to the first sample
    with pytest.raises(ValueError):
        rsf_pick(rewards, [0, 0])


def test_dpa_angles_are_uniform_in_the_range_and_seeded():
    angles = dpa_angles(1000, -45.0, 45.0, random.Random(0))
    assert min(angles) >= -45 and max(angles) <= 45 and abs(sum(angles) / 1000) < 3
    assert angles[:5] == dpa_angles(5, -45.0, 45.0, random.Random(0))


def test_spa_labels_and_confidences_equal_the_implicit_reward_by_hand():
    # log-ratios: first 2.0 − (−1.0) = 3.0 ... written out: (−10 − (−12)) − (−20 − (−19)) = 2 − (−1) = 3
    judged = implicit_judgment(-10.0, -12.0, -20.0, -19.0, beta=0.1)
    p = 1 / (1 + math.exp(-0.3))  # σ(0.1 · 3)
    assert judged.p == pytest.approx(p, abs=1e-12) and judged.first_chosen
    assert judged.confidence == pytest.approx(p) and judged.smoothing == pytest.approx(1 - p)
    flipped = implicit_judgment(-20.0, -19.0, -10.0, -12.0, beta=0.1)
    assert flipped.p == pytest.approx(1 - p) and not flipped.first_chosen and flipped.confidence == pytest.approx(p)
    tie = implicit_judgment(-5.0, -5.0, -7.0, -7.0, beta=0.5)
    assert tie.p == 0.5 and tie.confidence == 0.5
    huge = implicit_judgment(0.0, -1e4, 0.0, 0.0, beta=1.0)  # no overflow at extreme margins
    assert huge.p == 1.0 and implicit_judgment(0.0, 0.0, 0.0, -1e4, beta=1.0).p == 0.0


def scores_of(ranking_best_first: list[int]) -> list[float]:
    """Distinct scores that rank the items as given (best first)."""
    return [-float(ranking_best_first.index(item)) for item in range(len(ranking_best_first))]


def test_cycleAlign_agreement_is_the_longest_common_subsequence_of_the_rankings():
    assert ranking([0.2, 0.9, 0.5, 0.9]) == [1, 3, 2, 0]  # ties: the earlier index first
    assert scores_of([2, 0, 1]) == [-1.0, -2.0, -0.0]
    assert agreement([0, 1, 2, 3], scores_of([0, 1, 2, 3])) == [0, 1, 2, 3]
    assert agreement([0, 1, 2, 3], scores_of([3, 2, 1, 0])) == [0]  # reversed: any single item; the first
    # [2, 0, 1, 3] vs [0, 2, 1, 3]: common orderings of length 3 are (2, 1, 3) and (0, 1, 3)
    assert agreement([2, 0, 1, 3], scores_of([0, 2, 1, 3])) in ([2, 1, 3], [0, 1, 3])
    assert agreement([1, 0, 3, 2, 4], scores_of([0, 1, 2, 3, 4])) in ([1, 3, 4], [1, 2, 4], [0, 3, 4], [0, 2, 4])
    assert len(agreement([1, 0, 3, 2, 4], scores_of([0, 1, 2, 3, 4]))) == 3
    with pytest.raises(ValueError):
        agreement([0, 2], [1.0, 0.0])


def test_cycleAlign_agreement_counts_a_tie_as_agreeing_with_either_order():
    # a 0/1 ranker (items 1 and 3 pass): likelihood 3 > 1 > 0 > 2 contradicts it nowhere, all four agree
    assert agreement([3, 1, 0, 2], [0.0, 1.0, 0.0, 1.0]) == [3, 1, 0, 2]
    # likelihood 0 > 1 > 2 > 3 while the ranker puts 2 and 3 above 0 and 1: two items at most, (0, 1) or (2, 3)
    assert agreement([0, 1, 2, 3], [0.0, 0.0, 1.0, 1.0]) == [0, 1]  # the first found
    # likelihood 2 > 0 > 3 > 1 (ranker scores along it: 1, 0, 1, 0): three items, e.g. 2 > 0 > 1 (1, 0, 0)
    assert agreement([2, 0, 3, 1], [0.0, 0.0, 1.0, 1.0]) == [2, 0, 1]
    # items 0 and 1 pass, likelihood 1 > 0 > 2: all three agree; ordering the tie by index (0 before 1, as
    # `ranking` does) would have made it a disagreement and cut the run to two
    assert agreement([1, 0, 2], [1.0, 1.0, 0.0]) == [1, 0, 2]
    assert len(agreement([1, 0, 2], scores_of(ranking([1.0, 1.0, 0.0])))) == 2


def test_spearman_by_hand():
    assert spearman([0, 1, 2, 3, 4], [1.0, 2.0, 5.0, 9.0, 20.0]) == pytest.approx(1.0)
    assert spearman([0, 1, 2], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    # ranks of y = [1, 3, 2]: d = (0, -1, 1), ρ = 1 − 6·2 / (3·8) = 0.5
    assert spearman([10, 20, 30], [5.0, 9.0, 7.0]) == pytest.approx(0.5)
    assert math.isnan(spearman([1, 2, 3], [4.0, 4.0, 4.0]))


class StubContext:
    """What spa_rows reads of a RoundContext; `sample` returns canned pairs."""

    def __init__(self, pairs):
        from alignkit.data import Record

        self.records = [Record({"prompt": f"q{i}"}, f"p.jsonl, line {i + 1}") for i in range(len(pairs))]
        self.pairs, self.reference, self.model = pairs, "reference-model", "policy-model"
        self.params = {"beta": 0.5, "min_confidence": 0.5, "smoothing": "confidence"}

    def sample(self, prompts, k=None, **_):
        assert k == 2 and [p[0]["content"] for p in prompts] == [r.data["prompt"] for r in self.records]
        return self.pairs


def test_spa_rows_label_each_pair_by_the_implicit_reward(monkeypatch):
    from alignkit.loops import presets

    # summed log-probs: policy and reference, per completion in sampling order
    policy = {"a": -10.0, "b": -12.0, "c": -5.0, "d": -4.0, "e": -3.0, "f": -3.0}
    reference = {"a": -11.0, "b": -11.0, "c": -6.0, "d": -6.0, "e": -3.0, "f": -3.0}
    monkeypatch.setattr(presets, "_mean_and_sum", lambda loaded, prompts, texts: (
        None, [(policy if loaded == "policy-model" else reference)[t] for t in texts]))
    monkeypatch.setattr("alignkit.models.loading.ensure_loaded", lambda name: name)
    context = StubContext([["a", "b"], ["c", "d"], ["e", "f"], ["same", "same"]])
    rows = presets.spa_rows(context)
    # pair 1: Δ = (1) − (−1) = 2 → p = σ(1), a chosen; pair 2: Δ = 1 − 2 = −1 → p = σ(−0.5), d chosen;
    # pair 3: Δ = 0 → a tie, dropped; pair 4: identical samples, dropped
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [("a", "b"), ("d", "c")]
    sigma = [1 / (1 + math.exp(-1.0)), 1 / (1 + math.exp(-0.5))]
    assert [r["confidence"] for r in rows] == pytest.approx(sigma)
    assert [r["label_smoothing"] for r in rows] == pytest.approx([1 - c for c in sigma])


def test_cyclealign_rows_keep_the_agreed_head_and_skip_prompts_the_ranker_cannot_tell_apart(monkeypatch):
    from types import SimpleNamespace

    import torch

    from alignkit.loops import presets

    samples = {"A": ["a1", "a2", "a3"], "B": ["b1", "b2"], "C": ["c1", "c2"]}
    likelihood = {"a1": -1.0, "a2": -2.0, "a3": -3.0, "b1": -1.0, "b2": -2.0, "c1": -1.0, "c2": -2.0}
    ranker = {"a1": 1.0, "a2": 1.0, "a3": 0.0,   # a tie above a3: a1 > a2 > a3 agrees with it throughout
              "b1": 0.0, "b2": 0.0,              # the ranker tells b1 and b2 apart in no way: skipped
              "c1": 0.0, "c2": 1.0}              # the rankers disagree: one item agreed, fewer than 2
    text = lambda completion: completion[-1]["content"]  # noqa: E731
    monkeypatch.setattr(presets, "reward_from_spec", lambda spec: SimpleNamespace(
        score=lambda prompts, completions: torch.tensor([ranker[text(c)] for c in completions])))
    scored_by_the_model = []
    monkeypatch.setattr(presets, "_mean_and_sum", lambda model, prompts, texts: (
        scored_by_the_model.append(texts) or [likelihood[t] for t in texts], [likelihood[t] for t in texts]))
    context = SimpleNamespace(
        records=[SimpleNamespace(data={"prompt": name}) for name in samples], model=None,
        params={"ranker": "any", "agreed": 2},
        sample=lambda prompts: [samples[p[-1]["content"]] for p in prompts])
    rows = presets.cyclealign_rows(context)
    assert [row["prompt"][-1]["content"] for row in rows] == ["A"]
    assert [text(c) for c in rows[0]["completions"]] == ["a1", "a2"]
    assert rows[0]["ranker_scores"] == [1.0, 1.0, 0.0]
    assert scored_by_the_model == [samples["A"], samples["C"]]  # no likelihood forward for the skipped B
