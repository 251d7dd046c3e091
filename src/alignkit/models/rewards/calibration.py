"""InfAlign reward calibration (Balashankar et al., ICML'25, arXiv 2412.19792).

Calibration replaces a raw reward by its quantile under the reference policy for the same prompt:

    C(x, y) = P_{z∼π_ref(·|x)}[ r(x, z) < r(x, y) ] + ½ · P[ r(x, z) = r(x, y) ]          (tie rule "mid")
    C(x, y) = P_{z∼π_ref(·|x)}[ r(x, z) ≤ r(x, y) ]                                       (tie rule "right")

estimated from m reference samples per prompt. Both are readings of "empirical CDF under π_ref"; UNVERIFIED:
the paper's exact tie rule was not checked, hence the `tie` parameter ("mid" by default). With tie-free
continuous rewards C(x, y) ∼ U[0, 1] under π_ref; on the m reference samples themselves the "mid" rule
gives exactly (2i − 1)/(2m), i = 1..m, mean ½.

CTRL then trains with a transformed calibrated reward Φ(C). Transforms offered (all UNVERIFIED as the paper's
exact choices, so they are parameters):

* `exponential(u, t) = exp(t·u)`: with t > 0 the best-of-N transform assumed here. Caution: with t < 0 it is
  *decreasing* in u (it would reward worse responses). The worst-of-N transform assumed here is −exp(−t·u),
  t > 0, i.e. exp(t·u) with t < 0 and the sign flipped: that is `signed_exponential(u, t) = sign(t)·exp(t·u)`,
  increasing in u for either sign. The t per N is UNVERIFIED (a required argument).
* `best_of_n_transform(u, n) = uⁿ`: the CDF of the best of n reference samples at quantile u (the win probability of y
  against the best of n reference draws) — the exact-probability counterpart for BoN.
* `worst_of_n_transform(u, n) = 1 − (1 − u)ⁿ`: the CDF of the worst of n reference samples (win probability against the
  worst of n), the counterpart for WoN.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Mapping, Sequence

from alignkit.data.prompts import Content, as_completion, content_key
from alignkit.lazy import lazy
from alignkit.models.rewards.base import Reward

torch = lazy("torch")

TIE_RULES = ("mid", "right")
UNSEEN_RULES = ("error", "constant", "pooled")


def best_of_n_transform(u: torch.Tensor, n: int) -> torch.Tensor:
    """Φ(u) = uⁿ (best-of-n; see the module docstring)."""
    return torch.as_tensor(u, dtype=torch.float32) ** n


def worst_of_n_transform(u: torch.Tensor, n: int) -> torch.Tensor:
    """Φ(u) = 1 − (1 − u)ⁿ (worst-of-n; see the module docstring)."""
    return 1 - (1 - torch.as_tensor(u, dtype=torch.float32)) ** n


N_TRANSFORMS = {"best_of_n": best_of_n_transform, "worst_of_n": worst_of_n_transform}


def exponential(u: torch.Tensor, t: float) -> torch.Tensor:
    """Φ(u) = exp(t·u) (best-of-N with t > 0; for worst-of-N see `signed_exponential`; t per N UNVERIFIED)."""
    return torch.exp(t * torch.as_tensor(u, dtype=torch.float32))


def signed_exponential(u: torch.Tensor, t: float) -> torch.Tensor:
    """Φ(u) = sign(t)·exp(t·u): exp(t·u) for best-of-N (t > 0), −exp(−|t|·u) for worst-of-N (t < 0)."""
    if t == 0:
        raise ValueError("t must be non-zero")
    return math.copysign(1.0, t) * exponential(u, t)


class EmpiricalCDF:
    """Per-prompt empirical CDF of reference-policy reward scores.

    `tie`: "mid" → (count_less + ½·count_equal)/m, "right" → count_le/m. `unseen`: what to do for a prompt not
    fitted — "error" (KeyError, default), "constant" (return `fill`, default ½), "pooled" (use the scores of all
    fitted prompts together).
    """

    def __init__(self, tie: str = "mid", unseen: str = "error", fill: float = 0.5):
        if tie not in TIE_RULES:
            raise ValueError(f"tie must be one of {TIE_RULES}, got {tie!r}")
        if unseen not in UNSEEN_RULES:
            raise ValueError(f"unseen must be one of {UNSEEN_RULES}, got {unseen!r}")
        self.tie, self.unseen, self.fill = tie, unseen, float(fill)
        self.sorted: dict[str, list[float]] = {}
        self.pooled: list[float] = []

    def fit(self, prompt_to_scores: Mapping[str, Sequence[float]] | Sequence[tuple[Content, Sequence[float]]]) -> "EmpiricalCDF":
        """Store the sorted reference scores of each prompt (string keys, or (prompt, scores) pairs for message
        lists). Empty or non-finite score lists raise ValueError."""
        items = prompt_to_scores.items() if isinstance(prompt_to_scores, Mapping) else prompt_to_scores
        for prompt, scores in items:
            values = sorted(float(s) for s in scores)
            if not values or not all(math.isfinite(v) for v in values):
                raise ValueError(f"prompt {str(prompt)[:60]!r}: need at least one finite reference score")
            self.sorted[content_key(prompt)] = values
        self.pooled = sorted(v for values in self.sorted.values() for v in values)
        return self

    def quantile(self, reference: list[float], score: float) -> float:
        """The calibrated value of `score` against sorted `reference` under the tie rule."""
        less = bisect.bisect_left(reference, score)
        less_equal = bisect.bisect_right(reference, score)
        if self.tie == "right":
            return less_equal / len(reference)
        return (less + 0.5 * (less_equal - less)) / len(reference)

    def calibrate(self, prompts: Sequence[Content], scores: torch.Tensor | Sequence[float]) -> torch.Tensor:
        """[B] calibrated rewards in [0, 1]."""
        values = torch.as_tensor(scores, dtype=torch.float64).reshape(-1).tolist()  # no float32 rounding: ties stay ties
        if len(values) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(values)} scores")
        return torch.tensor([self._one(p, s) for p, s in zip(prompts, values)], dtype=torch.float32)

    def _one(self, prompt: Content, score: float) -> float:
        reference = self.sorted.get(content_key(prompt))
        if reference is None:
            if self.unseen == "constant":
                return self.fill
            if self.unseen == "pooled" and self.pooled:
                return self.quantile(self.pooled, score)
            raise KeyError(f"no reference scores fitted for prompt {str(prompt)[:60]!r}")
        return self.quantile(reference, score)


class CalibratedReward(Reward):
    """Φ(C(x, r(x, y))): a scalar reward calibrated by `cdf` and passed through `transform` (identity if None),
    e.g. `CalibratedReward(rm, cdf, lambda u: exponential(u, 5.0))`."""

    def __init__(self, reward: Reward, cdf: EmpiricalCDF,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        if reward.attributes:
            raise ValueError("calibration needs a scalar reward; scalarise first (Direction or WeightedSum)")
        self.reward, self.cdf, self.transform = reward, cdf, transform

    def score(self, prompts: Sequence[Content], completions: Sequence[Content]) -> torch.Tensor:
        u = self.cdf.calibrate(prompts, self.reward.score(prompts, completions))
        return u if self.transform is None else self.transform(u)


def fit_reference_cdf(reward: Reward, references: Sequence[tuple[Content, Sequence[Content]]],
                      cdf: EmpiricalCDF | None = None) -> EmpiricalCDF:
    """`cdf` (default `EmpiricalCDF()`) fitted on the rewards of each prompt's reference-policy completions,
    given as (prompt, completions) pairs; all completions are scored in one `reward` call. A string completion
    of a message-list prompt is taken as one assistant message."""
    prompts = [prompt for prompt, completions in references for _ in completions]
    completions = [as_completion(prompt, c) if isinstance(c, str) else c for prompt, cs in references for c in cs]
    scores = reward(prompts, completions).float().tolist() if completions else []
    fitted, start = [], 0
    for prompt, completions_of_prompt in references:
        fitted.append((prompt, scores[start:start + len(completions_of_prompt)]))
        start += len(completions_of_prompt)
    return (cdf or EmpiricalCDF()).fit(fitted)
