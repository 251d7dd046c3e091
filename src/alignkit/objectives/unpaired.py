"""Objectives on single completions with a binary label: KTO, BCO (+UDM), and NPO-style unlearning.

KTO and BCO read the "unpaired" format (prompt, completion, label; 1 desirable / 0 undesirable). NPO and
gradient ascent read the "negative" format (forget-set completions only); NPO+RT reads "unpaired" rows,
label 0 = forget set, label 1 = retain set.
"""

from __future__ import annotations

from alignkit.lazy import lazy
from alignkit.objectives.registry import Objective, register

torch = lazy("torch")
F = lazy("torch.nn.functional")


def _desirable(labels: torch.Tensor) -> torch.Tensor:
    return labels > 0.5


def _agrees(labels: torch.Tensor, margin: torch.Tensor) -> torch.Tensor:
    """1 where the margin's sign matches the label (desirable above the reference point, undesirable below)."""
    return torch.where(_desirable(labels), margin > 0, margin < 0).to(margin.dtype).detach()


# ------------------------------------------------------------------------------------------------------ KTO


def kto(
    policy_completion_logps: torch.Tensor,
    ref_completion_logps: torch.Tensor,
    policy_kl_logps: torch.Tensor,
    ref_kl_logps: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """KTO loss per example, on summed completion log-probs.

    With r = log π(y|x) − log π_ref(y|x) and the reference point

        z0 = max(0, mean over the batch of [log π(y'|x) − log π_ref(y'|x)]), detached,

    where y' is the `kl` slot's mismatched completion:

        desirable (label 1):    λ_D · (1 − σ(β (r − z0)))
        undesirable (label 0):  λ_U · (1 − σ(β (z0 − r)))

    As TRL 1.16 `KTOTrainer(loss_type="kto")` (trl/trainer/kto_trainer.py `_compute_loss`) and Ethayarajh et
    al. 2024 (arXiv 2402.01306) Eq. 7. Two differences from TRL, both in how y' and z0 are formed, not in
    the formula: the `kl` slot pairs example i's prompt with a fixed other example's completion, built once
    at data level (the completion of dataset row i+1), whereas TRL rotates completions by one within each
    batch-sized chunk of the dataset and samples sequentially, so a TRL batch's mismatched completions are
    the same set as its completions; and z0 is the mean over this process's micro-batch (TRL also averages
    across processes). Metrics: `rewards` (β r), `kl` (z0, repeated per example) and `rewards/agree` (1 where
    r − z0 has the label's sign).
    """
    z0 = (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()
    logratios = policy_completion_logps - ref_completion_logps
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (logratios - z0)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - logratios)))
    losses = torch.where(_desirable(labels), desirable, undesirable)
    metrics = {
        "rewards": (beta * logratios).detach(),
        "kl": z0.expand_as(logratios).clone(),
        "rewards/agree": _agrees(labels, logratios - z0),
    }
    return losses, metrics


register(
    Objective(
        name="kto",
        fn=kto,
        description="Kahneman-Tversky Optimization: λ(1 − σ(±β(r − z0))) against a mismatched-pair KL point z0",
        source="Ethayarajh et al. 2024 (arXiv 2402.01306) Eq. 7; TRL 1.16 trl/trainer/kto_trainer.py",
        data_format="unpaired",
    )
)


# ------------------------------------------------------------------------------------------------------ BCO


class RunningMean:
    """Running mean of every implicit reward seen so far (BCO's reward shift δ).

    Merges each batch as TRL's `RunningMoments` does (mean += (m − mean)·n/(count + n)); the count starts
    at 1e-24, so the first batch sets the mean to its own. Saved with checkpoints via state_dict.
    """

    def __init__(self, mean: float = 0.0, count: float = 1e-24):
        self.mean, self.count = float(mean), float(count)

    def update(self, values: torch.Tensor) -> None:
        """Merge a batch of rewards (their values only: `.item()` keeps no graph)."""
        n = values.numel()
        if n == 0:
            return
        total = self.count + n
        self.mean += (values.double().mean().item() - self.mean) * n / total
        self.count = total

    def state_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.mean, self.count = float(state["mean"]), float(state["count"])


def _bco(policy_logps, ref_logps, labels, weights, state, beta, update):
    rewards = beta * (policy_logps - ref_logps)
    if state is None:  # no running state: behave as a fresh RunningMean, δ = this batch's mean reward
        state, update = RunningMean(), True
    if update:
        state.update(rewards.detach())
    delta = torch.as_tensor(state.mean, dtype=rewards.dtype, device=rewards.device)
    desirable = -F.logsigmoid(rewards - delta)
    undesirable = -F.logsigmoid(-(rewards - delta))
    if weights is not None:
        undesirable = weights * undesirable
    losses = torch.where(_desirable(labels), desirable, undesirable)
    metrics = {
        "rewards": rewards.detach(),
        "delta": delta.expand_as(rewards).clone(),
        "rewards/agree": _agrees(labels, rewards.detach() - delta),
    }
    return losses, metrics


def bco(
    policy_completion_logps: torch.Tensor,
    ref_completion_logps: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float = 0.1,
    state: RunningMean | None = None,
    update: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BCO loss per example: binary cross-entropy on the shifted implicit reward, summed log-probs.

    With r = β (log π(y|x) − log π_ref(y|x)) and δ the running mean of all rewards seen so far, updated
    with this batch's rewards (desirable and undesirable) *before* it is used:

        desirable (label 1):    −log σ(r − δ)
        undesirable (label 0):  −log σ(−(r − δ))

    As TRL's `BCOTrainer.bco_loss` (trl/experimental/bco/bco_trainer.py; not shipped in TRL 1.16) and Jung et
    al. 2024 (arXiv 2404.04656). `state` is the RunningMean the trainer keeps and checkpoints; without one δ
    is this batch's mean reward. `update=False` uses δ without updating it (TRL's evaluation). With several
    processes each keeps its own running mean over its own micro-batches (TRL gathers rewards across
    processes first). TRL's `DPOTrainer(loss_type="bco_pair")` is a different, paired loss that also drops δ.
    """
    return _bco(policy_completion_logps, ref_completion_logps, labels, None, state, beta, update)


def bco_udm(
    policy_completion_logps: torch.Tensor,
    ref_completion_logps: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    *,
    beta: float = 0.1,
    min_density_ratio: float = 0.5,
    max_density_ratio: float = 10.0,
    state: RunningMean | None = None,
    update: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """BCO with underlying distribution matching: the undesirable loss is weighted by w(x).

    `scores[:, 0]` holds w(x) = p(x)/(1 − p(x)), p(x) = P(desirable | prompt embedding), precomputed per
    example (see `alignkit.objectives.udm.density_ratio_weights`); it is clamped to
    [min_density_ratio, max_density_ratio] and multiplies only undesirable examples' loss, as TRL's
    `BCOTrainer(prompt_sample_size=..., embedding_func=...)`. Otherwise identical to `bco`.
    """
    weights = scores[:, 0].clamp(min=min_density_ratio, max=max_density_ratio)
    return _bco(policy_completion_logps, ref_completion_logps, labels, weights, state, beta, update)


_BCO_SOURCE = "Jung et al. 2024 (arXiv 2404.04656); TRL trl/experimental/bco/bco_trainer.py bco_loss"
register(
    Objective(
        name="bco",
        fn=bco,
        description="Binary Classifier Optimization: BCE on β·log-ratio shifted by a running reward mean δ",
        source=_BCO_SOURCE,
        data_format="unpaired",
        state=RunningMean,
    )
)
register(
    Objective(
        name="bco_udm",
        fn=bco_udm,
        description="BCO with UDM: undesirable losses weighted by a precomputed prompt density ratio (scores)",
        source=_BCO_SOURCE,
        data_format="unpaired",
        state=RunningMean,
    )
)


# ------------------------------------------------------------------------------------------------ unlearning


def npo(
    policy_completion_logps: torch.Tensor,
    ref_completion_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative Preference Optimization per forget example, on summed completion log-probs.

        loss = −(2/β) log σ(−β (log π(y|x) − log π_ref(y|x))) = (2/β) log(1 + (π/π_ref)^β)

    Zhang et al. 2024 (arXiv 2404.05868) Eq. 3; as licong-lin/negative-preference-optimization
    TOFU/dataloader.py (`npo`: summed per-sequence NLL, `-logsigmoid(β·neg_log_ratio)·2/β`). It equals
    (2/β) ln 2 at π = π_ref and its gradient tends to the gradient of log π(y|x) (summed gradient ascent)
    as β → 0. Metric `rewards`: β · log-ratio.
    """
    logratios = policy_completion_logps - ref_completion_logps
    losses = (2.0 / beta) * F.softplus(beta * logratios)
    return losses, {"rewards": (beta * logratios).detach()}


def gradient_ascent(
    policy_completion_logps: torch.Tensor,
    completion_lengths: torch.Tensor,
    *,
    normalize: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Gradient ascent on the forget set: the negated NLL, the baseline NPO is compared with.

    loss = log π(y|x) / |y| (token-mean, `normalize=True`, as the NPO code's `-outputs.loss`, which averages
    over all tokens of the batch rather than per sequence) or log π(y|x) (summed, `normalize=False`, the
    paper's L_GA). Reference-free. Metric `nll`: token-mean NLL.
    """
    mean = policy_completion_logps / completion_lengths.clamp(min=1.0)
    losses = mean if normalize else policy_completion_logps
    return losses, {"nll": (-mean).detach()}


def npo_rt(
    policy_completion_logps: torch.Tensor,
    ref_completion_logps: torch.Tensor,
    completion_lengths: torch.Tensor,
    labels: torch.Tensor,
    *,
    beta: float = 0.1,
    npo_weight: float = 1.0,
    retain_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """NPO + retain loss: label 0 rows are the forget set, label 1 rows the retain set.

        forget (label 0):  c_npo · (2/β) softplus(β (log π(y|x) − log π_ref(y|x)))
        retain (label 1):  c_rt · (−log π(y|x) / |y|)          (token-mean NLL)

    The NPO code (`npo_grad_diff`) adds the forget-batch mean and the retain-batch mean; here every row's
    loss is averaged over the step, so with n_f forget and n_r retain rows out of B the weights are
    effectively c_npo·n_f/B and c_rt·n_r/B (half the code's loss when the two sets are balanced).
    Metrics: `rewards` (β · log-ratio) and `nll` (token-mean NLL), for every row.
    """
    logratios = policy_completion_logps - ref_completion_logps
    nll = -policy_completion_logps / completion_lengths.clamp(min=1.0)
    forget = npo_weight * (2.0 / beta) * F.softplus(beta * logratios)
    losses = torch.where(_desirable(labels), retain_weight * nll, forget)
    return losses, {"rewards": (beta * logratios).detach(), "nll": nll.detach()}


_NPO_SOURCE = "Zhang et al. 2024 (arXiv 2404.05868) Eq. 3; licong-lin/negative-preference-optimization TOFU/dataloader.py"
register(
    Objective(
        name="npo",
        fn=npo,
        description="Negative Preference Optimization: (2/β)·softplus(β·log-ratio) on forget-set completions",
        source=_NPO_SOURCE,
        data_format="negative",
    )
)
register(
    Objective(
        name="npo_rt",
        fn=npo_rt,
        description="NPO on label-0 (forget) rows + token-mean NLL on label-1 (retain) rows",
        source=_NPO_SOURCE,
        data_format="unpaired",
    )
)
register(
    Objective(
        name="gradient_ascent",
        fn=gradient_ascent,
        description="Gradient ascent on forget-set completions (minimises the token-mean log-prob)",
        source="NPO baseline; licong-lin/negative-preference-optimization TOFU/dataloader.py grad_ascent",
        data_format="negative",
    )
)
