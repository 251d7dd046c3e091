"""Mechanism (a): a per-token guided step that combines several models' and rewards' next-token scores."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def combine_logprobs(base_logprobs: torch.Tensor, terms: Sequence[tuple[float, torch.Tensor]],
                     temperature: float = 1.0) -> torch.Tensor:
    """(log π_base + Σ_i w_i · term_i) / temperature, over the last dimension's tokens.

    `base_logprobs` and each term are [B, V] (or [B, k] over k candidate tokens); the result is a score
    to sample from with softmax or to take the argmax of.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    combined = base_logprobs.float()
    for weight, term in terms:
        if weight:
            combined = combined + weight * term.float()
    return combined / temperature
