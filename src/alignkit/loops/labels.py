"""The labelling rules of the self-alignment presets, as pure functions on numbers (tested against hand
computations in tests/test_loops_labels.py); `alignkit.loops.presets` applies them to a model's samples.

* RSF under a direction (DPA: Wang et al., "Arithmetic Control of LLMs for Diverse User Preferences", arXiv
  2402.18571, §3.2): keep argmax_i vᵀ r(x, y_i) of K samples drawn with v in the system prompt.
* SPA's direct preference judgment (Kim et al., "Spread Preference Annotation", arXiv 2406.04412, Eq. 7–8):
  p(y₁ ≻ y₂ | x) = σ(β[(log π(y₁) − log π_ref(y₁)) − (log π(y₂) − log π_ref(y₂))]), the chosen answer the
  likelier one, confidence max(p, 1 − p); its label smoothing ε = 1 − confidence is our reading (the paper's
  exact smoothing formula is UNVERIFIED here, see docs/loops.md).
* CycleAlign's agreement (Hong et al., arXiv 2310.16271, §3): the longest common subsequence of two rankings
  (the white-box model's by likelihood, a second ranker's), i.e. the largest ordering both agree on.
  The paper describes the agreement in words; taking the longest common subsequence is our reading
  (UNVERIFIED).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass


def rsf_pick(attribute_scores: Sequence[Sequence[float]], direction: Sequence[float]) -> int:
    """The index of the sample whose attribute scores r_i maximise vᵀr_i (v normalised; the first on a tie)."""
    norm = math.sqrt(sum(x * x for x in direction))
    if not attribute_scores or norm == 0 or any(len(r) != len(direction) for r in attribute_scores):
        raise ValueError("need one score per attribute for each sample and a non-zero direction")
    values = [sum(v * x for v, x in zip(direction, r)) / norm for r in attribute_scores]
    return values.index(max(values))


def dpa_angles(count: int, low: float, high: float, rng: random.Random) -> list[float]:
    """`count` direction angles θ (degrees), uniform on [low, high]; v = (cos θ, sin θ) over (helpfulness,
    verbosity). DPA's inference range is θ ∈ [−45°, 45°] (w_h ≥ 71 in its README); the training
    distribution of θ is not published (UNVERIFIED), hence a parameter."""
    if not low <= high:
        raise ValueError(f"angle range must have low <= high, got [{low}, {high}]")
    return [rng.uniform(low, high) for _ in range(count)]


@dataclass(frozen=True)
class Judgment:
    """SPA's label of one pair: p = p(first ≻ second), which answer is chosen, and the confidence."""

    p: float
    first_chosen: bool
    confidence: float

    @property
    def smoothing(self) -> float:
        """Label smoothing ε = 1 − confidence ∈ [0, 0.5] (UNVERIFIED form; see the module docstring)."""
        return 1.0 - self.confidence


def implicit_judgment(policy_first: float, ref_first: float, policy_second: float, ref_second: float,
                      beta: float) -> Judgment:
    """SPA's judgment of (first, second) from summed log-probs under the policy and its reference."""
    margin = beta * ((policy_first - ref_first) - (policy_second - ref_second))
    p = 1.0 / (1.0 + math.exp(-margin)) if margin >= 0 else math.exp(margin) / (1.0 + math.exp(margin))
    return Judgment(p, p > 0.5, max(p, 1.0 - p))


def ranking(scores: Sequence[float]) -> list[int]:
    """Indices from the highest score to the lowest (ties: the earlier index first)."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


def agreement(order: Sequence[int], scores: Sequence[float]) -> list[int]:
    """The longest subsequence of `order` (one ranker's ranking of items 0..n-1, best first) along which the
    other ranker's `scores` (one per item) never rise: the items in an order both rankers agree on. A tie in
    `scores` agrees with either order; with distinct scores this is the longest common subsequence of the two
    rankings. Among equally long ones, the one that dynamic programming finds first in `order`."""
    if sorted(order) != list(range(len(scores))):
        raise ValueError(f"the ranking must order the {len(scores)} scored items, got {list(order)}")
    n = len(order)
    # longest non-increasing subsequence of the scores taken in `order`, by O(n²) dynamic programming
    best = [1] * n
    previous = [-1] * n
    for i in range(n):
        for j in range(i):
            if scores[order[j]] >= scores[order[i]] and best[j] + 1 > best[i]:
                best[i], previous[i] = best[j] + 1, j
    end = max(range(n), key=lambda i: (best[i], -i)) if n else -1
    chain = []
    while end != -1:
        chain.append(order[end])
        end = previous[end]
    return chain[::-1]
