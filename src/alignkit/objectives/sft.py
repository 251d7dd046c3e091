"""Supervised fine-tuning: the negative log-likelihood of a completion, and the NLL reductions that other
objectives (RPO) add as a regulariser."""

from __future__ import annotations

from typing import Literal

from alignkit.lazy import lazy
from alignkit.objectives.registry import Objective, register

torch = lazy("torch")

NllReduction = Literal["token_mean", "sum", "batch_token_mean"]
NLL_REDUCTIONS = ("token_mean", "sum", "batch_token_mean")


def nll_term(logps: torch.Tensor, lengths: torch.Tensor, reduction: NllReduction) -> torch.Tensor:
    """Per-example NLL of completions from their *summed* log-probs `logps` [B] and token counts `lengths` [B].

    * ``"token_mean"``: −logps / n, each example's average per-token NLL;
    * ``"sum"``: −logps, the sequence NLL;
    * ``"batch_token_mean"``: −logps · B / Σ_j n_j, so that the batch *mean* of the terms is the NLL pooled
      over every completion token of the batch, −Σ_i logps_i / Σ_j n_j (cross-entropy over all unmasked
      tokens, as transformers/TRL compute it). A term depends on the other examples of its (micro-)batch, so
      unlike the other two this reduction changes with how examples are grouped into batches.
    """
    if reduction == "token_mean":
        return -logps / lengths.clamp(min=1.0)
    if reduction == "sum":
        return -logps
    if reduction == "batch_token_mean":
        return -logps * (logps.shape[0] / lengths.sum().clamp(min=1.0))
    raise ValueError(f"unknown NLL reduction {reduction!r}; expected one of {NLL_REDUCTIONS}")


def sft(
    policy_completion_logps: torch.Tensor,
    completion_lengths: torch.Tensor,
    *,
    reduction: NllReduction = "token_mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative log-likelihood of the completion given the prompt, one loss per example.

    Inputs are summed completion log-probs S = Σ_t log π(y_t | x, y_<t) and token counts n. The default
    ``reduction="token_mean"`` gives loss = −S / n, each example's mean per-token cross-entropy, so every
    example weighs the same whatever its length (the batch mean is the mean over examples).
    ``"batch_token_mean"`` reproduces the pooled token mean of transformers' causal-LM loss, TRL's
    SFTTrainer and TRL DPOTrainer's ``loss_type="sft"`` (−Σ S / Σ n over a batch, long completions weigh
    more); ``"sum"`` gives the sequence NLL −S. Metric ``nll`` is always the per-token mean −S / n.
    """
    losses = nll_term(policy_completion_logps, completion_lengths, reduction)
    nll = (-policy_completion_logps / completion_lengths.clamp(min=1.0)).detach()
    return losses, {"nll": nll}


register(
    Objective(
        name="sft",
        fn=sft,
        description="Supervised fine-tuning: token-mean NLL of the completion (or summed / batch-pooled)",
        source="maximum likelihood; pooled form = TRL 1.16 SFTTrainer and DPOTrainer loss_type='sft'",
        data_format="sft",
    )
)
