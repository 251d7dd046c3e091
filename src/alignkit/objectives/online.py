"""Online objectives: the policy learns from k completions per prompt that it sampled itself this step,
scored by a reward (`prompts` data; `alignkit.train.online` draws and scores the samples).

Shapes: B prompts, K samples each, L the longest completion of the batch. Rewards r [B, K]; token log-probs
[B, K, L] under the policy being trained (log π_θ), the policy that sampled (log π_old: the same weights unless a
batch of samples serves several updates) and the reference (log π_ref), with the completion mask m [B, K, L].
Advantages carry no gradient; only log π_θ does. Every objective reports, per prompt: the mean reward over its
K samples and their standard deviation (`reward`, `reward_std`), whether all K rewards were equal
(`zero_variance`, a group without any learning signal), the k1 KL per completion Σ_t (log π_θ − log π_ref)
(`kl`), the fraction of clipped ratios (`clip_fraction`) and the completion length in tokens.
"""

from __future__ import annotations

from typing import Optional

from alignkit.lazy import lazy
from alignkit.objectives.registry import Objective, register

torch = lazy("torch")

STD_EPS = 1e-4  # added to a group's reward std before dividing (TRL's GRPO and RLOO)
WHITEN_EPS = 1e-8  # added to the variance when whitening (OpenRLHF / verl `masked_whiten`)


def group_metrics(rewards: torch.Tensor, lengths: torch.Tensor, kl: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per prompt: mean reward, its std over the K samples (unbiased), zero variance, mean k1 KL and length."""
    std = rewards.std(dim=1) if rewards.size(1) > 1 else torch.zeros_like(rewards[:, 0])
    return {"reward": rewards.mean(1).detach(), "reward_std": std.detach(), "zero_variance": (std == 0).float(),
            "kl": kl.mean(1).detach(), "completion_length": lengths.float().mean(1)}


def clipped_surrogate(log_ratio: torch.Tensor, advantages: torch.Tensor, epsilon: float,
                      epsilon_high: Optional[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate −min(ρ·A, clip(ρ, 1 − ε, 1 + ε_high)·A), ρ = exp(log_ratio) (Schulman et al. 2017,
    arXiv 1707.06347, eq. 7), and where the clip bound (TRL's "region": ρ < 1 − ε with A < 0, ρ > 1 + ε_high
    with A > 0)."""
    high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(log_ratio)
    loss = -torch.min(ratio * advantages, torch.clamp(ratio, 1 - epsilon, 1 + high) * advantages)
    clipped = ((ratio < 1 - epsilon) & (advantages < 0)) | ((ratio > 1 + high) & (advantages > 0))
    return loss, clipped


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum(-1)


def k3(ref_token_logps: torch.Tensor, token_logps: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of KL(π‖π_ref) per token, exp(δ) − δ − 1 with δ = log π_ref − log π (≥ 0)."""
    delta = ref_token_logps - token_logps
    return torch.exp(delta) - delta - 1


def leave_one_out(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO's advantages r_i − (Σ_j r_j − r_i)/(K − 1) over each prompt's K samples (Ahmadian et al. 2024,
    arXiv 2402.14740, eq. 6)."""
    return pairwise_gaps(rewards).sum(-1) / (rewards.size(1) - 1)


def pairwise_gaps(rewards: torch.Tensor) -> torch.Tensor:
    """[B, K, K]: r_i − r_j. Baselines are written as sums of these gaps, so equal rewards give exactly zero
    advantages (a mean subtracted in floating point would leave rounding noise, and a gradient)."""
    return rewards.unsqueeze(-1) - rewards.unsqueeze(-2)


def rloo(policy_completions_logps: torch.Tensor, old_completions_logps: torch.Tensor,
         ref_completions_logps: torch.Tensor, completions_rewards: torch.Tensor, completions_lengths: torch.Tensor,
         beta: float = 0.05, epsilon: float = 0.2, epsilon_high: Optional[float] = None):
    """REINFORCE Leave-One-Out (Ahmadian et al., "Back to Basics: Revisiting REINFORCE Style Optimization for
    Learning from Human Feedback in LLMs", arXiv 2402.14740) as TRL 1.16's `RLOOTrainer` computes it:

        r'_i = r_i − β · Σ_t (log π_old − log π_ref)(y_i,t)        (sequence-level k1 KL in the reward)
        A_i  = r'_i − (Σ_j r'_j − r'_i) / (K − 1)                   (leave-one-out baseline)
        ℓ    = mean_i −min(ρ_i A_i, clip(ρ_i, 1 − ε, 1 + ε_high) A_i),  ρ_i = exp(log π_θ(y_i) − log π_old(y_i))

    with sequence log-probs (sums over tokens). Defaults are TRL's (β = 0.05, ε = 0.2). TRL's optional
    batch-wide advantage normalisation is not offered (off by default there).
    """
    kl = old_completions_logps - ref_completions_logps
    advantages = leave_one_out(completions_rewards - beta * kl).detach()
    losses, clipped = clipped_surrogate(policy_completions_logps - old_completions_logps, advantages, epsilon,
                                        epsilon_high)
    metrics = group_metrics(completions_rewards, completions_lengths,
                            (policy_completions_logps - ref_completions_logps).detach())
    return losses.mean(1), {**metrics, "clip_fraction": clipped.float().mean(1)}


def group_advantages(rewards: torch.Tensor, scale_rewards: str) -> torch.Tensor:
    """GRPO's advantages r_i − mean(r) over each prompt's K samples, divided by std(r) + 1e-4 (unbiased) with
    `scale_rewards="group"` (Shao et al., DeepSeekMath, arXiv 2402.03300, §4.1.2; TRL 1.16's default), not with
    "none" (Dr. GRPO, Liu et al., arXiv 2503.20783)."""
    if scale_rewards not in ("group", "none"):
        raise ValueError(f"scale_rewards must be 'group' or 'none', got {scale_rewards!r}")
    centred = pairwise_gaps(rewards).mean(-1)  # r_i − mean_j r_j
    return centred / (rewards.std(1, keepdim=True) + STD_EPS) if scale_rewards == "group" else centred


def normalise(token_losses: torch.Tensor, mask: torch.Tensor, loss_type: str, mean_step_tokens: torch.Tensor,
              max_new_tokens: torch.Tensor) -> torch.Tensor:
    """Per-prompt losses [B] from token losses [B, K, L], so that their mean over the step's prompts (what the
    trainer takes) is TRL's loss:

    * "grpo": each completion's token mean, averaged over its K samples (DeepSeekMath);
    * "dr_grpo": the sum over the prompt's tokens / (K · max_new_tokens) (Dr. GRPO, arXiv 2503.20783);
    * "dapo": the sum over the prompt's tokens / the step's mean completion tokens per prompt, i.e. the sum over
      every token of the step / the step's tokens (DAPO, Yu et al., arXiv 2503.14476, eq. 8).
    """
    summed = masked_sum(token_losses, mask)  # [B, K]
    if loss_type == "grpo":
        return (summed / mask.sum(-1).clamp(min=1)).mean(1)
    if loss_type == "dr_grpo":
        return summed.sum(1) / (summed.size(1) * max_new_tokens)
    if loss_type == "dapo":
        return summed.sum(1) / mean_step_tokens.clamp(min=1)
    raise ValueError(f"loss_type must be 'dapo', 'grpo' or 'dr_grpo', got {loss_type!r}")


def step_tokens(completions_token_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The step's completion tokens per prompt (mean over the step's N prompts), for the "dapo" normalisation."""
    per_prompt = completions_token_mask.sum((1, 2)).float()
    return {"mean_step_tokens": per_prompt.mean().expand_as(per_prompt).clone()}


def grpo(policy_completions_token_logps: torch.Tensor, old_completions_token_logps: torch.Tensor,
         ref_completions_token_logps: torch.Tensor, completions_token_mask: torch.Tensor,
         completions_rewards: torch.Tensor, max_new_tokens: torch.Tensor, mean_step_tokens: torch.Tensor,
         beta: float = 0.04, epsilon: float = 0.2, epsilon_high: Optional[float] = None, scale_rewards: str = "group",
         loss_type: str = "dapo"):
    """Group Relative Policy Optimization (Shao et al., DeepSeekMath, arXiv 2402.03300, eq. 3) with TRL 1.16's
    `GRPOTrainer` loss:

        A_i  = (r_i − mean_j r_j) / (std_j r_j + 1e-4)              (`scale_rewards="group"`; "none": no division)
        ℓ_it = −min(ρ_it A_i, clip(ρ_it, 1 − ε, 1 + ε_high) A_i) + β · k3_it,  ρ_it = exp(log π_θ − log π_old)(y_i,t)
        k3_it = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1

    normalised over tokens as `loss_type` says (`normalise`: "dapo", TRL's default, "grpo" or "dr_grpo").
    β = 0.04 is DeepSeekMath's (TRL's default is 0, no KL term); ε = 0.2.
    """
    advantages = group_advantages(completions_rewards, scale_rewards).detach().unsqueeze(-1)
    mask = completions_token_mask.float()
    surrogate, clipped = clipped_surrogate(policy_completions_token_logps - old_completions_token_logps, advantages,
                                           epsilon, epsilon_high)
    token_losses = surrogate + beta * k3(ref_completions_token_logps, policy_completions_token_logps)
    losses = normalise(token_losses, mask, loss_type, mean_step_tokens, max_new_tokens)
    kl = masked_sum(policy_completions_token_logps - ref_completions_token_logps, mask).detach()
    lengths = mask.sum(-1)
    metrics = group_metrics(completions_rewards, lengths, kl)
    k3_per_token = masked_sum(k3(ref_completions_token_logps, policy_completions_token_logps).detach(), mask)
    return losses, {**metrics, "kl_k3_per_token": k3_per_token.sum(1) / lengths.sum(1).clamp(min=1),
                    "clip_fraction": masked_sum(clipped.float(), mask).sum(1) / lengths.sum(1).clamp(min=1)}


def reinforce_pp_advantages(completions_rewards: torch.Tensor, old_completions_token_logps: torch.Tensor,
                            ref_completions_token_logps: torch.Tensor, completions_token_mask: torch.Tensor,
                            beta: float = 0.01, gamma: float = 1.0) -> dict[str, torch.Tensor]:
    """REINFORCE++'s token advantages over a whole step's samples [N, K, L] (run once per step, before the
    update): per-token rewards r_t = −β (log π_old − log π_ref)(y_t) plus the reward r on the completion's last
    token; returns G_t = Σ_{t' ≥ t} γ^{t'−t} r_{t'}; then whitened over every token of the step,
    A = (G − mean) / sqrt(var + 1e-8) (mean and unbiased variance over the step's tokens)."""
    mask = completions_token_mask.float()
    token_rewards = -beta * (old_completions_token_logps - ref_completions_token_logps) * mask
    last = (mask.sum(-1, keepdim=True).long() - 1).clamp(min=0)
    token_rewards = token_rewards.scatter_add(-1, last, completions_rewards.unsqueeze(-1).to(token_rewards.dtype))
    returns = torch.zeros_like(token_rewards)
    running = torch.zeros_like(token_rewards[..., 0])
    for t in reversed(range(token_rewards.size(-1))):
        running = token_rewards[..., t] + gamma * running
        returns[..., t] = running
    count = mask.sum()
    mean = (returns * mask).sum() / count.clamp(min=1)
    variance = (((returns - mean) * mask) ** 2).sum() / (count - 1).clamp(min=1)
    return {"advantages": ((returns - mean) * torch.rsqrt(variance + WHITEN_EPS) * mask).detach()}


def reinforce_pp(policy_completions_token_logps: torch.Tensor, old_completions_token_logps: torch.Tensor,
                 ref_completions_token_logps: torch.Tensor, completions_token_mask: torch.Tensor,
                 completions_rewards: torch.Tensor, advantages: torch.Tensor, beta: float = 0.01, gamma: float = 1.0,
                 epsilon: float = 0.2, epsilon_high: Optional[float] = None):
    """REINFORCE++ (Hu, arXiv 2501.03262; OpenRLHF's `reinforce_plus_plus`): the token-level clipped surrogate
    −min(ρ_t A_t, clip(ρ_t, 1 − ε, 1 + ε_high) A_t) on the advantages of `reinforce_pp_advantages` (per-token
    k1 KL in the reward with β, γ-discounted returns, whitened over the whole step's tokens), averaged over each
    completion's tokens and then over its prompt's K samples. β = 0.01 and the token-mean-per-sequence
    aggregation are UNVERIFIED choices (OpenRLHF exposes both as options); `gamma` = 1 as in the paper.
    """
    mask = completions_token_mask.float()
    surrogate, clipped = clipped_surrogate(policy_completions_token_logps - old_completions_token_logps, advantages,
                                           epsilon, epsilon_high)
    lengths = mask.sum(-1)
    losses = (masked_sum(surrogate, mask) / lengths.clamp(min=1)).mean(1)
    kl = masked_sum(policy_completions_token_logps - ref_completions_token_logps, mask).detach()
    metrics = group_metrics(completions_rewards, lengths, kl)
    return losses, {**metrics, "clip_fraction": masked_sum(clipped.float(), mask).sum(1) / lengths.sum(1).clamp(min=1)}


def online_dpo(policy_completions_logps: torch.Tensor, ref_completions_logps: torch.Tensor,
               completions_rewards: torch.Tensor, completions_lengths: torch.Tensor, beta: float = 0.1):
    """Online DPO (Guo et al., "Direct Language Model Alignment from Online AI Feedback", arXiv 2402.04792; TRL's
    `OnlineDPOTrainer`): two fresh samples per prompt, the one with the higher reward is chosen, and the DPO loss
    −log σ(β [(log π_θ − log π_ref)(y_c) − (log π_θ − log π_ref)(y_r)]) on the pair. A tie (equal rewards) says
    nothing about preference: its loss is 0 (`tie` counts them)."""
    chosen = completions_rewards.argmax(1, keepdim=True)
    rejected = 1 - chosen
    ratios = policy_completions_logps - ref_completions_logps
    margin = beta * (ratios.gather(1, chosen) - ratios.gather(1, rejected)).squeeze(1)
    tie = completions_rewards[:, 0] == completions_rewards[:, 1]
    losses = torch.where(tie, torch.zeros_like(margin), -torch.nn.functional.logsigmoid(margin))
    metrics = group_metrics(completions_rewards, completions_lengths, ratios.detach())
    return losses, {**metrics, "tie": tie.float(), "margin": margin.detach()}


register(Objective("rloo", rloo, "RLOO: leave-one-out baseline, sequence KL in the reward, clipped ratio",
                   "Ahmadian et al. 2024, arXiv 2402.14740; TRL 1.16 trl/trainer/rloo_trainer.py",
                   data_format="prompts", group=(2, None)))
register(Objective("grpo", grpo, "GRPO: group-normalised advantages, token-level clipped surrogate, k3 KL",
                   "Shao et al. 2024, arXiv 2402.03300; TRL 1.16 trl/trainer/grpo_trainer.py",
                   data_format="prompts", prepare=step_tokens, group=(2, None)))
register(Objective("reinforce_pp", reinforce_pp, "REINFORCE++: per-token KL in the reward, returns, global whitening",
                   "Hu 2025, arXiv 2501.03262; OpenRLHF experience_maker.py compute_advantages_and_returns",
                   data_format="prompts", prepare=reinforce_pp_advantages))
register(Objective("online_dpo", online_dpo, "Online DPO: the better of two fresh samples by reward is chosen",
                   "Guo et al. 2024, arXiv 2402.04792; TRL trl/experimental/online_dpo", data_format="prompts",
                   group=(2, 2)))
