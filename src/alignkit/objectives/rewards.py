"""Reward-model objectives: Bradley–Terry on a scalar head, multi-attribute regression (DPA), and
GenARM's autoregressive reward model."""

from __future__ import annotations

from alignkit.lazy import lazy
from alignkit.objectives.dpo import logistic_loss, preference_metrics
from alignkit.objectives.registry import Objective, register

torch = lazy("torch")
F = lazy("torch.nn.functional")


def rm_pairwise(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, *,
                margin: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Bradley–Terry reward-model loss per pair: −log σ(r(x, y_w) − r(x, y_l) − m).

    r is a scalar head over a causal LM (InstructGPT, Ouyang et al. 2022, Eq. 1; TRL RewardTrainer);
    `margin` m > 0 asks for a gap (Llama 2's margin loss, Touvron et al. 2023 §3.2.2; 0 = plain BT).
    """
    chosen, rejected = chosen_rewards.squeeze(-1), rejected_rewards.squeeze(-1)
    losses = -F.logsigmoid(chosen - rejected - margin)
    return losses, preference_metrics(chosen, rejected)


def rm_multi(completion_rewards: torch.Tensor, scores: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Multi-objective reward regression per example: mean over the k attributes of (r̃_i(x, y) − r_i)².

    DPA stage 1 (Wang et al. 2024, arXiv 2402.18571): a linear k-output head on the last hidden state,
    trained with MSE against the attribute scores (`scores`, [B, k], e.g. HelpSteer's five attributes).
    """
    if completion_rewards.dim() == 1:  # a one-output head arrives as [B]
        completion_rewards = completion_rewards.unsqueeze(-1)
    if completion_rewards.shape != scores.shape:
        raise ValueError(f"the head has {tuple(completion_rewards.shape)} outputs but the scores are "
                         f"{tuple(scores.shape)}: num_labels must equal the number of scores per row")
    errors = (completion_rewards - scores).pow(2)
    return errors.mean(-1), {"mse": errors.mean(-1).detach(), "abs_error": (completion_rewards - scores).abs()
                             .mean(-1).detach()}


def arm(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, *, beta: float = 0.1,
        gamma: float = 0.0, label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GenARM's autoregressive reward model (Xu et al. 2024, arXiv 2410.08193; Yuancheng-Xu/GenARM
    training_trl/arm_trainer.py `arm_loss`): a causal LM π_r whose reward is its summed log-prob,
    r(x, y) = Σ_t log π_r(y_t | x, y_<t), trained on pairs with

        z = β_r · (r(x, y_w) − r(x, y_l)) − γ,   loss = −(1 − ε) log σ(z) − ε log σ(−z)

    (DPO without a reference model; γ the target margin, 0 by default; ε label smoothing). At decoding,
    π_decode ∝ π_base · π_r^α.
    """
    chosen, rejected = beta * policy_chosen_logps, beta * policy_rejected_logps
    return logistic_loss(chosen - rejected - gamma, label_smoothing), preference_metrics(chosen, rejected)


register(Objective(
    name="rm_pairwise", fn=rm_pairwise,
    description="reward model: Bradley–Terry −log σ(r_w − r_l − m) on a scalar head",
    source="Ouyang et al. 2022 (arXiv 2203.02155) Eq. 1; margin: Touvron et al. 2023 (arXiv 2307.09288) §3.2.2",
    head="reward"))
register(Objective(
    name="rm_multi", fn=rm_multi,
    description="multi-attribute reward model: MSE of a k-output head against per-attribute scores (DPA)",
    source="Wang et al. 2024 (arXiv 2402.18571) stage 1",
    data_format="sft", head="reward"))
register(Objective(
    name="arm", fn=arm,
    description="GenARM autoregressive reward model: −log σ(β_r(Σ log π_r(y_w) − Σ log π_r(y_l)) − γ)",
    source="Xu et al. 2024 (arXiv 2410.08193); Yuancheng-Xu/GenARM training_trl/arm_trainer.py arm_loss"))
