"""KTO, BCO (+UDM), NPO, gradient ascent, D2O, LOGO, AFT, PoFT: closed forms, invariants, gradients, the
registry, official formulas transcribed from their code, and parity with TRL 1.16 where TRL has the loss."""

from __future__ import annotations

import inspect
import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_llama

from alignkit.models.logprobs import completion_logps
from alignkit.objectives import dpo, get
from alignkit.objectives.listwise import aft, aft_rank, d2o, logo, poft
from alignkit.objectives.udm import density_ratio_weights, fit_prompt_classifier
from alignkit.objectives.unpaired import (
    RunningMean,
    bco,
    bco_udm,
    gradient_ascent,
    kto,
    npo,
    npo_rt,
)

LN2 = math.log(2.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def softplus(x: float) -> float:
    """log(1 + exp(x)) = −log σ(−x)."""
    return math.log1p(math.exp(x)) if x < 30 else x + math.log1p(math.exp(-x))


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def leaf(values) -> torch.Tensor:
    return t(values).requires_grad_()


# Four unpaired examples: log-ratios r = policy − reference = [1, −1, 0.5, −1], labels [1, 0, 1, 0].
POLICY, REF, LABELS = t([-5.0, -8.0, -3.0, -10.0]), t([-6.0, -7.0, -3.5, -9.0]), t([1.0, 0.0, 1.0, 0.0])
R = [1.0, -1.0, 0.5, -1.0]
# kl slot: policy − reference = [1, 0.4, 0.2, −0.2], mean 0.35
KL_POLICY, KL_REF = t([-4.0, -6.0, -2.0, -5.0]), t([-5.0, -6.4, -2.2, -4.8])
Z0 = 0.35

# ------------------------------------------------------------------------------------------------------ KTO


def test_kto_closed_form_and_metrics():
    beta, lam_d, lam_u = 0.5, 1.3, 0.7
    losses, metrics = kto(POLICY, REF, KL_POLICY, KL_REF, LABELS, beta=beta, desirable_weight=lam_d,
                          undesirable_weight=lam_u)
    expected = [lam_d * (1 - sigmoid(beta * (R[0] - Z0))), lam_u * (1 - sigmoid(beta * (Z0 - R[1]))),
                lam_d * (1 - sigmoid(beta * (R[2] - Z0))), lam_u * (1 - sigmoid(beta * (Z0 - R[3])))]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert expected[0] == pytest.approx(0.5453, abs=1e-4)  # 1.3·(1 − σ(0.325)), evaluated once by hand
    assert metrics["kl"].tolist() == pytest.approx([Z0] * 4, abs=1e-12)
    assert metrics["rewards"].tolist() == pytest.approx([beta * r for r in R], abs=1e-12)
    assert metrics["rewards/agree"].tolist() == [1.0, 1.0, 1.0, 1.0]
    flipped = kto(POLICY, REF, KL_POLICY, KL_REF, 1 - LABELS)[1]["rewards/agree"]
    assert flipped.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert all(value.shape == (4,) and not value.requires_grad for value in metrics.values())


def test_kto_reference_point_is_clamped_at_zero_and_detached():
    kl_policy, policy = leaf([-4.0, -6.0, -2.0, -5.0]), leaf(POLICY.tolist())
    kl_ref = t([-3.0, -5.0, -2.5, -4.0])  # differences −1, −1, 0.5, −1: mean −0.625 → z0 = 0
    losses, metrics = kto(policy, REF, kl_policy, kl_ref, LABELS, beta=0.5)
    assert metrics["kl"].tolist() == [0.0] * 4
    expected = [1 - sigmoid(0.5 * R[0]), 1 - sigmoid(-0.5 * R[1]), 1 - sigmoid(0.5 * R[2]), 1 - sigmoid(-0.5 * R[3])]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    losses.sum().backward()
    assert kl_policy.grad is None  # z0 carries no gradient
    kl_policy, policy = leaf(KL_POLICY.tolist()), leaf(POLICY.tolist())
    kto(policy, REF, kl_policy, KL_REF, LABELS)[0].sum().backward()
    assert kl_policy.grad is None and policy.grad is not None


def test_kto_gradient_closed_form():
    beta = 0.5
    policy = leaf(POLICY.tolist())
    kto(policy, REF, KL_POLICY, KL_REF, LABELS, beta=beta)[0].sum().backward()
    # d/dr [1 − σ(β(r − z0))] = −β σ'(·);  d/dr [1 − σ(β(z0 − r))] = +β σ'(·)
    expected = []
    for r, label in zip(R, LABELS.tolist()):
        x = beta * (r - Z0) if label else beta * (Z0 - r)
        expected.append((-1 if label else 1) * beta * sigmoid(x) * (1 - sigmoid(x)))
    assert policy.grad.tolist() == pytest.approx(expected, abs=1e-12)
    assert policy.grad[0].item() < 0 and policy.grad[1].item() > 0  # desirable up, undesirable down


# ------------------------------------------------------------------------------------------------------ BCO

BCO_BETA = 0.5
BCO_R = [BCO_BETA * r for r in R]  # rewards 0.5, −0.5, 0.25, −0.5: mean −0.0625


def bco_expected(rewards, labels, delta, weights=None):
    out = []
    for i, (r, label) in enumerate(zip(rewards, labels)):
        out.append(softplus(-(r - delta)) if label else (1.0 if weights is None else weights[i]) * softplus(r - delta))
    return out


def test_bco_closed_form_fresh_state_uses_this_batch_mean():
    state = RunningMean()
    losses, metrics = bco(POLICY, REF, LABELS, beta=BCO_BETA, state=state)
    delta = sum(BCO_R) / 4
    assert delta == -0.0625
    assert state.mean == pytest.approx(delta, abs=1e-15) and state.count == pytest.approx(4.0)
    assert losses.tolist() == pytest.approx(bco_expected(BCO_R, LABELS.tolist(), delta), abs=1e-12)
    assert metrics["delta"].tolist() == pytest.approx([delta] * 4, abs=1e-12)
    assert metrics["rewards"].tolist() == pytest.approx(BCO_R, abs=1e-12)
    assert metrics["rewards/agree"].tolist() == [1.0, 1.0, 1.0, 1.0]
    # without a state object: the same as a fresh one
    assert torch.allclose(bco(POLICY, REF, LABELS, beta=BCO_BETA)[0], losses, rtol=0, atol=1e-15)


def test_bco_running_mean_is_updated_before_use_and_accumulates():
    state = RunningMean()
    bco(POLICY, REF, LABELS, beta=BCO_BETA, state=state)
    policy2, ref2, labels2 = t([-2.0, -4.0]), t([-4.0, -3.0]), t([1.0, 0.0])  # rewards 1.0, −0.5
    losses, metrics = bco(policy2, ref2, labels2, beta=BCO_BETA, state=state)
    delta = (sum(BCO_R) + 1.0 - 0.5) / 6  # all six rewards seen so far, this batch included
    assert state.mean == pytest.approx(delta, abs=1e-15) and state.count == pytest.approx(6.0)
    assert metrics["delta"][0].item() == pytest.approx(delta, abs=1e-15)
    assert losses.tolist() == pytest.approx(bco_expected([1.0, -0.5], [1, 0], delta), abs=1e-12)
    # update=False (evaluation) uses δ without moving it
    before = state.state_dict()
    _, metrics = bco(POLICY, REF, LABELS, beta=BCO_BETA, state=state, update=False)
    assert state.state_dict() == before and metrics["delta"][0].item() == pytest.approx(delta, abs=1e-15)


def test_bco_state_saved_and_restored_gives_the_same_next_loss():
    batches = [(POLICY, REF, LABELS), (t([-2.0, -4.0]), t([-4.0, -3.0]), t([1.0, 0.0])),
               (t([-1.0, -9.0, -3.0]), t([-1.5, -8.0, -6.0]), t([0.0, 1.0, 1.0]))]
    state = RunningMean()
    for batch in batches[:2]:
        bco(*batch, beta=BCO_BETA, state=state)
    saved = json.loads(json.dumps(state.state_dict()))  # checkpoints store it as plain data
    continued = bco(*batches[2], beta=BCO_BETA, state=state)[0]
    restored_state = RunningMean()
    restored_state.load_state_dict(saved)
    restored = bco(*batches[2], beta=BCO_BETA, state=restored_state)[0]
    assert torch.equal(continued, restored)
    assert restored_state.state_dict() == state.state_dict()
    fresh = bco(*batches[2], beta=BCO_BETA, state=RunningMean())[0]
    assert (fresh - continued).abs().max().item() > 1e-3  # the state matters


def trl_bco_reference(batches, beta):
    """Transcribed from huggingface/trl trl/experimental/bco/bco_trainer.py (`RunningMoments.update`, single
    process, and `BCOTrainer.bco_loss`): chosen and rejected are split by label; the running mean is updated
    with cat(chosen_rewards, rejected_rewards) before δ is read; the batch loss is nanmean of the losses."""
    mean, count = 0.0, 1e-24
    out = []
    for policy, ref, labels in batches:
        chosen_idx = [i for i in range(len(labels)) if labels[i] == 1]
        rejected_idx = [i for i in range(len(labels)) if labels[i] == 0]
        chosen_rewards = beta * (policy[chosen_idx] - ref[chosen_idx])
        rejected_rewards = beta * (policy[rejected_idx] - ref[rejected_idx])
        xs = torch.cat((chosen_rewards, rejected_rewards), 0).detach()
        xs_count = xs.numel()
        _xs_var, xs_mean = torch.var_mean(xs, unbiased=False)
        xs_mean = xs_mean.float()
        delta_mean = xs_mean - mean
        tot_count = count + xs_count
        mean += (delta_mean * xs_count / tot_count).item()
        count = tot_count
        delta = torch.as_tensor(mean)
        chosen_losses = -F.logsigmoid(chosen_rewards - delta)
        rejected_losses = -F.logsigmoid(-(rejected_rewards - delta))
        out.append(torch.cat((chosen_losses, rejected_losses), dim=0).nanmean())
    return out


def test_bco_matches_trl_bco_trainer_formula_over_several_batches():
    """TRL 1.16 does not ship `trl.experimental.bco`, so its loss is transcribed (see trl_bco_reference)."""
    generator = torch.Generator().manual_seed(3)
    batches = []
    for size in (5, 3, 8, 4):
        policy = -20 * torch.rand(size, generator=generator, dtype=torch.float64)
        ref = policy + torch.randn(size, generator=generator, dtype=torch.float64) * 4
        labels = (torch.rand(size, generator=generator) > 0.5).double()
        labels[0], labels[1] = 1.0, 0.0
        batches.append((policy, ref, labels))
    reference = trl_bco_reference(batches, beta=0.3)
    state = RunningMean()
    ours = [bco(*batch, beta=0.3, state=state)[0].mean() for batch in batches]
    worst = max(abs(a.item() - b.item()) for a, b in zip(ours, reference))
    print(f"BCO vs TRL bco_loss transcription: max abs diff {worst:.3g}")
    assert worst < 1e-6
    assert abs(reference[0].item() - reference[-1].item()) > 1e-3


def test_bco_udm_weights_only_undesirable_and_clamps():
    scores = t([[2.0], [0.2], [50.0], [3.0]])  # desirable rows 0, 2 are never weighted
    losses, _ = bco_udm(POLICY, REF, LABELS, scores, beta=BCO_BETA, state=RunningMean())
    delta = -0.0625
    assert losses.tolist() == pytest.approx(bco_expected(BCO_R, [1, 0, 1, 0], delta, [1.0, 0.5, 1.0, 3.0]),
                                            abs=1e-12)
    capped, _ = bco_udm(POLICY, REF, LABELS, t([[1.0], [99.0], [1.0], [1.0]]), beta=BCO_BETA,
                        max_density_ratio=4.0)
    assert capped[1].item() == pytest.approx(4.0 * softplus(BCO_R[1] - delta), abs=1e-12)
    unweighted, _ = bco_udm(POLICY, REF, LABELS, torch.ones(4, 1, dtype=torch.float64), beta=BCO_BETA)
    assert torch.allclose(unweighted, bco(POLICY, REF, LABELS, beta=BCO_BETA)[0], rtol=0, atol=1e-15)


# ------------------------------------------------------------------------------------------------------ UDM


def test_density_ratio_identical_prompt_sets_give_weight_one():
    generator = torch.Generator().manual_seed(0)
    cloud = torch.randn(300, 5, generator=generator, dtype=torch.float64)
    queries = torch.randn(20, 5, generator=generator, dtype=torch.float64) * 3
    weights = density_ratio_weights(cloud, cloud.clone(), queries)
    assert weights.shape == (20,)
    assert (weights - 1).abs().max().item() < 1e-6  # balanced, identical data: the classifier is p ≡ 1/2
    # two independent draws of one distribution: close to 1, far from the clamp bounds
    other = torch.randn(1000, 5, generator=generator, dtype=torch.float64)
    more = torch.randn(400, 5, generator=generator, dtype=torch.float64)  # unbalanced sizes
    weights = density_ratio_weights(other, more, torch.randn(50, 5, generator=generator, dtype=torch.float64))
    assert 0.6 < weights.min().item() and weights.max().item() < 1.6


def test_density_ratio_separable_clouds_hit_the_clamps_and_is_monotone():
    generator = torch.Generator().manual_seed(1)
    shift = torch.full((4,), 3.0, dtype=torch.float64)
    desirable = torch.randn(200, 4, generator=generator, dtype=torch.float64) + shift
    undesirable = torch.randn(100, 4, generator=generator, dtype=torch.float64) - shift
    line = torch.stack([shift * s for s in (-1.0, -0.1, 0.0, 0.1, 1.0)])
    weights = density_ratio_weights(desirable, undesirable, line, min_ratio=0.5, max_ratio=10.0)
    assert weights[0].item() == 0.5 and weights[-1].item() == 10.0
    wide = density_ratio_weights(desirable, undesirable, line, min_ratio=1e-30, max_ratio=1e30).double()
    assert (wide[1:] > wide[:-1]).all()
    # the weight is p/(1 − p) of the fitted classifier
    weight, bias = fit_prompt_classifier(desirable, undesirable)
    p = torch.sigmoid(line @ weight + bias)
    assert torch.allclose(wide, p / (1 - p), rtol=1e-5, atol=0)


def test_density_ratio_classifier_minimises_the_balanced_l2_logistic_objective():
    """The fit is the optimum of scikit-learn's LogisticRegression(class_weight='balanced', C=1) objective."""
    generator = torch.Generator().manual_seed(2)
    desirable = torch.randn(120, 3, generator=generator, dtype=torch.float64) + t([1.0, 0.0, -0.5])
    undesirable = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    weight, bias = fit_prompt_classifier(desirable, undesirable)
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    n_d, n_u, n = 120, 40, 160
    objective = 0.5 * weight.pow(2).sum()
    for x, y, class_weight in ((desirable, 1.0, n / (2 * n_d)), (undesirable, 0.0, n / (2 * n_u))):
        z = x @ weight + bias
        objective = objective + class_weight * (F.softplus(z) - y * z).sum()  # logistic loss per row
    objective.backward()  # at the optimum the gradient vanishes (to float64 line-search precision)
    assert weight.grad.abs().max().item() / n < 1e-8 and abs(bias.grad.item()) / n < 1e-8
    assert weight[0].item() > 0.3  # the shifted feature is the one the classifier uses


# ------------------------------------------------------------------------------------------------------ NPO


def test_npo_closed_form():
    beta = 0.5
    losses, metrics = npo(POLICY, REF, beta=beta)
    assert losses.tolist() == pytest.approx([(2 / beta) * math.log(1 + math.exp(beta * r)) for r in R], abs=1e-12)
    assert metrics["rewards"].tolist() == pytest.approx([beta * r for r in R], abs=1e-12)


@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0, 3.0])
def test_npo_at_the_reference_is_2_ln2_over_beta(beta):
    logps = torch.tensor([-3.0, -150.0, -0.25])
    losses, _ = npo(logps, logps.clone(), beta=beta)
    assert (losses - 2 * LN2 / beta).abs().max().item() < 1e-5 * max(1.0, 2 * LN2 / beta)


def test_npo_tends_to_summed_gradient_ascent_as_beta_goes_to_zero():
    lengths = t([3.0, 7.0, 2.0, 5.0])
    ascent = leaf(POLICY.tolist())
    gradient_ascent(ascent, lengths, normalize=False)[0].sum().backward()
    assert ascent.grad.tolist() == [1.0] * 4
    gaps = []
    for beta in (1.0, 1e-2, 1e-6):
        policy = leaf(POLICY.tolist())
        npo(policy, REF, beta=beta)[0].sum().backward()
        # d/dlp (2/β) softplus(β r) = 2 σ(β r)
        assert policy.grad.tolist() == pytest.approx([2 * sigmoid(beta * r) for r in R], abs=1e-12)
        gaps.append((policy.grad - ascent.grad).abs().max().item())
    assert gaps[0] > 0.2 and gaps[1] < 0.02 and gaps[2] < 1e-6


def official_npo(forget_loss_current, forget_loss_oracle, beta):
    """licong-lin/negative-preference-optimization TOFU/dataloader.py, loss_type 'npo' (get_batch_loss is the
    per-sequence summed NLL)."""
    neg_log_ratios = forget_loss_current - forget_loss_oracle
    return -F.logsigmoid(beta * neg_log_ratios).mean() * 2 / beta


@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_npo_matches_the_official_code(beta):
    generator = torch.Generator().manual_seed(4)
    policy = -30 * torch.rand(6, generator=generator, dtype=torch.float64)
    ref = policy + 5 * torch.randn(6, generator=generator, dtype=torch.float64)
    ours = npo(policy, ref, beta=beta)[0].mean()
    official = official_npo(-policy, -ref, beta)
    assert abs(ours.item() - official.item()) < 1e-12
    assert abs(official.item() - 2 * LN2 / beta) > 1e-3


def test_gradient_ascent_closed_form():
    lengths = t([2.0, 4.0, 1.0, 5.0])
    losses, metrics = gradient_ascent(POLICY, lengths)
    assert losses.tolist() == pytest.approx([-2.5, -2.0, -3.0, -2.0], abs=1e-12)  # token-mean log-prob
    assert metrics["nll"].tolist() == pytest.approx([2.5, 2.0, 3.0, 2.0], abs=1e-12)
    assert gradient_ascent(POLICY, lengths, normalize=False)[0].tolist() == POLICY.tolist()


def test_npo_rt_closed_form_and_official_relation():
    beta, c_npo, c_rt = 0.5, 1.5, 2.0
    lengths = t([2.0, 4.0, 1.0, 5.0])
    labels = t([0.0, 1.0, 0.0, 1.0])  # rows 0, 2 forget; rows 1, 3 retain
    losses, metrics = npo_rt(POLICY, REF, lengths, labels, beta=beta, npo_weight=c_npo, retain_weight=c_rt)
    expected = [c_npo * (2 / beta) * softplus(beta * R[0]), c_rt * 8.0 / 4.0,
                c_npo * (2 / beta) * softplus(beta * R[2]), c_rt * 10.0 / 5.0]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert metrics["nll"].tolist() == pytest.approx([2.5, 2.0, 3.0, 2.0], abs=1e-12)
    # official npo_grad_diff: c_npo·mean over the forget batch + c_rt·(retain outputs.loss); with equal-size
    # forget and retain batches and equal-length retain rows, the per-row mean is half of it
    forget, retain = t([0, 2]).long(), t([1, 3]).long()
    equal_lengths = t([4.0, 4.0, 4.0, 4.0])
    ours = npo_rt(POLICY, REF, equal_lengths, labels, beta=beta, npo_weight=c_npo, retain_weight=c_rt)[0].mean()
    official = c_npo * official_npo(-POLICY[forget], -REF[forget], beta) + c_rt * (-POLICY[retain]).sum() / 8.0
    assert ours.item() == pytest.approx(official.item() / 2, abs=1e-12)
    policy = leaf(POLICY.tolist())
    npo_rt(policy, REF, lengths, labels)[0].sum().backward()
    assert policy.grad[1].item() == pytest.approx(-1 / 4) and policy.grad[0].item() > 0


# ------------------------------------------------------------------------------------------------------ D2O

# Two examples, K = 3 samples. Sample log-ratios [1, −2, 0.5] (mean −1/6) and [0, 0, 3] (mean 1);
# negative log-ratios −4 and 2.
SAMPLES_P, SAMPLES_R = t([[-5.0, -9.0, -2.5], [-1.0, -2.0, -3.0]]), t([[-6.0, -7.0, -3.0], [-1.0, -2.0, -6.0]])
NEG_P, NEG_R = t([-10.0, -3.0]), t([-6.0, -5.0])


def test_d2o_closed_form_and_metrics():
    beta, alpha = 0.6, 0.2
    losses, metrics = d2o(SAMPLES_P, NEG_P, SAMPLES_R, NEG_R, beta=beta, alpha=alpha)
    z = [beta * (-1 / 6) - alpha * (-4.0), beta * 1.0 - alpha * 2.0]
    assert losses.tolist() == pytest.approx([softplus(-x) for x in z], abs=1e-12)
    assert metrics["rewards/margins"].tolist() == pytest.approx(z, abs=1e-12)
    assert metrics["rewards/accuracies"].tolist() == [1.0, 1.0]
    assert metrics["rewards/rejected"].tolist() == pytest.approx([-0.8, 0.4], abs=1e-12)


@pytest.mark.parametrize("beta,alpha", [(0.1, 0.1), (1.0, 0.05), (0.01, 2.0)])
def test_d2o_is_ln2_at_the_reference(beta, alpha):
    losses, metrics = d2o(SAMPLES_P.float(), NEG_P.float(), SAMPLES_P.float(), NEG_P.float(), beta=beta, alpha=alpha)
    assert (losses - LN2).abs().max().item() < 1e-7
    assert metrics["rewards/accuracies"].sum().item() == 0.0


def test_d2o_gradients_and_the_one_sample_dpo_case():
    beta, alpha = 0.6, 0.2
    samples, negative = leaf(SAMPLES_P.tolist()), leaf(NEG_P.tolist())
    d2o(samples, negative, SAMPLES_R, NEG_R, beta=beta, alpha=alpha)[0].sum().backward()
    z = [beta * (-1 / 6) - alpha * (-4.0), beta * 1.0 - alpha * 2.0]
    for b in range(2):  # dL/dlp_i = −σ(−z) β/K;  dL/dlp_l = σ(−z) α
        assert samples.grad[b].tolist() == pytest.approx([-sigmoid(-z[b]) * beta / 3] * 3, abs=1e-12)
        assert negative.grad[b].item() == pytest.approx(sigmoid(-z[b]) * alpha, abs=1e-12)
    # K = 1 and α = β is DPO with the sample as the chosen completion
    ours = d2o(SAMPLES_P[:, :1], NEG_P, SAMPLES_R[:, :1], NEG_R, beta=0.4, alpha=0.4)[0]
    assert torch.allclose(ours, dpo(SAMPLES_P[:, 0], NEG_P, SAMPLES_R[:, 0], NEG_R, beta=0.4)[0], rtol=0, atol=1e-15)


# ----------------------------------------------------------------------------------------------------- LOGO

# token-mean log-probs: chosen [B, 1], M = 2 rejected
A_W, A_L = t([[-1.0], [-2.0]]), t([[-1.5, -2.5], [-1.0, -2.0]])


def official_logo(a_w, a_l, ce_w, beta, gamma_beta_ratio, lam):
    """ZetangForward/LCM_Stack training/logo_train.py (LOGOTrainer) loss, with the mean over the M negatives
    taken cleanly (as the porting notes say): SimPO margin on averaged negatives plus λ·SFT CE."""
    z = (a_w - a_l.mean(1)) - gamma_beta_ratio
    return -F.logsigmoid(beta * z).mean() + lam * ce_w


def test_logo_closed_form_official_formula_and_gradients():
    beta, ratio, lam = 10.0, 0.3, 0.1
    losses, metrics = logo(A_W, A_L, beta=beta, gamma_beta_ratio=ratio, sft_weight=lam)
    # margins a_w − mean a_l: 1.0 and −0.5
    expected = [softplus(-(beta * 1.0 - beta * ratio)) + lam * 1.0, softplus(-(beta * -0.5 - beta * ratio)) + lam * 2.0]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert metrics["rewards/accuracies"].tolist() == [1.0, 0.0] and metrics["nll"].tolist() == [1.0, 2.0]
    official = official_logo(A_W[:, 0], A_L, (-A_W[:, 0]).mean(), beta, ratio, lam)
    assert abs(losses.mean().item() - official.item()) < 1e-12
    chosen, rejected = leaf(A_W.tolist()), leaf(A_L.tolist())
    logo(chosen, rejected, beta=beta, gamma_beta_ratio=ratio, sft_weight=lam)[0].sum().backward()
    for b, margin in enumerate([1.0, -0.5]):
        s = sigmoid(-(beta * margin - beta * ratio))
        assert chosen.grad[b, 0].item() == pytest.approx(-beta * s - lam, abs=1e-12)
        assert rejected.grad[b].tolist() == pytest.approx([beta * s / 2] * 2, abs=1e-12)


def test_logo_defaults_and_one_chosen_only():
    assert get("logo").defaults == {"beta": 10.0, "gamma_beta_ratio": 0.3, "sft_weight": 0.1}
    with pytest.raises(ValueError, match="one preferred"):
        logo(t([[-1.0, -2.0]]), t([[-3.0, -4.0]]))


# ------------------------------------------------------------------------------------------------------ AFT

# one question: positives s_p = [−1, −2], negatives s_n = [−1.5, −4]
S_POS, S_NEG = t([[-1.0, -2.0]]), t([[-1.5, -4.0]])
GAPS = [[-0.5, -3.0], [0.5, -2.0]]  # s_n − s_p, rows p, columns n


def test_aft_closed_form_for_each_constraint():
    vft = 0.5
    total = 1 + sum(math.exp(g) for row in GAPS for g in row)
    for constraint in ("none", "detached"):  # detaching changes gradients, not the value
        losses, metrics = aft(S_POS, S_NEG, vft_weight=vft, constraint=constraint)
        assert losses.tolist() == pytest.approx([vft * 1.5 + math.log(total)], abs=1e-12)
    bounded = 1 + sum(math.exp(max(g, -1.0)) for row in GAPS for g in row)
    losses, metrics = aft(S_POS, S_NEG, vft_weight=vft, constraint="boundary", boundary=1.0)
    assert losses.tolist() == pytest.approx([vft * 1.5 + math.log(bounded)], abs=1e-12)
    assert metrics["rewards/chosen"].tolist() == [-1.5] and metrics["rewards/rejected"].tolist() == [-2.75]
    assert metrics["rewards/accuracies"].tolist() == [0.0]  # −2 < −1.5: not every positive wins
    assert aft(t([[-1.0, -1.2]]), S_NEG)[1]["rewards/accuracies"].tolist() == [1.0]
    assert aft(t([[-500.0]]), t([[0.0]]), vft_weight=0.0)[0].item() == pytest.approx(500.0, rel=1e-12)


def test_aft_detached_sends_no_gradient_to_negatives():
    grads = {}
    for constraint in ("none", "detached"):
        positives, negatives = leaf(S_POS.tolist()), leaf(S_NEG.tolist())
        aft(positives, negatives, vft_weight=0.0, constraint=constraint)[0].sum().backward()
        grads[constraint] = (positives.grad, negatives.grad)
    assert grads["detached"][1] is None  # detached: autograd never reaches the negatives
    assert grads["none"][1].abs().min().item() > 1e-3  # without the constraint negatives are pushed down
    assert (grads["none"][1] > 0).all()
    assert torch.allclose(grads["detached"][0], grads["none"][0], rtol=0, atol=1e-15)
    total = 1 + sum(math.exp(g) for row in GAPS for g in row)  # d/ds_p: −Σ_n exp(g_pn) / total
    expected = [-(math.exp(GAPS[p][0]) + math.exp(GAPS[p][1])) / total for p in range(2)]
    assert grads["detached"][0][0].tolist() == pytest.approx(expected, abs=1e-12)


def test_aft_boundary_stops_pushing_negatives_far_below():
    positives, negatives = leaf(S_POS.tolist()), leaf(S_NEG.tolist())
    aft(positives, negatives, vft_weight=1.0, constraint="boundary", boundary=1.0)[0].sum().backward()
    # negative −4 is more than 1 below both positives: clamped, no gradient; −1.5 is not
    assert negatives.grad[0, 1].item() == 0.0 and negatives.grad[0, 0].item() > 0
    with pytest.raises(ValueError, match="constraint"):
        aft(S_POS, S_NEG, constraint="soft")


def test_aft_rank_closed_forms_and_the_two_completion_case():
    s = t([[-1.0, -1.5, -0.5]])  # ranked best first; the last one currently scores highest
    pairs = [(0, 1), (0, 2), (1, 2)]
    pairwise = 1.0 + sum(softplus(s[0, j].item() - s[0, i].item()) for i, j in pairs)
    listwise = 1.0 + sum(math.log(1 + sum(math.exp(s[0, j].item() - s[0, i].item()) for j in range(i + 1, 3)))
                         for i in range(3))
    losses, metrics = aft_rank(s)
    assert losses.tolist() == pytest.approx([pairwise], abs=1e-12)
    assert aft_rank(s, form="listwise")[0].tolist() == pytest.approx([listwise], abs=1e-12)
    assert abs(pairwise - listwise) > 1e-3
    assert metrics["rewards/accuracies"].tolist() == [0.0]
    assert aft_rank(t([[-1.0, -1.5, -2.5]]))[1]["rewards/accuracies"].tolist() == [1.0]
    two = t([[-1.0, -0.2], [-3.0, -4.0]])
    for form in ("pairwise", "listwise"):
        assert torch.allclose(aft_rank(two, form=form)[0], aft(two[:, :1], two[:, 1:])[0], rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="form"):
        aft_rank(s, form="other")


@pytest.mark.parametrize("form", ["pairwise", "listwise"])
def test_aft_rank_detached_never_pushes_a_completion_down(form):
    scores = leaf([[-1.0, -1.5, -0.5, -3.0]])
    aft_rank(scores, vft_weight=0.0, form=form)[0].sum().backward()
    assert (scores.grad <= 0).all() and scores.grad[0, -1].item() == 0.0  # the worst gets no gradient
    assert scores.grad[0, 0].item() < 0
    scores = leaf([[-1.0, -1.5, -0.5, -3.0]])
    aft_rank(scores, vft_weight=0.0, form=form, constraint="none")[0].sum().backward()
    assert scores.grad[0, -1].item() > 0  # unconstrained, the worst is pushed down


# ----------------------------------------------------------------------------------------------------- PoFT


def test_poft_closed_form_aggregates_and_gradient():
    s_theta = t([-1.0, -2.0, -0.5])
    scores = t([[-1.5, -0.5], [-3.0, -2.5], [-0.5, -0.5]])
    beta = 2.0
    for aggregate, s_a in (("mean", [-1.0, -2.75, -0.5]), ("max", [-0.5, -2.5, -0.5]), ("min", [-1.5, -3.0, -0.5])):
        losses, metrics = poft(s_theta, scores, beta=beta, aggregate=aggregate)
        assert losses.tolist() == pytest.approx([softplus(-beta * (a - b)) for a, b in zip(s_theta.tolist(), s_a)],
                                                abs=1e-12)
        assert metrics["rewards/rejected"].tolist() == s_a
    _, metrics = poft(s_theta, scores, aggregate="mean")
    assert metrics["rewards/accuracies"].tolist() == [0.0, 1.0, 0.0]  # ties are not wins
    policy = leaf(s_theta.tolist())
    poft(policy, scores, beta=beta)[0].sum().backward()
    s_a = [-1.0, -2.75, -0.5]  # d/ds_θ = −β σ(β (s_A − s_θ))
    assert policy.grad.tolist() == pytest.approx([-beta * sigmoid(beta * (a - b)) for b, a in
                                                  zip(s_theta.tolist(), s_a)], abs=1e-12)
    with pytest.raises(ValueError, match="aggregate"):
        poft(s_theta, scores, aggregate="median")


# ------------------------------------------------------------------------------------------------- registry

DECLARED = {
    "kto": ("unpaired", "sum", ("policy_completion_logps", "ref_completion_logps", "policy_kl_logps",
                                "ref_kl_logps", "labels")),
    "bco": ("unpaired", "sum", ("policy_completion_logps", "ref_completion_logps", "labels")),
    "bco_udm": ("unpaired", "sum", ("policy_completion_logps", "ref_completion_logps", "labels", "scores")),
    "npo": ("negative", "sum", ("policy_completion_logps", "ref_completion_logps")),
    "npo_rt": ("unpaired", "sum", ("policy_completion_logps", "ref_completion_logps", "completion_lengths",
                                   "labels")),
    "gradient_ascent": ("negative", "sum", ("policy_completion_logps", "completion_lengths")),
    "d2o": ("samples", "sum", ("policy_samples_logps", "policy_rejected_logps", "ref_samples_logps",
                               "ref_rejected_logps")),
    "logo": ("list", "mean", ("policy_chosen_logps", "policy_rejected_logps")),
    "aft": ("list", "mean", ("policy_chosen_logps", "policy_rejected_logps")),
    "aft_rank": ("ranked", "mean", ("policy_ranked_logps",)),
    "poft": ("sft", "mean", ("policy_completion_logps", "scores")),
}


@pytest.mark.parametrize("name", sorted(DECLARED))
def test_registry_declarations_match_the_functions(name):
    objective = get(name)
    data_format, logps, inputs = DECLARED[name]
    assert (objective.data_format, objective.logps, objective.inputs) == (data_format, logps, inputs)
    assert objective.needs_reference == any(i.startswith("ref_") for i in inputs)
    parameters = inspect.signature(objective.fn).parameters
    assert list(parameters)[:len(inputs)] == list(inputs)  # positional order is the declared order
    keyword = {key: p.default for key, p in parameters.items() if p.kind is p.KEYWORD_ONLY and key != "state"}
    assert objective.defaults == keyword  # every parameter is declared, with the function's default
    assert (objective.state is RunningMean) == (name in ("bco", "bco_udm"))
    if objective.state is not None:
        state = objective.state()
        state.load_state_dict(state.state_dict())


def test_paper_defaults():
    assert get("kto").defaults == {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.0}
    assert get("bco_udm").defaults["min_density_ratio"] == 0.5 and get("bco_udm").defaults["max_density_ratio"] == 10
    assert get("npo").defaults == {"beta": 0.1} and get("npo_rt").defaults["beta"] == 0.1
    assert get("d2o").defaults == {"beta": 0.1, "alpha": 0.1}
    assert get("aft").defaults["constraint"] == "detached" and get("poft").defaults == {"beta": 1.0, "aggregate": "mean"}


# ----------------------------------------------------------------------------------------------- TRL parity


@pytest.fixture(scope="module")
def tokenizer(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@pytest.fixture(scope="module")
def models(tokenizer):
    ids = {"pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id}
    return (tiny_llama(len(tokenizer), seed=0, initializer_range=0.3, **ids),
            tiny_llama(len(tokenizer), seed=1, initializer_range=0.3, **ids))


def random_ids(generator, count):
    return torch.randint(10, 5000, (count,), generator=generator).tolist()


def sums(model, input_ids, attention_mask, completion_mask):
    return completion_logps(model, input_ids, attention_mask, completion_mask.bool()).sum


KTO_BETA = 0.3


@pytest.fixture(scope="module")
def kto_setup(tokenizer, models, tmp_path_factory):
    from datasets import Dataset
    from trl import KTOConfig, KTOTrainer

    policy, reference = models
    dataset = Dataset.from_dict({"prompt": ["Question one:", "Question two:"], "completion": [" yes", " no"],
                                 "label": [True, False]})
    args = KTOConfig(output_dir=str(tmp_path_factory.mktemp("trl_kto")), report_to="none", beta=KTO_BETA,
                     use_cpu=True, per_device_train_batch_size=2, bf16=False, desirable_weight=1.3,
                     undesirable_weight=0.7, precompute_ref_log_probs=False)
    trainer = KTOTrainer(model=policy, ref_model=reference, args=args, train_dataset=dataset,
                         processing_class=tokenizer)
    assert trainer.loss_type == "kto" and trainer.calculate_KL and not trainer.precompute_ref_logps
    generator = torch.Generator().manual_seed(0)
    rows = [{"prompt_ids": random_ids(generator, 3 + i), "completion_ids": random_ids(generator, 2 + (3 * i) % 5),
             "KL_completion_ids": random_ids(generator, 1 + (2 * i) % 4), "label": label}
            for i, label in enumerate([True, False, True, False, False])]
    return trainer, trainer.data_collator(rows)


def kto_ours(policy, reference, batch, ref_logps=None, ref_kl_logps=None):
    main = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    mismatched = (batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"])
    with torch.no_grad():
        kl_logps = sums(policy, *mismatched)
        if ref_logps is None:
            ref_logps, ref_kl_logps = sums(reference, *main), sums(reference, *mismatched)
    return kto(sums(policy, *main), ref_logps, kl_logps, ref_kl_logps, batch["label"].float(), beta=KTO_BETA,
               desirable_weight=1.3, undesirable_weight=0.7)


def test_kto_parity_with_trl_kto_trainer(kto_setup, models):
    trainer, batch = kto_setup
    policy, reference = models
    policy.zero_grad(set_to_none=True)
    trl_loss = trainer._compute_loss(policy, dict(batch), return_outputs=False)
    trl_loss.backward()
    trl_grads = {name: p.grad.clone() for name, p in policy.named_parameters()}
    trl_kl = [v for mode in ("train", "eval") for v in trainer._metrics[mode]["kl"]][-1]
    policy.zero_grad(set_to_none=True)
    losses, metrics = kto_ours(policy, reference, batch)
    diff = abs(losses.mean().item() - trl_loss.item())
    losses.mean().backward()
    worst = max((p.grad - trl_grads[name]).abs().max().item() for name, p in policy.named_parameters())
    print(f"KTO vs TRL KTOTrainer (ref model): loss diff {diff:.3g}, grad diff {worst:.3g}, z0 {trl_kl:.4f}")
    assert diff < 1e-6 and worst < 1e-6
    assert metrics["kl"][0].item() == pytest.approx(trl_kl, abs=1e-6)
    assert metrics["rewards"].abs().min().item() > 1e-3
    assert max(g.abs().max().item() for g in trl_grads.values()) > 1e-4
    policy.zero_grad(set_to_none=True)


def test_kto_parity_with_trl_kto_trainer_positive_reference_point(kto_setup, models, monkeypatch):
    """TRL's precomputed-reference path, with reference KL log-probs shifted so that z0 > 0 (not clamped)."""
    trainer, batch = kto_setup
    policy, reference = models
    monkeypatch.setattr(trainer, "precompute_ref_logps", True)
    with torch.no_grad():
        kl_logps = sums(policy, batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"])
        logps = sums(policy, batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    ref_kl_logps = kl_logps - torch.tensor([1.0, 2.0, 3.0, 0.5, 1.5])  # z0 = 1.6
    ref_logps = logps - torch.tensor([4.0, -2.0, 0.0, 3.0, 1.6])  # log-ratios on both sides of z0
    policy.zero_grad(set_to_none=True)
    trl_loss = trainer._compute_loss(policy, dict(batch, ref_logps=ref_logps, ref_KL_logps=ref_kl_logps),
                                     return_outputs=False)
    trl_loss.backward()
    trl_grads = {name: p.grad.clone() for name, p in policy.named_parameters()}
    policy.zero_grad(set_to_none=True)
    losses, metrics = kto_ours(policy, reference, batch, ref_logps, ref_kl_logps)
    losses.mean().backward()
    worst = max((p.grad - trl_grads[name]).abs().max().item() for name, p in policy.named_parameters())
    policy.zero_grad(set_to_none=True)
    z0 = metrics["kl"][0].item()
    diff = abs(losses.mean().item() - trl_loss.item())
    print(f"KTO vs TRL KTOTrainer (precomputed ref, z0 {z0:.3f}): loss diff {diff:.3g}, grad diff {worst:.3g}")
    assert z0 == pytest.approx(1.6, abs=1e-5) and diff < 1e-6 and worst < 1e-6
    assert 0.05 < losses.min().item() and losses.max().item() < 0.95 * 1.3  # no saturated sigmoid


def test_bco_pair_of_trl_dpo_trainer_is_bco_without_the_shift(tokenizer, models, tmp_path_factory):
    """TRL's DPOTrainer(loss_type="bco_pair") = −log σ(β r_w) − log σ(−β r_l): our BCO on the pair's two rows
    with δ held at 0 (a state with an enormous count), summed per pair. With a running δ they differ."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy, reference = models
    beta = 0.2
    dataset = Dataset.from_dict({"prompt": ["Question:"], "chosen": [" yes"], "rejected": [" no"]})
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("trl_bco_pair")), report_to="none", loss_type="bco_pair",
                     beta=beta, precompute_ref_log_probs=False, use_cpu=True, per_device_train_batch_size=3,
                     bf16=False)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=dataset,
                         processing_class=tokenizer)
    assert trainer.loss_types == ["bco_pair"]
    generator = torch.Generator().manual_seed(1)
    rows = []  # three pairs: chosen rows first, then rejected rows (TRL's concatenated layout)
    prompts = [random_ids(generator, 4 + i) for i in range(3)]
    for lengths in ((3, 5, 2), (4, 1, 6)):
        rows += [(prompt, random_ids(generator, n)) for prompt, n in zip(prompts, lengths)]
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.zeros(6, width, dtype=torch.long)
    attention_mask, completion_mask = torch.zeros_like(input_ids), torch.zeros_like(input_ids)
    for i, (prompt, completion) in enumerate(rows):
        n, m = len(prompt), len(completion)
        input_ids[i, :n + m] = torch.tensor(prompt + completion)
        attention_mask[i, :n + m], completion_mask[i, n:n + m] = 1, 1
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}
    with torch.no_grad():
        trl_loss = trainer._compute_loss(policy, dict(batch), return_outputs=False)
        policy_logps, ref_logps = sums(policy, **batch), sums(reference, **batch)
    labels = torch.tensor([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    held = bco(policy_logps, ref_logps, labels, beta=beta, state=RunningMean(0.0, 1e30))[0]
    diff = abs(2 * held.mean().item() - trl_loss.item())
    running, metrics = bco(policy_logps, ref_logps, labels, beta=beta, state=RunningMean())
    print(f"BCO (δ = 0) vs TRL bco_pair: loss diff {diff:.3g}; with running δ = {metrics['delta'][0]:.4f} "
          f"the loss differs by {abs(2 * running.mean().item() - trl_loss.item()):.3g}")
    assert diff < 1e-6
    assert abs(metrics["delta"][0].item()) > 1e-2
    assert abs(2 * running.mean().item() - trl_loss.item()) > 1e-4
