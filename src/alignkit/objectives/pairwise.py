"""Pairwise preference objectives beyond DPO: IPO, SLiC hinge, SimPO, ORPO, RPO, ASFT and JPO.

Each reads the log-probs of a chosen (y_w) and a rejected (y_l) completion, summed or token-averaged as its
declaration's `logps` says; a_w, a_l below are token-averaged policy log-probs (log π(y|x) / |y|).
"""

from __future__ import annotations

import math

from alignkit.lazy import lazy
from alignkit.objectives.dpo import dpo, logistic_loss, preference_metrics
from alignkit.objectives.registry import Objective, register
from alignkit.objectives.sft import nll_term

torch = lazy("torch")
F = lazy("torch.nn.functional")

Result = "tuple[torch.Tensor, dict[str, torch.Tensor]]"


def log1mexp(a: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(a)) for a ≤ 0, accurate on both sides of −ln 2 (Mächler 2012). Each branch only sees
    arguments where it is accurate, so neither produces an inf that would poison the other's gradient."""
    cut = -math.log(2.0)
    near_zero = torch.log(-torch.expm1(a.clamp(min=cut)))
    far = torch.log1p(-torch.exp(a.clamp(max=cut)))
    return torch.where(a > cut, near_zero, far)


def ipo(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor, *, beta: float = 0.1) -> Result:
    """IPO (Azar et al. 2023, arXiv 2310.12036, Eq. 17) on token-averaged log-probs; β plays the role of τ.

        h = (a_w − a_w^ref) − (a_l − a_l^ref),   loss = (h − 1/(2β))²

    The per-token averaging is TRL 1.16's (DPOTrainer ``loss_type="ipo"``, which its authors report confirmed
    with the IPO authors). At π = π_ref the loss is 1/(4β²); it is minimal, with zero gradient, at h = 1/(2β).

    Metrics: ``rewards/chosen`` = β·(a_w − a_w^ref) and ``rewards/rejected`` likewise, i.e. β times the
    *token-averaged* log-ratio that the loss uses. TRL's DPOTrainer logs β times the *summed* log-ratio for
    every loss type, IPO included, so TRL's IPO reward margins are larger by about the completion length and
    its reward accuracies differ on the pairs where the two completions' lengths reverse the sign; compare
    losses, not rewards, with a TRL IPO run.
    """
    chosen = policy_chosen_logps - ref_chosen_logps
    rejected = policy_rejected_logps - ref_rejected_logps
    losses = (chosen - rejected - 1.0 / (2.0 * beta)) ** 2
    return losses, preference_metrics(beta * chosen, beta * rejected)


def hinge(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
          ref_rejected_logps: torch.Tensor, *, beta: float = 0.1) -> Result:
    """SLiC-HF hinge loss (Zhao et al. 2023, arXiv 2305.10425) with DPO's log-ratios, on summed log-probs:

        loss = max(0, 1 − β Δ),   Δ = (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))

    β is the inverse margin (TRL 1.16 DPOTrainer ``loss_type="hinge"``). 1 at π = π_ref; no gradient once βΔ > 1.
    """
    chosen = beta * (policy_chosen_logps - ref_chosen_logps)
    rejected = beta * (policy_rejected_logps - ref_rejected_logps)
    losses = torch.relu(1.0 - (chosen - rejected))
    return losses, preference_metrics(chosen, rejected)


def simpo(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, *, beta: float = 2.5,
          gamma: float = 1.375, label_smoothing: float = 0.0) -> Result:
    """SimPO (Meng, Xia, Chen 2024, arXiv 2405.14734): reference-free, on token-averaged log-probs.

        z = β (a_w − a_l) − γ,   loss = −(1 − ε) log σ(z) − ε log σ(−z)

    TRL 1.16 writes z = β ((a_w − a_l) − γ/β) (experimental CPOTrainer ``loss_type="simpo"``, ``cpo_alpha=0``).
    Defaults β = 2.5, γ = 1.375 (γ/β = 0.55) from TRL's paper index; ε = label_smoothing = 0 is the paper's
    loss. Implicit rewards are β·a. A tie (a_w = a_l) still costs softplus(γ) > ln 2.
    """
    chosen, rejected = beta * policy_chosen_logps, beta * policy_rejected_logps
    losses = logistic_loss(chosen - rejected - gamma, label_smoothing)
    return losses, preference_metrics(chosen, rejected)


def orpo(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, *, lam: float = 0.1) -> Result:
    """ORPO (Hong, Lee, Thorne 2024, arXiv 2403.07691), reference-free, on token-averaged log-probs a = log p:

        log odds(y) = a − log(1 − e^a),   ℓ = log odds(y_w) − log odds(y_l)
        loss = −a_w − λ log σ(ℓ)

    −a_w is the chosen completion's per-token NLL. λ = 0.1 (TRL calls it ``beta``). The odds-ratio term is
    TRL 1.16's ``ORPOTrainer.odds_ratio_loss``; TRL's NLL term differs: a cross-entropy pooled over the batch
    that also scores the prompt tokens, where this one is per example and over completion tokens only.
    Metrics: ``nll`` (−a_w), ``log_odds`` (ℓ), rewards λ·a as TRL logs them.
    """
    log_odds = (policy_chosen_logps - policy_rejected_logps) - (
        log1mexp(policy_chosen_logps) - log1mexp(policy_rejected_logps))
    nll = -policy_chosen_logps
    losses = nll - lam * F.logsigmoid(log_odds)
    metrics = preference_metrics(lam * policy_chosen_logps, lam * policy_rejected_logps)
    return losses, {**metrics, "nll": nll.detach(), "log_odds": log_odds.detach()}


RPO_REDUCTIONS = ("sum_times_beta", "token_mean", "batch_token_mean")


def rpo(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor, *, chosen_lengths: torch.Tensor, beta: float = 0.01, eta: float = 0.005,
        label_smoothing: float = 0.0, sft_reduction: str = "sum_times_beta") -> Result:
    """RPO (Liu et al. 2024, arXiv 2405.16436): DPO on summed log-probs plus an NLL term on the chosen completion.

    ``sft_reduction`` picks the NLL term (S_w = Σ_t log π(y_w,t | ·), n_w its token count):

    * ``"sum_times_beta"`` (default, the paper's main "cumulative" form, official code
      YSLIU627/Regularized-Preference-Optimization alignment-handbook/scripts/rpo_trainer.py ``dpo_loss``):
      loss = DPO − η β S_w;
    * ``"token_mean"``: loss = DPO + η (−S_w / n_w), per example; the official "average" form (same repo,
      OpenRLHF/openrlhf/trainer/dpo_trainer.py, ``nll_loss_coef`` = η) and TRL's DPOTrainer
      ``loss_type=["sigmoid", "sft"], loss_weights=[1, η]`` when all chosen completions have one length;
    * ``"batch_token_mean"``: the token mean pooled over the batch, −S_w · B / Σ n (see `sft.nll_term`), which
      matches TRL's form exactly for any lengths, but depends on how examples are batched.

    Defaults β = 0.01, η = 0.005 (Zephyr recipe of the official repo); label_smoothing is cDPO's ε, as in the
    official code. Metrics: DPO's rewards, ``nll`` (−S_w / n_w) and ``dpo_loss``.
    """
    if sft_reduction not in RPO_REDUCTIONS:
        raise ValueError(f"unknown sft_reduction {sft_reduction!r}; expected one of {RPO_REDUCTIONS}")
    dpo_losses, metrics = dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                              beta=beta, label_smoothing=label_smoothing)
    if sft_reduction == "sum_times_beta":
        regulariser = eta * beta * nll_term(policy_chosen_logps, chosen_lengths, "sum")
    else:
        regulariser = eta * nll_term(policy_chosen_logps, chosen_lengths, sft_reduction)
    nll = -policy_chosen_logps / chosen_lengths.clamp(min=1.0)
    return dpo_losses + regulariser, {**metrics, "nll": nll.detach(), "dpo_loss": dpo_losses.detach()}


def asft(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, *, lam: float = 1.0,
         beta: float = 1.0) -> Result:
    """ASFT (Wang, Sun, Hua, Fang 2024, arXiv 2409.10571), reference-free, on token-averaged log-probs.

    With p(y) = π(y|x)^(1/|y|) = e^a and r(y) = log(p / (1 − p)) = a − log(1 − e^a):

        loss = −a_w − λ [log σ(β r(y_w)) + log σ(−β r(y_l))]

    a pointwise BCE on each response's absolute likelihood plus the chosen per-token NLL; at β = 1 this is
    −(1 + λ) a_w − λ log(1 − e^(a_l)). The formula is the restatement in Gorbatovski et al. 2025 (arXiv
    2502.01237, §2.4 and App. A); the ASFT paper's equation was not checked (UNVERIFIED), nor was a default λ
    found: λ = 1.0 here is our choice. β = 1 is ASFT; other β is that paper's "ASFT-Align" temperature.
    Metrics: ``nll`` (−a_w), rewards β·r.
    """
    chosen = beta * (policy_chosen_logps - log1mexp(policy_chosen_logps))
    rejected = beta * (policy_rejected_logps - log1mexp(policy_rejected_logps))
    nll = -policy_chosen_logps
    losses = nll - lam * (F.logsigmoid(chosen) + F.logsigmoid(-rejected))
    return losses, {**preference_metrics(chosen, rejected), "nll": nll.detach()}


def jpo(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor, *, beta: float = 0.1, label_smoothing: float = 0.0) -> Result:
    """JPO (Bansal et al. 2024, arXiv 2404.00530; code "DOVE"): DPO over joint pairs (x_w, y_w) ≻ (x_l, y_l)
    whose prompts may differ; each completion is scored under its own prompt, on summed log-probs:

        loss = −log σ(β [(log π(y_w|x_w) − log π_ref(y_w|x_w)) − (log π(y_l|x_l) − log π_ref(y_l|x_l))])

    (cDPO's ε = label_smoothing as in the TRL DPOTrainer that the official code subclasses). The paper
    speaks of the joint probability of instruction and response; the official code
    (Hritikbansal/dove, dove/custom_dove_trainer.py) scores completion tokens only unless
    ``joint_distribution=True``, and that default, the conditional form, is what the trainer computes here
    (the "joint" data format; prompt tokens are never scored). Whether the prompt terms cancel in the
    paper's derivation is UNVERIFIED. β = 0.1 (dove/train.py).
    """
    return dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
               beta=beta, label_smoothing=label_smoothing)


register(Objective(
    name="ipo", fn=ipo, logps="mean",
    description="IPO: (Δ − 1/(2β))² on token-averaged log-ratios (β plays τ)",
    source="Azar et al. 2023 (arXiv 2310.12036) Eq. 17; TRL 1.16 DPOTrainer loss_type='ipo'",
))
register(Objective(
    name="hinge", fn=hinge,
    description="SLiC hinge: max(0, 1 − β Δ) on summed log-ratios",
    source="Zhao et al. 2023 (arXiv 2305.10425); TRL 1.16 DPOTrainer loss_type='hinge'",
))
register(Objective(
    name="simpo", fn=simpo, logps="mean",
    description="SimPO: −log σ(β (a_w − a_l) − γ), reference-free, token-averaged log-probs",
    source="Meng et al. 2024 (arXiv 2405.14734); TRL 1.16 experimental CPOTrainer loss_type='simpo'",
))
register(Objective(
    name="orpo", fn=orpo, logps="mean",
    description="ORPO: chosen per-token NLL − λ log σ(log odds ratio), reference-free",
    source="Hong et al. 2024 (arXiv 2403.07691); TRL 1.16 experimental ORPOTrainer.odds_ratio_loss",
))
register(Objective(
    name="rpo", fn=rpo,
    description="RPO: DPO − η β log π(y_w) (or DPO + η · token-mean NLL of y_w)",
    source="Liu et al. 2024 (arXiv 2405.16436); YSLIU627/Regularized-Preference-Optimization rpo_trainer.py",
))
register(Objective(
    name="asft", fn=asft, logps="mean",
    description="ASFT: chosen per-token NLL + λ · pointwise log-odds BCE, reference-free",
    source="Wang et al. 2024 (arXiv 2409.10571) as restated by Gorbatovski et al. 2025 (arXiv 2502.01237)",
))
register(Objective(
    name="jpo", fn=jpo, data_format="joint",
    description="JPO: DPO across pairs with different prompts, each side under its own prompt",
    source="Bansal et al. 2024 (arXiv 2404.00530); Hritikbansal/dove dove/custom_dove_trainer.py",
))
