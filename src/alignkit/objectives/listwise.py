"""Objectives over several completions per prompt (D2O, LOGO, AFT) and PoFT on SFT data with teacher scores.

List slots arrive as [B, M] tensors: M completions per example, in the data's order.
"""

from __future__ import annotations

from typing import Literal

from alignkit.lazy import lazy
from alignkit.objectives.dpo import preference_metrics
from alignkit.objectives.registry import Objective, register

torch = lazy("torch")
F = lazy("torch.nn.functional")

# ------------------------------------------------------------------------------------------------------ D2O


def d2o(
    policy_samples_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_samples_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Distributional Dispreference Optimization per example, on summed log-probs.

    With K self-generated samples y_1..y_K ([B, K]) and one human-annotated negative y_l ([B]):

        z    = (β/K) Σ_i [log π(y_i|x) − log π_r⁻(y_i|x)] − α [log π(y_l|x) − log π_r⁺(y_l|x)]
        loss = −log σ(z)

    Duan et al. 2024 (arXiv 2403.03419) Eq. 3, read from a secondary copy of the paper and a third-party
    implementation, not from the paper itself (UNVERIFIED; no official code located). Both references
    π_r⁻ (for the samples) and π_r⁺ (for the negative) are the one reference model, the paper's setting
    (both the original model). The reference-update and online-resampling schedule is outside the loss
    and not implemented: samples are offline draws from the reference. At π = π_ref the loss is ln 2.
    Metrics: `rewards/chosen` (the sample term), `rewards/rejected` (the negative term, α·log-ratio),
    `rewards/margins` (z), `rewards/accuracies` (z > 0).
    """
    samples = beta * (policy_samples_logps - ref_samples_logps).mean(dim=1)
    negative = alpha * (policy_rejected_logps - ref_rejected_logps)
    losses = -F.logsigmoid(samples - negative)
    return losses, preference_metrics(samples, negative)


register(
    Objective(
        name="d2o",
        fn=d2o,
        description="D2O: −log σ((β/K)Σ log-ratio(self samples) − α·log-ratio(human negative))",
        source="Duan et al. 2024 (arXiv 2403.03419) Eq. 3 (secondary copy; UNVERIFIED)",
        data_format="samples",
    )
)


# ----------------------------------------------------------------------------------------------------- LOGO


def logo(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    *,
    beta: float = 10.0,
    gamma_beta_ratio: float = 0.3,
    sft_weight: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """LOGO per example: reference-free, on token-mean log-probs a(y) of 1 preferred and M dispreferred.

        loss = −log σ(β [a(y_w) − (1/M) Σ_j a(y_l^j)] − γ) + λ · (−a(y_w)),   γ = β · gamma_beta_ratio

    Tang et al. 2024 (arXiv 2410.18533), as ZetangForward/LCM_Stack training/logo_train.py with the mean over
    the M negatives taken cleanly. Differences from the released code, none offered as a flag: it scores only
    the token span where the chosen and rejected labels differ (here: each whole completion); its slice of
    the second negative also holds the first, so at M = 2 its margin mixes a(y_l¹) and (a(y_l¹)+a(y_l²))/2;
    and its SFT cross-entropy may be computed on unshifted logits (here: the token-mean NLL of y_w).
    `policy_chosen_logps` must be [B, 1]. Metrics as DPO's, with β·a(y_w) and β·mean a(y_l) as rewards.
    """
    if policy_chosen_logps.ndim != 2 or policy_chosen_logps.size(1) != 1:
        raise ValueError(f"logo takes one preferred completion per example; chosen is {tuple(policy_chosen_logps.shape)}")
    chosen = policy_chosen_logps[:, 0]
    rejected = policy_rejected_logps.mean(dim=1)
    losses = -F.logsigmoid(beta * (chosen - rejected) - beta * gamma_beta_ratio) - sft_weight * chosen
    metrics = preference_metrics(beta * chosen, beta * rejected)
    metrics["nll"] = (-chosen).detach()
    return losses, metrics


register(
    Objective(
        name="logo",
        fn=logo,
        description="LOGO: reference-free −log σ(β(a_w − mean a_l) − γ) + λ·NLL(y_w) on token-mean log-probs",
        source="Tang et al. 2024 (arXiv 2410.18533); ZetangForward/LCM_Stack training/logo_train.py",
        data_format="list",
        logps="mean",
    )
)


# ------------------------------------------------------------------------------------------------------ AFT

Constraint = Literal["none", "detached", "boundary"]


def _constrained_gaps(higher: torch.Tensor, lower: torch.Tensor, constraint: Constraint, boundary: float):
    """s_lower − s_higher for the AFT constraint variants (shapes broadcast)."""
    if constraint == "detached":
        return lower.detach() - higher
    gaps = lower - higher
    if constraint == "boundary":
        return gaps.clamp(min=-boundary)
    if constraint == "none":
        return gaps
    raise ValueError(f"constraint must be 'none', 'detached' or 'boundary', got {constraint!r}")


def _log1p_sum_exp(gaps: torch.Tensor) -> torch.Tensor:
    """log(1 + Σ exp(gaps)) over all but the batch dimension, stably."""
    flat = gaps.flatten(1)
    return torch.logsumexp(torch.cat([torch.zeros_like(flat[:, :1]), flat], dim=1), dim=1)


def aft(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    *,
    vft_weight: float = 1.0,
    constraint: Constraint = "detached",
    boundary: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Alignment Fine-Tuning with binary feedback, on token-mean log-probs s (the paper's CoT scores).

    With P positive (correct-answer) CoTs s_p ([B, P]) and N negative ones s_n ([B, N]):

        loss = vft_weight · (1/P) Σ_p (−s_p) + log(1 + Σ_p Σ_n exp(g(s_n, s_p)))

    Wang et al. 2023 (arXiv 2309.02144) L_AFT = L_VFT + L_A*. The ranking term and both constraints are
    reconstructed from fragments (UNVERIFIED; no public code). `constraint`:
    "detached" (default; §4.3.1, "the gradient of negative scores is detached"): g = sg(s_n) − s_p, so
    negatives are never pushed down, only positives up; "boundary" (§4.3.2, form from a secondary
    summary): g = max(s_n − s_p, −boundary), which stops pushing once a negative is `boundary` below a
    positive; "none": g = s_n − s_p, the unconstrained ranking loss. Here the VFT term is the NLL of the
    positive CoTs. Metrics: `rewards/chosen` (mean s_p), `rewards/rejected` (mean s_n), margins,
    accuracies (every positive above every negative).
    """
    gaps = _constrained_gaps(policy_chosen_logps[:, :, None], policy_rejected_logps[:, None, :], constraint, boundary)
    losses = -vft_weight * policy_chosen_logps.mean(dim=1) + _log1p_sum_exp(gaps)
    metrics = preference_metrics(policy_chosen_logps.mean(dim=1), policy_rejected_logps.mean(dim=1))
    worst_gap = policy_chosen_logps.min(dim=1).values - policy_rejected_logps.max(dim=1).values
    metrics["rewards/accuracies"] = (worst_gap > 0).to(policy_chosen_logps.dtype).detach()
    return losses, metrics


def aft_rank(
    policy_ranked_logps: torch.Tensor,
    *,
    vft_weight: float = 1.0,
    constraint: Constraint = "detached",
    boundary: float = 1.0,
    form: Literal["pairwise", "listwise"] = "pairwise",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """AFT with ranking feedback: K CoTs best first ([B, K] token-mean log-probs s_1 ≥ … ≥ s_K in quality).

        pairwise (default):  loss = vft_weight · (−s_1) + Σ_{i<j} log(1 + exp(g(s_j, s_i)))
        listwise:            loss = vft_weight · (−s_1) + Σ_i log(1 + Σ_{j>i} exp(g(s_j, s_i)))

    g and `constraint` as in `aft`, with the lower-ranked CoT in the negative's role (so "detached" never
    pushes any CoT down). The paper has a ranking extension whose exact form was not read: both forms are
    UNVERIFIED generalisations of the binary loss (pairwise as RRHF/DPO-style pair sums, listwise as PRO).
    Ties in the ranking are not modelled. Metrics: `rewards/chosen` (s_1), `rewards/rejected` (s_K),
    margins, accuracies (scores strictly ordered as ranked).
    """
    k = policy_ranked_logps.size(1)
    gaps = _constrained_gaps(policy_ranked_logps[:, :, None], policy_ranked_logps[:, None, :], constraint, boundary)
    below = torch.ones(k, k, dtype=torch.bool, device=gaps.device).triu(diagonal=1)  # [i, j]: j ranked below i
    if form == "pairwise":
        ranking = torch.where(below, F.softplus(gaps), torch.zeros_like(gaps)).sum(dim=(1, 2))
    elif form == "listwise":
        masked = gaps.masked_fill(~below, float("-inf"))
        with_one = torch.cat([torch.zeros_like(masked[:, :, :1]), masked], dim=2)
        ranking = torch.logsumexp(with_one, dim=2).sum(dim=1)
    else:
        raise ValueError(f"form must be 'pairwise' or 'listwise', got {form!r}")
    losses = -vft_weight * policy_ranked_logps[:, 0] + ranking
    metrics = preference_metrics(policy_ranked_logps[:, 0], policy_ranked_logps[:, -1])
    ordered = (policy_ranked_logps[:, :-1] > policy_ranked_logps[:, 1:]).all(dim=1)
    metrics["rewards/accuracies"] = ordered.to(policy_ranked_logps.dtype).detach()
    return losses, metrics


_AFT_SOURCE = "Wang et al. 2023 (arXiv 2309.02144) L_AFT = L_VFT + L_A* (constraint forms UNVERIFIED)"
register(
    Objective(
        name="aft",
        fn=aft,
        description="AFT: NLL(positives) + log(1 + ΣΣ exp(s_n − s_p)) with a detached/boundary constraint",
        source=_AFT_SOURCE,
        data_format="list",
        logps="mean",
    )
)
register(
    Objective(
        name="aft_rank",
        fn=aft_rank,
        description="AFT with ranking feedback: NLL(best) + pairwise (or PRO-style) constrained ranking loss",
        source=_AFT_SOURCE + "; ranking form UNVERIFIED",
        data_format="ranked",
        logps="mean",
    )
)


# ----------------------------------------------------------------------------------------------------- PoFT


def poft(
    policy_completion_logps: torch.Tensor,
    scores: torch.Tensor,
    *,
    beta: float = 1.0,
    aggregate: Literal["mean", "max", "min"] = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Preference-oriented SFT: Bradley-Terry preference of the target model over aligned LLMs.

        loss = −log σ(β (s_θ(x, y) − s_A(x, y)))

    s_θ is the policy's token-mean log-prob of the SFT completion; `scores` [B, m] holds the m aligned
    LLMs' token-mean log-probs of the same completion (precomputed, each with its own tokenizer/template),
    reduced to s_A by `aggregate`. Fan et al. 2024 (arXiv 2412.12865). UNVERIFIED (no code located): the
    normalisation (token-mean assumed), the aggregation over aligned LLMs ("mean" default; "max"/"min"
    offered) and any temperature (β = 1 default). The gradient is −β σ(β(s_A − s_θ))·∇s_θ: completions the
    aligned LLMs rate low relative to θ get smaller weight. Metrics: `rewards/chosen` (s_θ),
    `rewards/rejected` (s_A), margins, accuracies (s_θ > s_A).
    """
    if scores.ndim != 2 or scores.size(1) == 0:
        raise ValueError(f"poft needs scores [B, m] with m ≥ 1, got {tuple(scores.shape)}")
    if aggregate == "mean":
        aligned = scores.mean(dim=1)
    elif aggregate == "max":
        aligned = scores.max(dim=1).values
    elif aggregate == "min":
        aligned = scores.min(dim=1).values
    else:
        raise ValueError(f"aggregate must be 'mean', 'max' or 'min', got {aggregate!r}")
    aligned = aligned.to(policy_completion_logps.dtype)
    losses = -F.logsigmoid(beta * (policy_completion_logps - aligned))
    return losses, preference_metrics(policy_completion_logps, aligned)


register(
    Objective(
        name="poft",
        fn=poft,
        description="PoFT: −log σ(β(s_θ − s_A)) against aligned LLMs' precomputed token-mean log-probs (scores)",
        source="Fan et al. 2024 (arXiv 2412.12865) (loss form consistent with the paper; details UNVERIFIED)",
        data_format="sft",
        logps="mean",
    )
)
