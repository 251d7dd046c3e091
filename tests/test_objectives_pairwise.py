"""IPO, hinge, SimPO, ORPO, RPO, ASFT, JPO and SFT: closed-form values and gradients computed by hand, invariants,
the registry, parity with TRL 1.16, and RPO / JPO against formulas transcribed from their official code."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_llama

from alignkit.models.logprobs import CompletionScorer, pair_logps
from alignkit.objectives import KNOWN_INPUTS, asft, available, dpo, get, hinge, ipo, jpo, orpo, rpo, sft, simpo
from alignkit.objectives.pairwise import log1mexp
from alignkit.objectives.registry import FORMATS

LN2 = math.log(2.0)
TOL = 1e-12


def softplus(x: float) -> float:
    """log(1 + exp(x)) = −log σ(−x)."""
    return math.log1p(math.exp(x)) if x < 30 else x + math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def log_odds(a: float) -> float:
    """log(p / (1 − p)) with p = exp(a), the naive way (fine in float64 away from a = 0)."""
    p = math.exp(a)
    return math.log(p / (1.0 - p))


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def leaves(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [x.clone().requires_grad_() for x in tensors]


# Summed log-probs, four pairs (β = 0.5). Log-ratios, policy − reference:
#   pair 0: chosen −10 − (−11) = 1,  rejected −12 − (−11.5) = −0.5 → Δ = 1.5, βΔ = 0.75
#   pair 1: chosen −4 − (−3.5) = −0.5, rejected −3 − (−3.5) = 0.5  → Δ = −1,  βΔ = −0.5
#   pair 2: all equal                                               → Δ = 0
#   pair 3: chosen −2 − (−3) = 1,    rejected −5 − (−3) = −2        → Δ = 3,   βΔ = 1.5
PC, PR = t([-10.0, -4.0, -6.0, -2.0]), t([-12.0, -3.0, -6.0, -5.0])
RC, RR = t([-11.0, -3.5, -6.0, -3.0]), t([-11.5, -3.5, -6.0, -3.0])
BETA = 0.5
BETA_DELTA = [0.75, -0.5, 0.0, 1.5]
LENGTHS = t([4.0, 2.0, 3.0, 1.0])  # chosen token counts

# Token-averaged policy log-probs for the reference-free objectives.
AW, AL = t([-0.3, -1.5, -2.0, -0.05]), t([-1.2, -0.4, -2.0, -3.0])


# ---------------------------------------------------------------------------------------------------------- IPO

def test_ipo_closed_form():
    # token-averaged log-ratios; β = 0.5 → target margin 1/(2β) = 1
    # pair 0: 0.5 − (−1) = 1.5;  pair 1: 0 − 0.5 = −0.5;  pair 2: 0
    pc, pr, rc, rr = t([-1.0, -2.0, -0.5]), t([-2.0, -1.0, -0.7]), t([-1.5, -2.0, -0.5]), t([-1.0, -1.5, -0.7])
    losses, metrics = ipo(pc, pr, rc, rr, beta=0.5)
    assert losses.tolist() == pytest.approx([0.25, 2.25, 1.0], abs=TOL)
    assert metrics["rewards/margins"].tolist() == pytest.approx([0.75, -0.25, 0.0], abs=TOL)
    assert metrics["rewards/accuracies"].tolist() == [1.0, 0.0, 0.0]


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_ipo_at_reference_and_at_its_optimum(beta):
    logps = t([-3.0, -0.2, -7.5])
    losses, _ = ipo(logps, logps - 1.0, logps.clone(), logps - 1.0, beta=beta)
    assert losses.tolist() == pytest.approx([1 / (4 * beta**2)] * 3, abs=TOL)  # (0 − 1/(2β))²
    # d loss / d policy_chosen = 2 (h − 1/(2β)): zero at h = 1/(2β), pulls back beyond it
    h = t([1 / (2 * beta), 1 / (2 * beta) + 0.3, -0.4])
    pc, pr = leaves(h, torch.zeros(3, dtype=torch.float64))
    zero = torch.zeros(3, dtype=torch.float64)
    ipo(pc, pr, zero, zero, beta=beta)[0].sum().backward()
    expected = [2 * (x - 1 / (2 * beta)) for x in h.tolist()]
    assert pc.grad.tolist() == pytest.approx(expected, abs=TOL)
    assert pc.grad[0].item() == 0.0 and pc.grad[1].item() > 0
    assert pr.grad.tolist() == pytest.approx([-g for g in expected], abs=TOL)


def test_ipo_default_beta():
    zero = torch.zeros(2, dtype=torch.float64)
    assert ipo(zero, zero, zero, zero)[0].tolist() == pytest.approx([25.0, 25.0], abs=TOL)  # (1/(2·0.1))²


# -------------------------------------------------------------------------------------------------------- hinge

def test_hinge_closed_form_and_gradient():
    pc, pr, rc, rr = leaves(PC, PR, RC, RR)
    losses, metrics = hinge(pc, pr, rc, rr, beta=BETA)
    assert losses.tolist() == pytest.approx([0.25, 1.5, 1.0, 0.0], abs=TOL)  # max(0, 1 − βΔ)
    assert metrics["rewards/margins"].tolist() == pytest.approx(BETA_DELTA, abs=TOL)
    losses.sum().backward()
    assert pc.grad.tolist() == pytest.approx([-0.5, -0.5, -0.5, 0.0], abs=TOL)  # −β inside the margin, 0 past it
    assert rc.grad.tolist() == pytest.approx([0.5, 0.5, 0.5, 0.0], abs=TOL)


def test_hinge_is_one_at_reference_and_depends_only_on_the_margin():
    assert hinge(PC, PR, PC.clone(), PR.clone(), beta=0.3)[0].tolist() == [1.0] * 4
    shifted = hinge(PC + 5.0, PR + 5.0, RC - 2.0, RR - 2.0, beta=BETA)[0]
    assert torch.allclose(shifted, hinge(PC, PR, RC, RR, beta=BETA)[0], rtol=0, atol=TOL)


# -------------------------------------------------------------------------------------------------------- SimPO

def test_simpo_closed_form_defaults():
    aw, al = t([-0.8, -1.2, -1.0]), t([-1.4, -1.0, -1.0])
    losses, metrics = simpo(aw, al)  # β = 2.5, γ = 1.375
    z = [2.5 * 0.6 - 1.375, 2.5 * -0.2 - 1.375, -1.375]
    assert losses.tolist() == pytest.approx([softplus(-x) for x in z], abs=TOL)
    assert losses[2].item() == pytest.approx(softplus(1.375), abs=TOL) and losses[2].item() > LN2  # a tie still costs
    assert metrics["rewards/chosen"].tolist() == pytest.approx([-2.0, -3.0, -2.5], abs=TOL)
    assert metrics["rewards/margins"].tolist() == pytest.approx([1.5, -0.5, 0.0], abs=TOL)


def test_simpo_label_smoothing_and_gradient():
    eps, beta, gamma = 0.2, 2.0, 0.5
    aw, al = leaves(AW, AL)
    losses, _ = simpo(aw, al, beta=beta, gamma=gamma, label_smoothing=eps)
    z = [beta * (w - l) - gamma for w, l in zip(AW.tolist(), AL.tolist())]
    assert losses.tolist() == pytest.approx([(1 - eps) * softplus(-x) + eps * softplus(x) for x in z], abs=TOL)
    losses.sum().backward()
    d_z = [-(1 - eps) * sigmoid(-x) + eps * sigmoid(x) for x in z]
    assert aw.grad.tolist() == pytest.approx([beta * g for g in d_z], abs=TOL)
    assert al.grad.tolist() == pytest.approx([-beta * g for g in d_z], abs=TOL)
    with pytest.raises(ValueError, match="label_smoothing"):
        simpo(AW, AL, label_smoothing=0.5)


def test_simpo_is_shift_invariant():
    assert torch.allclose(simpo(AW - 0.7, AL - 0.7)[0], simpo(AW, AL)[0], rtol=0, atol=TOL)


# --------------------------------------------------------------------------------------------------------- ORPO

def test_orpo_closed_form_and_metrics():
    lam = 0.1
    losses, metrics = orpo(AW, AL)
    ratios = [log_odds(w) - log_odds(l) for w, l in zip(AW.tolist(), AL.tolist())]
    expected = [-w + lam * softplus(-r) for w, r in zip(AW.tolist(), ratios)]
    assert losses.tolist() == pytest.approx(expected, abs=1e-10)
    assert losses[2].item() == pytest.approx(2.0 + lam * LN2, abs=TOL)  # a tie: log odds ratio 0
    assert metrics["log_odds"].tolist() == pytest.approx(ratios, abs=1e-10)
    assert metrics["nll"].tolist() == pytest.approx([0.3, 1.5, 2.0, 0.05], abs=TOL)
    assert metrics["rewards/chosen"].tolist() == pytest.approx([lam * w for w in AW.tolist()], abs=TOL)
    assert metrics["rewards/accuracies"].tolist() == [1.0, 0.0, 0.0, 1.0]


def test_orpo_gradient_closed_form():
    lam = 0.4
    aw, al = leaves(AW, AL)
    orpo(aw, al, lam=lam)[0].sum().backward()
    # dℓ/da = 1/(1 − p): d loss/da_w = −1 − λ σ(−ℓ)/(1 − p_w), d loss/da_l = λ σ(−ℓ)/(1 − p_l)
    grads_w, grads_l = [], []
    for w, l in zip(AW.tolist(), AL.tolist()):
        s = sigmoid(-(log_odds(w) - log_odds(l)))
        grads_w.append(-1 - lam * s / (1 - math.exp(w)))
        grads_l.append(lam * s / (1 - math.exp(l)))
    assert aw.grad.tolist() == pytest.approx(grads_w, abs=1e-9)
    assert al.grad.tolist() == pytest.approx(grads_l, abs=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log1mexp_is_accurate_and_finite_at_the_extremes(dtype):
    a = torch.tensor([-1e-9, -1e-4, -0.5, -math.log(2.0), -0.9, -5.0, -40.0, -200.0], dtype=dtype, requires_grad=True)
    values = log1mexp(a)
    expected = [math.log(-math.expm1(x)) for x in a.tolist()]
    assert values.tolist() == pytest.approx(expected, rel=1e-6 if dtype == torch.float32 else 1e-13)
    values.sum().backward()
    assert torch.isfinite(a.grad).all()
    losses, metrics = orpo(a.detach()[:4], a.detach()[4:])
    assert torch.isfinite(losses).all() and torch.isfinite(metrics["log_odds"]).all()


# ---------------------------------------------------------------------------------------------------------- RPO

def dpo_part() -> list[float]:
    return [softplus(-x) for x in BETA_DELTA]


def test_rpo_official_cumulative_form_by_hand():
    eta = 0.2
    losses, metrics = rpo(PC, PR, RC, RR, chosen_lengths=LENGTHS, beta=BETA, eta=eta)  # default sft_reduction="sum_times_beta"
    expected = [d - eta * BETA * pc for d, pc in zip(dpo_part(), PC.tolist())]  # − η β Σ log π(y_w)
    assert losses.tolist() == pytest.approx(expected, abs=TOL)
    assert expected[0] == pytest.approx(softplus(-0.75) + 1.0, abs=TOL)
    assert metrics["dpo_loss"].tolist() == pytest.approx(dpo_part(), abs=TOL)
    assert metrics["nll"].tolist() == pytest.approx([2.5, 2.0, 2.0, 2.0], abs=TOL)  # −Σ log π / n
    assert metrics["rewards/margins"].tolist() == pytest.approx(BETA_DELTA, abs=TOL)


def test_rpo_token_mean_forms_by_hand():
    eta = 0.2
    per_example, _ = rpo(PC, PR, RC, RR, chosen_lengths=LENGTHS, beta=BETA, eta=eta, sft_reduction="token_mean")
    assert per_example.tolist() == pytest.approx([d + eta * x for d, x in zip(dpo_part(), [2.5, 2.0, 2.0, 2.0])],
                                                 abs=TOL)
    pooled, _ = rpo(PC, PR, RC, RR, chosen_lengths=LENGTHS, beta=BETA, eta=eta, sft_reduction="batch_token_mean")
    # −Σ log π(y_w) · B / Σ n = [10, 4, 6, 2] · 4/10; its batch mean is the pooled token NLL 22/10
    assert pooled.tolist() == pytest.approx([d + eta * x * 0.4 for d, x in zip(dpo_part(), [10, 4, 6, 2])], abs=TOL)
    assert pooled.mean().item() - sum(dpo_part()) / 4 == pytest.approx(eta * 22 / 10, abs=TOL)
    with pytest.raises(ValueError, match="sft_reduction"):
        rpo(PC, PR, RC, RR, chosen_lengths=LENGTHS, sft_reduction="mean")


def test_rpo_defaults_and_reduction_to_dpo():
    losses, _ = rpo(PC, PR, RC, RR, chosen_lengths=LENGTHS)  # β = 0.01, η = 0.005
    expected = [softplus(-0.01 * d) - 0.005 * 0.01 * pc for d, pc in zip([1.5, -1.0, 0.0, 3.0], PC.tolist())]
    assert losses.tolist() == pytest.approx(expected, abs=TOL)
    for reduction in ("sum_times_beta", "token_mean", "batch_token_mean"):
        no_sft, _ = rpo(PC, PR, RC, RR, chosen_lengths=LENGTHS, beta=BETA, eta=0.0, label_smoothing=0.1, sft_reduction=reduction)
        assert torch.equal(no_sft, dpo(PC, PR, RC, RR, beta=BETA, label_smoothing=0.1)[0])


@pytest.mark.parametrize("reduction,extra", [("sum_times_beta", lambda beta, eta, n: -eta * beta),
                                             ("token_mean", lambda beta, eta, n: -eta / n)])
def test_rpo_gradient_at_reference_pushes_chosen_up(reduction, extra):
    beta, eta = 0.3, 0.05
    pc, pr = leaves(PC, PR)
    losses, _ = rpo(pc, pr, PC.clone(), PR.clone(), chosen_lengths=LENGTHS, beta=beta, eta=eta, sft_reduction=reduction)
    # at π = π_ref the DPO part is ln 2; the NLL term is (−ηβ) · Σ log π or (−η/n) · Σ log π
    expected = [LN2 + extra(beta, eta, n) * p for p, n in zip(PC.tolist(), LENGTHS.tolist())]
    assert losses.tolist() == pytest.approx(expected, abs=TOL)
    losses.sum().backward()
    # DPO part: −β σ(0) = −β/2; the NLL term adds −ηβ (summed) or −η/n (token mean)
    assert pc.grad.tolist() == pytest.approx([-beta / 2 + extra(beta, eta, n) for n in LENGTHS.tolist()], abs=TOL)
    assert pr.grad.tolist() == pytest.approx([beta / 2] * 4, abs=TOL)  # the NLL term ignores the rejected side


def official_rpo_cumulative(pc, pr, rc, rr, beta, eta, label_smoothing):
    """Transcribed from YSLIU627/Regularized-Preference-Optimization,
    alignment-handbook/scripts/rpo_trainer.py, RPOTrainer.dpo_loss (loss_type "sigmoid", reference_free False)."""
    logits = (pc - pr) - (rc - rr)
    losses = (-F.logsigmoid(beta * logits) * (1 - label_smoothing)
              - F.logsigmoid(-beta * logits) * label_smoothing)
    if eta:
        losses -= pc * beta * eta
    return losses


def official_rpo_average(pc, pr, rc, rr, chosen_mean_logps, beta, nll_loss_coef):
    """Transcribed from the same repo, OpenRLHF/openrlhf/trainer/dpo_trainer.py: `loss = preference_loss +
    nll_loss * nll_loss_coef`, nll_loss = −all_logps_mean[:B].mean() (concatenated_forward), with the sigmoid
    DPO preference loss averaged over the batch."""
    preference_loss = (-F.logsigmoid(beta * ((pc - rc) - (pr - rr)))).mean()
    nll_loss = -chosen_mean_logps.mean()
    return preference_loss + nll_loss * nll_loss_coef


@pytest.mark.parametrize("beta,eta,eps", [(0.01, 0.005, 0.0), (0.1, 0.5, 0.0), (0.5, 0.2, 0.25)])
def test_rpo_matches_the_official_code(beta, eta, eps):
    ours, _ = rpo(PC, PR, RC, RR, chosen_lengths=LENGTHS, beta=beta, eta=eta, label_smoothing=eps)
    assert torch.allclose(ours, official_rpo_cumulative(PC, PR, RC, RR, beta, eta, eps), rtol=0, atol=TOL)
    ours, _ = rpo(PC, PR, RC, RR, chosen_lengths=LENGTHS, beta=beta, eta=eta, sft_reduction="token_mean")
    official = official_rpo_average(PC, PR, RC, RR, PC / LENGTHS, beta, eta)
    assert ours.mean().item() == pytest.approx(official.item(), abs=TOL)


# --------------------------------------------------------------------------------------------------------- ASFT

def test_asft_closed_form_at_beta_one():
    lam = 1.0
    losses, metrics = asft(AW, AL)  # defaults λ = 1, β = 1
    # log σ(log odds) = log p: loss = −(1 + λ) a_w − λ log(1 − e^(a_l))
    expected = [-(1 + lam) * w - lam * math.log(1 - math.exp(l)) for w, l in zip(AW.tolist(), AL.tolist())]
    assert losses.tolist() == pytest.approx(expected, abs=1e-10)
    assert metrics["nll"].tolist() == pytest.approx([0.3, 1.5, 2.0, 0.05], abs=TOL)
    assert metrics["rewards/chosen"].tolist() == pytest.approx([log_odds(w) for w in AW.tolist()], abs=1e-10)
    assert get("asft").defaults == {"lam": 1.0, "beta": 1.0}


def test_asft_closed_form_with_temperature():
    lam, beta = 0.3, 0.5
    losses, _ = asft(AW, AL, lam=lam, beta=beta)
    expected = [-w + lam * (softplus(-beta * log_odds(w)) + softplus(beta * log_odds(l)))
                for w, l in zip(AW.tolist(), AL.tolist())]
    assert losses.tolist() == pytest.approx(expected, abs=1e-10)


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_orpo_is_asft_plus_a_non_positive_term(lam):
    """Gorbatovski et al. 2025: L_ORPO = L_ASFT + λ log(p_w (1 − p_l) + p_l (1 − p_w)) ≤ L_ASFT."""
    gap = [lam * math.log(math.exp(w) * (1 - math.exp(l)) + math.exp(l) * (1 - math.exp(w)))
           for w, l in zip(AW.tolist(), AL.tolist())]
    assert all(g < 0 for g in gap)
    difference = orpo(AW, AL, lam=lam)[0] - asft(AW, AL, lam=lam)[0]
    assert difference.tolist() == pytest.approx(gap, abs=1e-10)


def test_asft_gradient_at_beta_one():
    aw, al = leaves(AW, AL)
    asft(aw, al, lam=0.5)[0].sum().backward()
    assert aw.grad.tolist() == pytest.approx([-1.5] * 4, abs=TOL)  # d/da_w of −(1 + λ) a_w
    # d/da_l of −λ log(1 − e^a) = λ e^a / (1 − e^a)
    assert al.grad.tolist() == pytest.approx([0.5 * math.exp(x) / (1 - math.exp(x)) for x in AL.tolist()], abs=1e-10)


# ---------------------------------------------------------------------------------------------------------- JPO

def official_jpo(pc, pr, rc, rr, beta, label_smoothing):
    """Hritikbansal/dove, dove/custom_dove_trainer.py: CustomDoveTrainer subclasses trl.DPOTrainer (0.7-era) and
    keeps its dpo_loss, transcribed here (loss_type "sigmoid", reference_free False); only tokenize_row
    differs (each side tokenized with its own prompt)."""
    pi_logratios = pc - pr
    ref_logratios = rc - rr
    logits = pi_logratios - ref_logratios
    return -F.logsigmoid(beta * logits) * (1 - label_smoothing) - F.logsigmoid(-beta * logits) * label_smoothing


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.0), (0.5, 0.3)])
def test_jpo_closed_form_and_official_code(beta, eps):
    losses, metrics = jpo(PC, PR, RC, RR, beta=beta, label_smoothing=eps)
    deltas = [1.5, -1.0, 0.0, 3.0]
    assert losses.tolist() == pytest.approx([(1 - eps) * softplus(-beta * d) + eps * softplus(beta * d)
                                             for d in deltas], abs=TOL)
    assert torch.allclose(losses, official_jpo(PC, PR, RC, RR, beta, eps), rtol=0, atol=TOL)
    assert metrics["rewards/margins"].tolist() == pytest.approx([beta * d for d in deltas], abs=TOL)


def test_jpo_is_ln2_at_reference():
    assert jpo(PC, PR, PC.clone(), PR.clone())[0].tolist() == pytest.approx([LN2] * 4, abs=TOL)


# ---------------------------------------------------------------------------------------------------------- SFT

def test_sft_reductions_by_hand():
    logps, lengths = t([-6.0, -3.0, -10.0]), t([3.0, 1.0, 4.0])
    losses, metrics = sft(logps, lengths)
    assert losses.tolist() == pytest.approx([2.0, 3.0, 2.5], abs=TOL)
    assert metrics["nll"].tolist() == pytest.approx([2.0, 3.0, 2.5], abs=TOL)
    assert sft(logps, lengths, reduction="sum")[0].tolist() == pytest.approx([6.0, 3.0, 10.0], abs=TOL)
    pooled, pooled_metrics = sft(logps, lengths, reduction="batch_token_mean")
    assert pooled.tolist() == pytest.approx([18 / 8, 9 / 8, 30 / 8], abs=TOL)  # −S · 3 / 8
    assert pooled.mean().item() == pytest.approx(19 / 8, abs=TOL)  # = Σ NLL / Σ tokens
    assert pooled_metrics["nll"].tolist() == pytest.approx([2.0, 3.0, 2.5], abs=TOL)
    with pytest.raises(ValueError, match="reduction"):
        sft(logps, lengths, reduction="mean")


def test_sft_gradient_and_empty_completion():
    logps = t([-6.0, -3.0, 0.0]).requires_grad_()
    losses, metrics = sft(logps, t([3.0, 1.0, 0.0]))
    losses.sum().backward()
    assert logps.grad.tolist() == pytest.approx([-1 / 3, -1.0, -1.0], abs=TOL)
    assert torch.isfinite(losses).all() and losses[2].item() == 0.0 and not metrics["nll"].requires_grad


# ----------------------------------------------------------------------------------------------------- registry

PAIR = ("policy_chosen_logps", "policy_rejected_logps")
PAIR_REF = PAIR + ("ref_chosen_logps", "ref_rejected_logps")
DECLARED = {
    # name: (function, inputs, logps, data_format, defaults)
    "ipo": (ipo, PAIR_REF, "mean", "preference", {"beta": 0.1}),
    "hinge": (hinge, PAIR_REF, "sum", "preference", {"beta": 0.1}),
    "simpo": (simpo, PAIR, "mean", "preference", {"beta": 2.5, "gamma": 1.375, "label_smoothing": 0.0}),
    "orpo": (orpo, PAIR, "mean", "preference", {"lam": 0.1}),
    "rpo": (rpo, PAIR_REF + ("chosen_lengths",), "sum", "preference",
            {"beta": 0.01, "eta": 0.005, "label_smoothing": 0.0, "sft_reduction": "sum_times_beta"}),
    "asft": (asft, PAIR, "mean", "preference", {"lam": 1.0, "beta": 1.0}),
    "jpo": (jpo, PAIR_REF, "sum", "joint", {"beta": 0.1, "label_smoothing": 0.0}),
    "sft": (sft, ("policy_completion_logps", "completion_lengths"), "sum", "sft", {"reduction": "token_mean"}),
}
SAMPLE = {"policy_chosen_logps": PC, "policy_rejected_logps": PR, "ref_chosen_logps": RC, "ref_rejected_logps": RR,
          "chosen_lengths": LENGTHS, "policy_completion_logps": PC, "completion_lengths": LENGTHS}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_registry_declaration(name):
    fn, inputs, logps, data_format, defaults = DECLARED[name]
    objective = get(name)
    assert objective.fn is fn and objective in available()
    assert objective.inputs == inputs and set(inputs) <= set(KNOWN_INPUTS)
    assert objective.logps == logps and objective.data_format == data_format
    assert objective.defaults == defaults
    assert objective.needs_reference == ("ref_chosen_logps" in inputs)
    assert objective.slots == tuple(slot for slot, _ in FORMATS[data_format])
    assert objective.description and objective.source
    # the declared defaults are the function's keyword defaults; the inputs are its parameters without a
    # default, the leading ones positional (for pairs: the four log-probs, as dpo), extras such as RPO's
    # chosen_lengths keyword-only
    parameters = inspect.signature(fn).parameters
    assert {k: p.default for k, p in parameters.items() if p.default is not p.empty} == defaults
    assert tuple(k for k, p in parameters.items() if p.default is p.empty) == inputs
    positional = tuple(k for k, p in parameters.items() if p.kind is p.POSITIONAL_OR_KEYWORD)
    assert positional == inputs[:len(positional)]
    if "ref_chosen_logps" in inputs:
        assert positional == ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps", "ref_rejected_logps")
    losses, metrics = objective.fn(**{k: SAMPLE[k].clone().requires_grad_() for k in inputs}, **objective.defaults)
    assert losses.shape == (4,) and torch.isfinite(losses).all() and losses.requires_grad
    assert metrics and all(v.shape == (4,) and not v.requires_grad for v in metrics.values())


# -------------------------------------------------------------------------------------------------- TRL parity

TRL_TOL = 1e-6  # losses, absolute
GRAD_RTOL = 1e-5  # policy gradients, relative to the largest one (TRL scores in float32)


# Hand-made token ids over a 64-word vocabulary (TRL scores every position against the whole vocabulary, so a
# small one keeps these tests fast): (prompt, chosen, rejected), chosen lengths 5, 2, 3. 0 pads, 2 ends.
PAIRS = [([5, 9, 12], [20, 21, 22, 23, 2], [30, 2]),
         ([6, 7], [40, 2], [41, 42, 43, 44, 45, 46, 2]),
         ([8, 10, 11, 13], [50, 51, 2], [52, 53, 54, 2])]


def collate(pairs) -> dict[str, torch.Tensor]:
    """Rows 0..B−1 chosen, B..2B−1 rejected, right-padded (the layout of TRL's and alignkit's pair batches)."""
    rows = [(prompt, chosen) for prompt, chosen, _ in pairs] + [(prompt, rejected) for prompt, _, rejected in pairs]
    width = max(len(prompt) + len(completion) for prompt, completion in rows)
    input_ids = torch.zeros((len(rows), width), dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    completion_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for row, (prompt, completion) in enumerate(rows):
        input_ids[row, :len(prompt) + len(completion)] = torch.tensor(prompt + completion)
        attention_mask[row, :len(prompt) + len(completion)] = 1
        completion_mask[row, len(prompt):len(prompt) + len(completion)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


@pytest.fixture(scope="module")
def tiny_pairs():
    """A word-level tokenizer (TRL's trainers need one to be built), a tiny policy and reference, a dataset for the
    trainers' constructors, and the batch every loss is compared on."""
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 64)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>", unk_token="<pad>")
    words = [[" ".join(f"w{i}" for i in ids if i != 2) for ids in pair] for pair in PAIRS]
    dataset = Dataset.from_dict({"prompt": [w[0] for w in words], "chosen": [" " + w[1] for w in words],
                                 "rejected": [" " + w[2] for w in words]})
    # a wide initialisation so the two random models disagree and the margins are far from 0
    policy = tiny_llama(len(vocab), seed=0, initializer_range=0.3)
    reference = tiny_llama(len(vocab), seed=1, initializer_range=0.3)
    return tokenizer, policy, reference, dataset, collate(PAIRS)


def common_args(tmp_path_factory, name):
    return {"output_dir": str(tmp_path_factory.mktemp(name)), "report_to": "none", "use_cpu": True, "bf16": False}


def dpo_trainer(tiny_pairs, tmp_path_factory, **config):
    from trl import DPOConfig, DPOTrainer

    tokenizer, policy, reference, dataset, _ = tiny_pairs
    args = DPOConfig(**common_args(tmp_path_factory, "trl_dpo"), precompute_ref_log_probs=False,
                     per_device_train_batch_size=3, **config)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=dataset,
                         processing_class=tokenizer)
    assert trainer.f_divergence_type == "reverse_kl" and trainer.ld_alpha is None and not trainer.use_weighting
    return trainer


def trl_loss_and_grads(trainer, policy, inputs):
    policy.zero_grad(set_to_none=True)
    loss = trainer._compute_loss(policy, dict(inputs), return_outputs=False)
    loss.backward()
    grads = {name: p.grad.clone() for name, p in policy.named_parameters()}
    policy.zero_grad(set_to_none=True)
    return loss.detach(), grads


def alignkit_logps(policy, reference, inputs):
    chosen, rejected = pair_logps(CompletionScorer(policy), inputs)
    with torch.no_grad():
        ref_chosen, ref_rejected = pair_logps(CompletionScorer(reference), inputs)
    return chosen, rejected, ref_chosen, ref_rejected


def compare(label, loss, trl_loss, trl_grads, policy):
    diff = abs(loss.item() - trl_loss.item())
    loss.backward()
    worst = max((p.grad - trl_grads[name]).abs().max().item() for name, p in policy.named_parameters())
    policy.zero_grad(set_to_none=True)
    scale = max(g.abs().max().item() for g in trl_grads.values())
    print(f"{label}: alignkit {loss.item():.7f} TRL {trl_loss.item():.7f}; loss diff {diff:.3g}, grad diff {worst:.3g}"
          f" (largest grad {scale:.3g})")
    assert diff <= TRL_TOL and worst <= GRAD_RTOL * scale
    assert max(g.abs().max().item() for g in trl_grads.values()) > 1e-3  # a gradient worth comparing


def test_ipo_parity_with_trl_dpo_trainer(tiny_pairs, tmp_path_factory):
    _, policy, reference, _, inputs = tiny_pairs
    trainer = dpo_trainer(tiny_pairs, tmp_path_factory, loss_type="ipo", beta=0.3)
    assert trainer.loss_types == ["ipo"]
    trl_loss, trl_grads = trl_loss_and_grads(trainer, policy, inputs)
    chosen, rejected, ref_chosen, ref_rejected = alignkit_logps(policy, reference, inputs)
    losses, _ = ipo(chosen.mean, rejected.mean, ref_chosen.mean, ref_rejected.mean, beta=0.3)
    compare("IPO vs TRL DPOTrainer ipo", losses.mean(), trl_loss, trl_grads, policy)
    summed, _ = ipo(chosen.sum, rejected.sum, ref_chosen.sum, ref_rejected.sum, beta=0.3)
    assert abs(summed.mean().item() - trl_loss.item()) > 1e-3  # TRL's IPO is on token averages, not sums


def test_hinge_parity_with_trl_dpo_trainer(tiny_pairs, tmp_path_factory):
    _, policy, reference, _, inputs = tiny_pairs
    trainer = dpo_trainer(tiny_pairs, tmp_path_factory, loss_type="hinge", beta=0.1)
    trl_loss, trl_grads = trl_loss_and_grads(trainer, policy, inputs)
    chosen, rejected, ref_chosen, ref_rejected = alignkit_logps(policy, reference, inputs)
    losses, _ = hinge(chosen.sum, rejected.sum, ref_chosen.sum, ref_rejected.sum, beta=0.1)
    assert (losses > 0).any()  # inside the margin somewhere, so gradients flow
    compare("hinge vs TRL DPOTrainer hinge", losses.mean(), trl_loss, trl_grads, policy)


def test_rpo_token_mean_parity_with_trl_sigmoid_plus_sft(tiny_pairs, tmp_path_factory):
    _, policy, reference, _, inputs = tiny_pairs
    beta, eta = 0.3, 0.2
    trainer = dpo_trainer(tiny_pairs, tmp_path_factory, loss_type=["sigmoid", "sft"], loss_weights=[1.0, eta],
                          beta=beta)
    assert trainer.loss_types == ["sigmoid", "sft"] and trainer.loss_weights == [1.0, eta]
    trl_loss, trl_grads = trl_loss_and_grads(trainer, policy, inputs)
    chosen, rejected, ref_chosen, ref_rejected = alignkit_logps(policy, reference, inputs)
    args = (chosen.sum, rejected.sum, ref_chosen.sum, ref_rejected.sum)
    assert chosen.count.tolist() == [5.0, 2.0, 3.0]  # different chosen lengths: pooled ≠ per-example token mean
    pooled, _ = rpo(*args, chosen_lengths=chosen.count, beta=beta, eta=eta, sft_reduction="batch_token_mean")
    compare("RPO batch_token_mean vs TRL sigmoid+sft", pooled.mean(), trl_loss, trl_grads, policy)
    per_example, _ = rpo(*args, chosen_lengths=chosen.count, beta=beta, eta=eta, sft_reduction="token_mean")
    assert abs(per_example.mean().item() - trl_loss.item()) > 1e-3
    # with one pair per batch the two token means coincide: TRL on each pair alone (losses only, to stay fast)
    batch_size = chosen.sum.shape[0]
    with torch.no_grad():
        for i in range(batch_size):
            sub = {key: value[[i, batch_size + i]] for key, value in inputs.items()}
            trl_one = trainer._compute_loss(policy, dict(sub), return_outputs=False)
            c, r, rc, rr = alignkit_logps(policy, reference, sub)
            one, _ = rpo(c.sum, r.sum, rc.sum, rr.sum, chosen_lengths=c.count, beta=beta, eta=eta, sft_reduction="token_mean")
            diff = abs(one.item() - trl_one.item())
            print(f"RPO token_mean vs TRL sigmoid+sft on pair {i} alone: loss diff {diff:.3g}")
            assert diff <= TRL_TOL


def reference_free_logps() -> tuple[torch.Tensor, torch.Tensor]:
    """Token-averaged log-probs in float32, including values near 0 and far below −ln 2 (both log1mexp branches)."""
    generator = torch.Generator().manual_seed(0)
    aw = -torch.rand(16, generator=generator) * 3.0
    al = -torch.rand(16, generator=generator) * 3.0
    aw[:3] = torch.tensor([-1e-6, -0.69, -30.0])
    al[:3] = torch.tensor([-25.0, -0.7, -1e-5])
    return aw, al


def test_simpo_parity_with_trl_cpo_trainer(tiny_pairs, tmp_path_factory):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tokenizer, _, _, dataset, _ = tiny_pairs
    aw, al = reference_free_logps()
    for eps in (0.0, 0.2):
        model = tiny_llama(len(tokenizer), seed=2)
        args = CPOConfig(**common_args(tmp_path_factory, "trl_cpo"), loss_type="simpo", cpo_alpha=0.0, beta=2.5,
                         simpo_gamma=1.375, label_smoothing=eps)
        trainer = CPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        trl_losses, trl_chosen, trl_rejected = trainer.cpo_loss(aw, al)
        losses, metrics = simpo(aw, al, beta=2.5, gamma=1.375, label_smoothing=eps)
        diff = (losses - trl_losses).abs().max().item()
        print(f"SimPO vs TRL CPOTrainer.cpo_loss (ε={eps}): max abs diff {diff:.3g}")
        assert diff <= TRL_TOL
        assert torch.allclose(metrics["rewards/chosen"], trl_chosen, rtol=0, atol=TRL_TOL)
        assert torch.allclose(metrics["rewards/rejected"], trl_rejected, rtol=0, atol=TRL_TOL)


def test_orpo_parity_with_trl_orpo_trainer(tiny_pairs, tmp_path_factory):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    tokenizer, _, _, dataset, _ = tiny_pairs
    lam = 0.1
    model = tiny_llama(len(tokenizer), seed=3)
    args = ORPOConfig(**common_args(tmp_path_factory, "trl_orpo"), beta=lam)
    trainer = ORPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    # TRL computes in float32 (it casts); ours runs on the same values in float64, so that the NLL term it adds
    # (up to 30 here) does not round the comparison of the odds-ratio terms
    aw32, al32 = reference_free_logps()
    trl_aw = aw32.clone().requires_grad_()
    trl_losses, trl_chosen, trl_rejected, _, trl_mean_log_odds = trainer.odds_ratio_loss(trl_aw, al32)
    aw = aw32.double().requires_grad_()
    losses, metrics = orpo(aw, al32.double(), lam=lam)
    odds_ratio_term = losses - metrics["nll"]  # ours is −a_w − λ log σ(ℓ); TRL returns λ log σ(ℓ)
    diff = (odds_ratio_term + trl_losses.double()).abs().max().item()
    print(f"ORPO odds-ratio term vs TRL ORPOTrainer.odds_ratio_loss: max abs diff {diff:.3g}")
    assert diff <= TRL_TOL
    assert metrics["log_odds"].mean().item() == pytest.approx(trl_mean_log_odds.item(), rel=1e-6)
    assert torch.allclose(metrics["rewards/chosen"], trl_chosen.double(), rtol=0, atol=TRL_TOL)
    assert torch.allclose(metrics["rewards/rejected"], trl_rejected.double(), rtol=0, atol=TRL_TOL)
    # gradients of the odds-ratio term agree too (ours adds −1 per chosen from the NLL); some reach 1e4 near p = 1
    ours = torch.autograd.grad(losses.sum(), aw)[0]
    theirs = torch.autograd.grad(-trl_losses.sum(), trl_aw)[0].double() - 1.0
    assert torch.allclose(ours, theirs, rtol=1e-5, atol=TRL_TOL)
