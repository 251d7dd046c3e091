"""Monte-Carlo KL(policy ‖ reference) from the policy's own samples, with the k1 and k3 estimators.

For samples y ~ π(·|x) with per-token log-ratios ℓ_t = log π(y_t | x, y_<t) − log π_ref(y_t | x, y_<t):

    k1(y) = Σ_t ℓ_t                          unbiased for KL(π ‖ π_ref) over sequences; may be negative
    k3(y) = Σ_t (e^{−ℓ_t} − 1 + ℓ_t)         unbiased as well, and never negative (x − 1 − log x ≥ 0)

(J. Schulman, "Approximating KL divergence", 2020, http://joschu.net/blog/kl-approx.html; k3 is applied per
token and summed, as TRL's and OpenRLHF's trainers do: E_{y_t}[e^{−ℓ_t} − 1 + ℓ_t | y_<t] is the KL of the
next-token distributions at that prefix, and the chain rule sums them to the sequence KL.) The per-token KL
is Σ over all samples of k / Σ of their tokens. Samples must come from π itself (temperature 1, no top-p or
top-k truncation): otherwise the estimate is of another distribution. A completion cut at max_new_tokens
measures the KL of the first max_new_tokens tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from alignkit.eval.stats import Estimate, bootstrap_mean, bootstrap_ratio
from alignkit.lazy import lazy

torch = lazy("torch")


@dataclass(frozen=True)
class SampleKL:
    """One sample's k1 and k3 sums over its tokens, and its token count."""

    k1: float
    k3: float
    tokens: int


def sample_kl(policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> SampleKL:
    """k1 and k3 of one sample from its per-token log-probs under the policy and the reference."""
    if policy_logps.shape != reference_logps.shape:
        raise ValueError(f"per-token log-probs of different lengths: {tuple(policy_logps.shape)} vs "
                         f"{tuple(reference_logps.shape)}")
    ratio = policy_logps.double() - reference_logps.double()
    k3 = torch.expm1(-ratio) + ratio
    return SampleKL(float(ratio.sum()), float(k3.clamp(min=0.0).sum()), int(ratio.numel()))


@dataclass(frozen=True)
class KLSummary:
    """KL estimates over prompts: per sequence (mean of per-prompt means) and per token (total over tokens)."""

    k1_sequence: Estimate
    k3_sequence: Estimate
    k1_token: Estimate
    k3_token: Estimate
    samples: int

    def to_json(self) -> dict:
        return {"k1_per_sequence": self.k1_sequence.to_json(), "k3_per_sequence": self.k3_sequence.to_json(),
                "k1_per_token": self.k1_token.to_json(), "k3_per_token": self.k3_token.to_json(),
                "samples": self.samples}


def summarise_kl(per_prompt: Sequence[Sequence[SampleKL]]) -> KLSummary:
    """Bootstrap intervals over prompts of the per-sequence and per-token k1 and k3 (prompts are resampled
    with the seed every evaluation metric uses)."""
    k1 = np.array([np.mean([s.k1 for s in samples]) for samples in per_prompt])
    k3 = np.array([np.mean([s.k3 for s in samples]) for samples in per_prompt])
    k1_sums = np.array([sum(s.k1 for s in samples) for samples in per_prompt])
    k3_sums = np.array([sum(s.k3 for s in samples) for samples in per_prompt])
    tokens = np.array([sum(s.tokens for s in samples) for samples in per_prompt], dtype=np.float64)
    return KLSummary(bootstrap_mean(k1), bootstrap_mean(k3), bootstrap_ratio(k1_sums, tokens),
                     bootstrap_ratio(k3_sums, tokens), sum(len(samples) for samples in per_prompt))
