"""The DPO objective: closed-form values and gradients, invariants, the registry, and parity with TRL 1.16."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from conftest import CONVERSATIONAL_EXAMPLES, tiny_llama

from alignkit.data import collate_rows, tokenize_examples
from alignkit.models.logprobs import CompletionScorer, pair_logps
from alignkit.objectives import KNOWN_INPUTS, Objective, available, dpo, get, register
from alignkit.objectives import registry as registry_module

LN2 = math.log(2.0)


def softplus(x: float) -> float:
    """log(1 + exp(x)) = −log σ(−x), computed by hand."""
    return math.log1p(math.exp(x)) if x < 30 else x + math.log1p(math.exp(-x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


# Three pairs, β = 0.5. Log-ratios (policy − reference):
#   pair 0: chosen −10 − (−11) = 1.0, rejected −12 − (−11.5) = −0.5  → Δ = 1.5,  βΔ = 0.75
#   pair 1: chosen −4 − (−3.5) = −0.5, rejected −3 − (−3.5) = 0.5   → Δ = −1.0, βΔ = −0.5
#   pair 2: all equal                                                → Δ = 0,    βΔ = 0
PC, PR, RC, RR = t([-10.0, -4.0, -6.0]), t([-12.0, -3.0, -6.0]), t([-11.0, -3.5, -6.0]), t([-11.5, -3.5, -6.0])
BETA = 0.5
BETA_DELTA = [0.75, -0.5, 0.0]


def test_closed_form_values_and_metrics():
    losses, metrics = dpo(PC, PR, RC, RR, beta=BETA)
    assert losses.shape == (3,)  # one loss per pair
    # loss = log(1 + exp(−βΔ))
    expected = [softplus(-0.75), softplus(0.5), LN2]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert expected[0] == pytest.approx(0.3868710, abs=1e-6)  # the hand formula itself, evaluated once by hand
    assert set(metrics) == {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"}
    assert metrics["rewards/chosen"].tolist() == pytest.approx([0.5, -0.25, 0.0], abs=1e-12)
    assert metrics["rewards/rejected"].tolist() == pytest.approx([-0.25, 0.25, 0.0], abs=1e-12)
    assert metrics["rewards/margins"].tolist() == pytest.approx(BETA_DELTA, abs=1e-12)
    assert metrics["rewards/accuracies"].tolist() == [1.0, 0.0, 0.0]  # a tie is not a win
    for value in metrics.values():
        assert value.shape == (3,)


def test_cdpo_closed_form():
    eps = 0.2
    losses, metrics = dpo(PC, PR, RC, RR, beta=BETA, label_smoothing=eps)
    # −(1−ε) log σ(x) − ε log σ(−x) = (1−ε)·softplus(−x) + ε·softplus(x)
    expected = [(1 - eps) * softplus(-x) + eps * softplus(x) for x in BETA_DELTA]
    assert losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert losses[0].item() > dpo(PC, PR, RC, RR, beta=BETA)[0][0].item()  # smoothing penalises a confident win
    assert metrics["rewards/margins"].tolist() == pytest.approx(BETA_DELTA, abs=1e-12)  # metrics ignore ε


def test_default_beta_is_0_1():
    losses, _ = dpo(PC, PR, RC, RR)
    assert losses.tolist() == pytest.approx([softplus(-0.15), softplus(0.1), LN2], abs=1e-12)
    assert get("dpo").defaults == {"beta": 0.1, "label_smoothing": 0.0}


def test_large_margins_are_numerically_stable():
    zero = t([0.0, 0.0])
    losses, _ = dpo(t([500.0, -500.0]), zero, zero, zero, beta=2.0)  # βΔ = ±1000
    assert torch.isfinite(losses).all()
    assert losses[0].item() == pytest.approx(0.0, abs=1e-300)
    assert losses[1].item() == pytest.approx(1000.0, rel=1e-12)
    losses32, _ = dpo(t([500.0, -500.0]).float(), zero.float(), zero.float(), zero.float(), beta=2.0)
    assert torch.isfinite(losses32).all() and losses32[1].item() == pytest.approx(1000.0, rel=1e-6)


@pytest.mark.parametrize("beta", [0.01, 0.1, 0.5, 2.0])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3, 0.49])
def test_loss_is_ln2_when_policy_equals_reference(beta, eps):
    logps_c = torch.tensor([-3.7, -120.25, -0.5, -41.0])
    logps_r = torch.tensor([-9.1, -80.5, -200.0, -41.0])
    losses, metrics = dpo(logps_c, logps_r, logps_c.clone(), logps_r.clone(), beta=beta, label_smoothing=eps)
    assert losses.dtype == torch.float32
    assert (losses - LN2).abs().max().item() < 1e-7
    assert metrics["rewards/margins"].abs().max().item() == 0.0
    assert metrics["rewards/accuracies"].sum().item() == 0.0


def test_loss_depends_only_on_the_margin():
    """Shifting a pair's four log-probs by one constant, or both reference values by another, changes nothing."""
    base, _ = dpo(PC, PR, RC, RR, beta=BETA, label_smoothing=0.1)
    shifted, _ = dpo(PC + 7.0, PR + 7.0, RC - 3.0, RR - 3.0, beta=BETA, label_smoothing=0.1)
    assert torch.allclose(base, shifted, rtol=0, atol=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.15, 0.4])
def test_gradient_closed_form(eps):
    beta = 0.7
    pc, pr = t([-5.0, -20.0, -1.0]).requires_grad_(), t([-6.0, -18.0, -4.0]).requires_grad_()
    rc, rr = t([-5.5, -19.0, -3.0]).requires_grad_(), t([-5.0, -18.5, -2.0]).requires_grad_()
    losses, metrics = dpo(pc, pr, rc, rr, beta=beta, label_smoothing=eps)
    assert all(not value.requires_grad for value in metrics.values())  # metrics are detached
    losses.sum().backward()
    deltas = [(a - b) - (c - d) for a, b, c, d in zip(pc.tolist(), rc.tolist(), pr.tolist(), rr.tolist())]
    assert deltas == pytest.approx([1.5, -1.5, 4.0])
    # dL/dΔ = −β(1−ε)σ(−βΔ) + βεσ(βΔ); Δ = pc − rc − pr + rr
    d_delta = [-beta * (1 - eps) * sigmoid(-beta * d) + beta * eps * sigmoid(beta * d) for d in deltas]
    assert pc.grad.tolist() == pytest.approx(d_delta, abs=1e-12)
    assert pr.grad.tolist() == pytest.approx([-g for g in d_delta], abs=1e-12)
    assert rc.grad.tolist() == pytest.approx([-g for g in d_delta], abs=1e-12)
    assert rr.grad.tolist() == pytest.approx(d_delta, abs=1e-12)


def test_plain_dpo_always_pushes_chosen_up():
    deltas = t([-30.0, -1.0, 0.0, 1.0, 30.0])
    pc = deltas.clone().requires_grad_()
    zero = torch.zeros_like(deltas)
    dpo(pc, zero, zero, zero, beta=0.1)[0].sum().backward()
    assert (pc.grad < 0).all()
    assert pc.grad[2].item() == pytest.approx(-0.05, abs=1e-12)  # −β·σ(0)


@pytest.mark.parametrize("eps", [0.05, 0.2, 0.45])
def test_cdpo_gradient_vanishes_at_its_optimum(eps):
    """With smoothing, the loss is minimised where σ(βΔ) = 1 − ε, i.e. βΔ = log((1 − ε)/ε)."""
    beta = 0.25
    delta_star = math.log((1 - eps) / eps) / beta
    pc = t([delta_star, delta_star + 5.0, delta_star - 5.0]).requires_grad_()
    zero = torch.zeros(3, dtype=torch.float64)
    losses, _ = dpo(pc, zero, zero, zero, beta=beta, label_smoothing=eps)
    losses.sum().backward()
    assert pc.grad[0].item() == pytest.approx(0.0, abs=1e-12)
    assert pc.grad[1].item() > 0 and pc.grad[2].item() < 0  # past the optimum it pulls back
    assert losses[0].item() < losses[1].item() and losses[0].item() < losses[2].item()
    # the minimum value is the binary entropy of ε
    assert losses[0].item() == pytest.approx(-(1 - eps) * math.log(1 - eps) - eps * math.log(eps), abs=1e-12)


@pytest.mark.parametrize("eps", [-0.1, 0.5, 0.7, 1.0])
def test_label_smoothing_out_of_range_raises(eps):
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo(PC, PR, RC, RR, label_smoothing=eps)


# ----------------------------------------------------------------------------------------------- registry


def test_registry_declares_dpo():
    objective = get("dpo")
    assert objective.fn is dpo
    assert objective.inputs == ("policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
                                "ref_rejected_logps", "row_label_smoothing")
    assert objective.optional_inputs == ("row_label_smoothing",)
    assert set(objective.inputs) <= set(KNOWN_INPUTS)
    assert objective.needs_reference is True
    assert objective.logps == "sum" and objective.data_format == "preference"
    assert objective in available()
    # calling through the declaration gives the same losses as calling the function
    args = dict(zip(objective.inputs, (PC, PR, RC, RR)))
    via_registry, _ = objective(args, objective.defaults)
    assert torch.equal(via_registry, dpo(PC, PR, RC, RR)[0])


def test_unknown_objective_raises_keyerror_listing_names():
    with pytest.raises(KeyError) as info:
        get("no-such-objective")
    message = str(info.value)
    assert "no-such-objective" in message
    for objective in available():
        assert objective.name in message


def test_duplicate_registration_raises_and_keeps_the_original(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))
    def other_dpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, *, beta=0.1):
        return None

    impostor = dataclasses.replace(get("dpo"), fn=other_dpo)
    with pytest.raises(ValueError, match="already registered"):
        register(impostor)
    assert get("dpo").fn is dpo


def test_register_derives_inputs_and_defaults_from_the_signature(monkeypatch):
    monkeypatch.setattr(registry_module, "_REGISTRY", dict(registry_module._REGISTRY))

    def takes_an_unknown_input(policy_chosen_logps, reward, *, beta=0.1):
        return policy_chosen_logps, {}

    with pytest.raises(ValueError, match="'reward' of takes_an_unknown_input is neither an input"):
        register(Objective(name="bad", fn=takes_an_unknown_input, description="", source=""))
    with pytest.raises(KeyError):
        get("bad")

    def foreign_slot(policy_chosen_logps, policy_completion_logps):
        return policy_chosen_logps, {}

    with pytest.raises(ValueError, match="'policy_completion_logps' is not a slot of the 'preference' format"):
        register(Objective(name="foreign", fn=foreign_slot, description="", source=""))

    def stateful(policy_chosen_logps, *, state=None):
        return policy_chosen_logps, {}

    with pytest.raises(ValueError, match="no state factory"):
        register(Objective(name="stateless", fn=stateful, description="", source=""))

    def reference_free(policy_chosen_logps, policy_rejected_logps, *, beta: float = 0.5, margin: float = 1.0):
        return beta * (policy_chosen_logps - policy_rejected_logps) - margin, {}

    objective = register(Objective(name="aaa-reference-free", fn=reference_free, description="", source=""))
    assert objective.inputs == ("policy_chosen_logps", "policy_rejected_logps")
    assert objective.defaults == {"beta": 0.5, "margin": 1.0}
    assert objective.needs_reference is False
    assert get("aaa-reference-free") is objective
    names = [objective.name for objective in available()]
    assert names == sorted(names) and "aaa-reference-free" in names


def test_every_registered_objective_declares_exactly_its_signature():
    """Inputs, parameters and `state` together are every parameter of the function, so the trainer passes
    each one by name and `objective.params` can set every default."""
    import inspect

    for objective in available():
        parameters = list(inspect.signature(objective.fn).parameters)
        declared = [*objective.inputs, *objective.defaults, *(["state"] if objective.state else [])]
        assert sorted(declared) == sorted(parameters), objective.name
        assert set(objective.inputs) <= set(KNOWN_INPUTS) | set(objective.prepared), objective.name


# ----------------------------------------------------------------------------------------------- TRL parity

EXAMPLES = CONVERSATIONAL_EXAMPLES
TRL_BETA = 0.3


@pytest.fixture(scope="module")
def trl_setup(smol_tokenizer_dir, tmp_path_factory):
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    # a wide initialisation so the two random models disagree and the margins are far from 0
    policy = tiny_llama(len(tokenizer), seed=0, initializer_range=0.3, **ids)
    reference = tiny_llama(len(tokenizer), seed=1, initializer_range=0.3, **ids)
    dataset = Dataset.from_dict({
        "prompt": [example.prompt for example in EXAMPLES],
        "chosen": [example.slot("chosen")[0] for example in EXAMPLES],
        "rejected": [example.slot("rejected")[0] for example in EXAMPLES],
    })
    args = DPOConfig(output_dir=str(tmp_path_factory.mktemp("trl_dpo")), report_to="none", loss_type="sigmoid",
                     beta=TRL_BETA, precompute_ref_log_probs=False, use_cpu=True, per_device_train_batch_size=3,
                     bf16=False)  # TRL defaults to bf16, which autocasts the prepared reference model's forward
    assert not args.bf16 and not args.fp16
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=dataset,
                         processing_class=tokenizer)
    assert trainer.loss_types == ["sigmoid"] and trainer.f_divergence_type == "reverse_kl"
    assert trainer.ld_alpha is None and not trainer.use_weighting and trainer.beta == TRL_BETA
    pairs, _ = tokenize_examples(EXAMPLES, tokenizer)
    batch = collate_rows(pairs, tokenizer.pad_token_id)
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "completion_mask")}
    return trainer, policy, reference, inputs


def alignkit_loss(policy, reference, inputs, beta):
    chosen, rejected = pair_logps(CompletionScorer(policy), inputs)
    with torch.no_grad():
        ref_chosen, ref_rejected = pair_logps(CompletionScorer(reference), inputs)
    losses, metrics = dpo(chosen.sum, rejected.sum, ref_chosen.sum, ref_rejected.sum, beta=beta)
    return losses, metrics, (ref_chosen.sum, ref_rejected.sum)


def test_parity_with_trl_dpo_trainer_reference_model(trl_setup):
    trainer, policy, reference, inputs = trl_setup
    policy.zero_grad(set_to_none=True)
    trl_loss = trainer._compute_loss(policy, dict(inputs), return_outputs=False)
    trl_loss.backward()
    trl_grads = {name: p.grad.clone() for name, p in policy.named_parameters()}
    policy.zero_grad(set_to_none=True)

    losses, metrics, _ = alignkit_loss(policy, reference, inputs, TRL_BETA)
    assert losses.shape == (3,)
    margins = metrics["rewards/margins"]
    assert margins.abs().min().item() > 0.05, margins  # the comparison is not at the trivial ln 2 point
    diff = abs(losses.mean().item() - trl_loss.item())
    print(f"DPO loss vs TRL DPOTrainer (ref model): alignkit {losses.mean().item():.7f} TRL {trl_loss.item():.7f} "
          f"max abs diff {diff:.3g}; margins {margins.tolist()}")
    assert diff < 1e-5
    losses.mean().backward()
    worst = max((p.grad - trl_grads[name]).abs().max().item() for name, p in policy.named_parameters())
    print(f"policy gradients vs TRL: max abs diff {worst:.3g}")
    assert worst < 1e-5
    assert max(g.abs().max().item() for g in trl_grads.values()) > 1e-3
    policy.zero_grad(set_to_none=True)


def test_parity_with_trl_dpo_trainer_precomputed_reference(trl_setup, monkeypatch):
    """TRL's precomputed-reference path: reference log-probs come from the batch (here: shifted on purpose)."""
    trainer, policy, reference, inputs = trl_setup
    monkeypatch.setattr(trainer, "precompute_ref_logps", True)
    _, _, (ref_chosen, ref_rejected) = alignkit_loss(policy, reference, inputs, TRL_BETA)
    ref_chosen, ref_rejected = ref_chosen + torch.tensor([2.0, -1.0, 0.5]), ref_rejected - 1.5
    with torch.no_grad():
        trl_loss = trainer._compute_loss(policy, dict(inputs, ref_chosen_logps=ref_chosen,
                                                      ref_rejected_logps=ref_rejected), return_outputs=False)
        chosen, rejected = pair_logps(CompletionScorer(policy), inputs)
    losses, _ = dpo(chosen.sum, rejected.sum, ref_chosen, ref_rejected, beta=TRL_BETA)
    diff = abs(losses.mean().item() - trl_loss.item())
    print(f"DPO loss vs TRL DPOTrainer (precomputed ref): max abs diff {diff:.3g}")
    assert diff < 1e-5


def test_per_row_label_smoothing_equals_the_scalar_form_when_all_rows_share_it():
    shared, _ = dpo(PC, PR, RC, RR, beta=BETA, label_smoothing=0.2)
    per_row, _ = dpo(PC, PR, RC, RR, torch.full_like(PC, 0.2), beta=BETA)
    assert torch.allclose(per_row, shared, atol=0, rtol=0)
    # and each row's own ε, by the formula: −(1 − ε) log σ(βΔ) − ε log σ(−βΔ)
    eps = torch.linspace(0.0, 0.45, PC.numel())
    losses, _ = dpo(PC, PR, RC, RR, eps, beta=BETA, label_smoothing=0.3)  # the column wins over the parameter
    delta = ((PC - RC) - (PR - RR)).double()
    expected = -(1 - eps.double()) * torch.log(torch.sigmoid(BETA * delta)) \
        - eps.double() * torch.log(torch.sigmoid(-BETA * delta))
    assert torch.allclose(losses.double(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo(PC, PR, RC, RR, torch.full_like(PC, 0.5))


# ------------------------------------------------------------------------- rDPO (Re-Align's context contrast)

def test_rdpo_equals_its_closed_form():
    """loss = −log σ(βΔ_response) − w log σ(β β_c Δ_context) [− log σ(β r_w)], written out in math."""
    from alignkit.objectives.dpo import rdpo

    pc, pr, pd = [1.5, -2.0, 0.3], [-1.0, 0.5, 0.0], [0.2, -3.0, 1.1]
    rc, rr, rd = [0.5, -1.0, 0.1], [-0.5, 1.0, 0.2], [0.0, -1.0, 0.4]
    beta, context_beta, weight = 0.4, 1.5, 0.7
    for anchor in (False, True):
        losses, metrics = rdpo(*(torch.tensor(v, dtype=torch.float64) for v in (pc, pr, pd, rc, rr, rd)),
                               beta=beta, context_beta=context_beta, context_weight=weight, anchor=anchor)
        for i in range(3):
            chosen, rejected, distractor = beta * (pc[i] - rc[i]), beta * (pr[i] - rr[i]), beta * (pd[i] - rd[i])
            expected = (math.log1p(math.exp(-(chosen - rejected)))
                        + weight * math.log1p(math.exp(-context_beta * (chosen - distractor)))
                        + (math.log1p(math.exp(-chosen)) if anchor else 0.0))
            assert losses[i].item() == pytest.approx(expected, abs=1e-12)
            assert metrics["rewards/context_margins"][i].item() == pytest.approx(chosen - distractor, abs=1e-12)
            assert metrics["rewards/context_accuracies"][i].item() == float(chosen > distractor)


def test_rdpo_at_the_reference_is_two_ln_2_and_its_gradient_raises_the_right_context():
    from alignkit.objectives.dpo import rdpo

    logps = [torch.tensor([-3.0, -7.0], requires_grad=True) for _ in range(3)]
    losses, _ = rdpo(*logps, *(p.detach().clone() for p in logps), beta=0.1)
    assert losses.tolist() == pytest.approx([2 * math.log(2)] * 2, abs=1e-6)
    anchored, _ = rdpo(*logps, *(p.detach().clone() for p in logps), anchor=True)
    assert anchored.tolist() == pytest.approx([3 * math.log(2)] * 2, abs=1e-6)
    losses.sum().backward()
    chosen, rejected, distractor = (p.grad for p in logps)
    # at the reference σ(0) = ½: d/d chosen = −β/2 (response) − β/2 (context); d/d distractor = +β/2
    assert chosen.tolist() == pytest.approx([-0.1, -0.1]) and distractor.tolist() == pytest.approx([0.05, 0.05])
    assert rejected.tolist() == pytest.approx([0.05, 0.05])


def test_rdpo_first_term_matches_trl_dpo_trainer(trl_setup, monkeypatch):
    """With the context term weighted 0, rDPO is TRL's sigmoid DPO on identical log-probs; with weight 1 it adds
    exactly the context term."""
    from alignkit.objectives.dpo import rdpo

    trainer, policy, reference, inputs = trl_setup
    monkeypatch.setattr(trainer, "precompute_ref_logps", True)
    _, _, (ref_chosen, ref_rejected) = alignkit_loss(policy, reference, inputs, TRL_BETA)
    with torch.no_grad():
        trl_loss = trainer._compute_loss(policy, dict(inputs, ref_chosen_logps=ref_chosen,
                                                      ref_rejected_logps=ref_rejected), return_outputs=False)
        chosen, rejected = pair_logps(CompletionScorer(policy), inputs)
    distractor, ref_distractor = chosen.sum - 2.0, ref_chosen + 1.0
    args = (chosen.sum, rejected.sum, distractor, ref_chosen, ref_rejected, ref_distractor)
    first, _ = rdpo(*args, beta=TRL_BETA, context_weight=0.0)
    assert abs(first.mean().item() - trl_loss.item()) < 1e-5
    both, _ = rdpo(*args, beta=TRL_BETA)
    context = -torch.nn.functional.logsigmoid(TRL_BETA * ((chosen.sum - ref_chosen) - (distractor - ref_distractor)))
    assert torch.allclose(both - first, context, atol=1e-6)
