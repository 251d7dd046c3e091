"""Per-sequence log-probabilities of completion tokens, with the LM head applied only where it is needed.

A causal LM scores token t from the hidden state at t−1. Preference objectives only need the scores of
completion tokens, so instead of projecting every position onto the vocabulary (B·T·V floats) we gather
the hidden states that precede completion tokens and project only those (M·V floats, M = completion
tokens in the batch). On SmolLM2-135M with 4 pairs this saved 1.6 s of a 9 s CPU step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel


@dataclass
class SequenceLogps:
    """Completion log-probs per sequence: `sum` (Σ_t log π(y_t|x, y_<t)) and token `count`."""

    sum: torch.Tensor  # [N]
    count: torch.Tensor  # [N], float

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / self.count.clamp(min=1.0)


def causal_lm_parts(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The backbone (returns hidden states) and the LM head of a causal LM, through PEFT wrappers."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not isinstance(base, PreTrainedModel):
        raise TypeError(f"expected a transformers causal LM, got {type(base).__name__}")
    head = base.get_output_embeddings()
    config = base.config.get_text_config()
    for unsupported in ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier"):
        if getattr(config, unsupported, None) not in (None, 1.0):
            raise NotImplementedError(
                f"{type(base).__name__} scales its logits ({unsupported}); completion-only scoring does not support it yet"
            )
    return base.get_decoder(), head


def completion_logps(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    completion_mask: torch.Tensor,
) -> SequenceLogps:
    """Sum of log π(token | prefix) over the tokens where `completion_mask` is true, per row.

    input_ids, attention_mask, completion_mask: [N, T]; completion_mask[:, 0] must be false (the first
    token has no prefix to be scored from). Padding may be on either side.
    """
    if completion_mask[:, 0].any():
        raise ValueError("completion_mask marks position 0, which has no prefix to be scored from")
    backbone, head = causal_lm_parts(model)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    scored = completion_mask[:, 1:].bool()
    rows = torch.arange(input_ids.size(0), device=input_ids.device).unsqueeze(1).expand_as(scored)[scored]
    logits = head(hidden[:, :-1][scored]).float()
    targets = input_ids[:, 1:][scored]
    token_logps = torch.gather(logits.log_softmax(-1), 1, targets.unsqueeze(1)).squeeze(1)
    sums = torch.zeros(input_ids.size(0), dtype=token_logps.dtype, device=input_ids.device)
    sums = sums.index_add(0, rows, token_logps)
    return SequenceLogps(sum=sums, count=scored.sum(1).to(token_logps.dtype))


class CompletionScorer(nn.Module):
    """A causal LM whose forward returns `(summed completion log-probs, completion token counts)` per row.

    Training wraps this module (not the bare LM) with accelerate, so distributed gradient sync sees the
    forward that actually runs.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                completion_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = completion_logps(self.model, input_ids, attention_mask, completion_mask)
        return scores.sum, scores.count


def pair_logps(scorer: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[SequenceLogps, SequenceLogps]:
    """Chosen and rejected completions scored in one forward of a `CompletionScorer` (chosen rows first)."""
    sums, counts = scorer(batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    half = batch["input_ids"].size(0) // 2
    return SequenceLogps(sums[:half], counts[:half]), SequenceLogps(sums[half:], counts[half:])
