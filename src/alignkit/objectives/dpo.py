"""Direct Preference Optimization (Rafailov et al., 2023, arXiv 2305.18290), sigmoid form."""

from __future__ import annotations

from alignkit.lazy import lazy
from alignkit.objectives.registry import Objective, register

torch = lazy("torch")
F = lazy("torch.nn.functional")


def preference_metrics(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-pair implicit-reward metrics shared by the pairwise objectives (detached)."""
    chosen_rewards, rejected_rewards = chosen_rewards.detach(), rejected_rewards.detach()
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/margins": chosen_rewards - rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).float(),
    }


def logistic_loss(logits: torch.Tensor, label_smoothing: float | torch.Tensor = 0.0) -> torch.Tensor:
    """The label-smoothed logistic loss −(1 − ε) log σ(z) − ε log σ(−z) per element (ε = label_smoothing in
    [0, 0.5), a number or one per element; ε = 0 is −log σ(z)), shared by DPO (cDPO's smoothing), SimPO, JPO
    and GenARM's ARM."""
    epsilon = torch.as_tensor(label_smoothing)
    if bool(((epsilon < 0) | (epsilon >= 0.5)).any()):
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    return -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)


def dpo(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    row_label_smoothing: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO loss per pair, on summed completion log-probs.

    With Δ = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)) and ε = label_smoothing:

        loss = −(1 − ε) · log σ(β Δ) − ε · log σ(−β Δ)

    ε = 0 is the DPO paper's Eq. 7 (TRL 1.16 `loss_type="sigmoid"`, which ignores label_smoothing);
    ε > 0 is conservative DPO (cDPO, Mitchell 2023) as in the authors' code
    (eric-mitchell/direct-preference-optimization, trainers.py `preference_loss`). Rows that carry their own
    `label_smoothing` field (`row_label_smoothing`, [B]) use it as ε instead of the parameter: SPA's
    confidence-based smoothing of self-labelled pairs (Kim et al., arXiv 2406.04412; see docs/loops.md).
    Implicit rewards are β · (log π − log π_ref). At π = π_ref the loss is ln 2 for every ε.
    """
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    epsilon = label_smoothing if row_label_smoothing is None else row_label_smoothing
    return logistic_loss(chosen_rewards - rejected_rewards, epsilon), preference_metrics(chosen_rewards,
                                                                                         rejected_rewards)


register(
    Objective(
        name="dpo",
        fn=dpo,
        description="Direct Preference Optimization: -log σ(β Δ) on summed log-probs; cDPO label smoothing",
        source="Rafailov et al. 2023 (arXiv 2305.18290) Eq. 7; eric-mitchell/direct-preference-optimization trainers.py",
    )
)


def rdpo(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    policy_distractor_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    ref_distractor_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    context_beta: float = 1.0,
    context_weight: float = 1.0,
    anchor: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Re-Align's rDPO in text form: DPO on the response plus the preference for the same chosen answer
    under the right context over a distractor context (Xing et al. 2025, "Re-Align: Aligning Vision
    Language Models via Retrieval-Augmented Direct Preference Optimization", arXiv 2502.13146; the authors'
    taco-group/Re-Align `rDPOtrainer.py` `dpo_loss`, where the distractor is a retrieved image).

    With r(y | c) = log π(y | c) − log π_ref(y | c), the right context c and the distractor c̃:

        Δ_response = r(y_w | c) − r(y_l | c),    Δ_context = r(y_w | c) − r(y_w | c̃)
        loss = −log σ(β Δ_response) − w · log σ(β β_c Δ_context)  [− log σ(β r(y_w | c)) with `anchor`]

    The defaults are the authors' scripts' (β = 0.1, β_c = `context_beta` = 1, w = `context_weight` = 1);
    `anchor` adds their `only_anchor` term, which keeps the chosen answer's likelihood from falling. The
    first term is `dpo` exactly. At π = π_ref the loss is 2 ln 2 (3 ln 2 with `anchor`).
    """
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps)
    distractor_rewards = beta * (policy_distractor_logps - ref_distractor_logps)
    losses = logistic_loss(chosen_rewards - rejected_rewards)
    losses = losses + context_weight * logistic_loss(context_beta * (chosen_rewards - distractor_rewards))
    if anchor:
        losses = losses + logistic_loss(chosen_rewards)
    metrics = preference_metrics(chosen_rewards, rejected_rewards)
    metrics["rewards/distractor"] = distractor_rewards.detach()
    metrics["rewards/context_margins"] = (chosen_rewards - distractor_rewards).detach()
    metrics["rewards/context_accuracies"] = (chosen_rewards > distractor_rewards).detach().float()
    return losses, metrics


register(
    Objective(
        name="rdpo",
        fn=rdpo,
        description="Re-Align rDPO: DPO plus the same answer preferred under the right context over a distractor",
        source="Xing et al. 2025 (arXiv 2502.13146) rDPO; taco-group/Re-Align rDPOtrainer.py dpo_loss",
        data_format="context",
    )
)
