"""Online objectives against hand formulas on fixed tensors, and against TRL 1.16's own loss code."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from alignkit.objectives.online import (group_advantages, grpo, k3, leave_one_out, online_dpo, reinforce_pp,
                                        reinforce_pp_advantages, rloo, step_tokens)


def tokens(seed: int, shape=(2, 3, 4)) -> torch.Tensor:
    return -torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * 3


MASK = torch.tensor([[[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]],
                     [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]], dtype=torch.bool)
REWARDS = torch.tensor([[1.0, 0.0, 0.5], [0.2, 0.2, 0.8]])


def test_leave_one_out_and_group_advantages_by_hand():
    assert torch.allclose(leave_one_out(REWARDS[:1]), torch.tensor([[0.75, -0.75, 0.0]]))
    centred = REWARDS[1] - REWARDS[1].mean()
    std = math.sqrt(sum(float(c) ** 2 for c in centred) / 2)  # unbiased, K − 1 = 2
    assert torch.allclose(group_advantages(REWARDS[1:], "group")[0], centred / (std + 1e-4))
    assert torch.allclose(group_advantages(REWARDS[1:], "none")[0], centred)


def test_k3_closed_form():
    lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -2.0])
    expected = [math.exp(-0.5) + 0.5 - 1, 0.0]
    assert torch.allclose(k3(ref, lp), torch.tensor(expected))


def test_rloo_loss_and_gradient_at_the_sampling_policy():
    """At π_θ = π_old the ratio is 1: loss = −mean A, and ∂loss/∂log π_θ(y_i) = −A_i / K."""
    policy = torch.tensor([[-3.0, -5.0, -4.0]], requires_grad=True)
    ref = torch.tensor([[-2.0, -5.5, -4.0]])
    beta = 0.5
    losses, metrics = rloo(policy, policy.detach(), ref, REWARDS[:1], torch.tensor([[4.0, 6.0, 5.0]]), beta=beta)
    shaped = REWARDS[0] - beta * (policy.detach()[0] - ref[0])  # [1.5, -0.25, 0.5]
    advantages = shaped - (shaped.sum() - shaped) / 2
    assert torch.allclose(losses, -advantages.mean().reshape(1))
    losses.sum().backward()
    assert torch.allclose(policy.grad[0], -advantages / 3)
    assert torch.allclose(metrics["kl"], torch.tensor([(-1.0 + 0.5 + 0.0) / 3]))


def test_rloo_clips_the_ratio():
    """ρ = e^0.5 > 1 + ε with A > 0: the loss is −(1 + ε)·A and carries no gradient."""
    old = torch.tensor([[-3.0, -3.0]])
    policy = (old + torch.tensor([[0.5, 0.0]])).requires_grad_()
    losses, metrics = rloo(policy, old, old, torch.tensor([[1.0, 0.0]]), torch.ones(1, 2), beta=0.0, epsilon=0.2)
    # A = [1, −1]; sample 0 clipped at 1.2; sample 1 at ratio 1
    assert torch.allclose(losses, torch.tensor([(-1.2 + 1.0) / 2]))
    losses.sum().backward()
    assert policy.grad[0, 0] == 0 and policy.grad[0, 1] == pytest.approx(0.5)
    assert metrics["clip_fraction"].item() == 0.5


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_grpo_gradient_by_hand(loss_type):
    """β = 0, ratio 1: ∂loss/∂log π_θ(y_it) = −A_i times the loss type's token weight."""
    policy = tokens(0).requires_grad_()
    budget = torch.full((2,), 6.0)
    mean_step = step_tokens(MASK)["mean_step_tokens"]
    losses, _ = grpo(policy, policy.detach(), tokens(1), MASK, REWARDS, budget, mean_step, beta=0.0,
                     loss_type=loss_type)
    losses.sum().backward()
    advantages = group_advantages(REWARDS, "group").unsqueeze(-1)
    lengths = MASK.sum(-1, keepdim=True).float()
    weight = {"grpo": 1 / (3 * lengths), "dr_grpo": torch.full_like(lengths, 1 / (3 * 6.0)),
              "dapo": torch.full_like(lengths, 1 / (MASK.sum().item() / 2))}[loss_type]
    assert torch.allclose(policy.grad, (-advantages * weight * MASK).expand_as(policy), atol=1e-6)


def test_grpo_kl_term_is_k3_with_beta():
    """Equal rewards: no advantage, so the loss is β times the token-mean k3 ("grpo" normalisation)."""
    policy, ref = tokens(0), tokens(1)
    equal = torch.ones(2, 3)
    losses, metrics = grpo(policy, policy, ref, MASK, equal, torch.full((2,), 6.0), torch.ones(2), beta=0.3,
                           loss_type="grpo")
    per_token = k3(ref, policy) * MASK
    expected = 0.3 * (per_token.sum(-1) / MASK.sum(-1)).mean(-1)
    assert torch.allclose(losses, expected)
    assert torch.equal(metrics["zero_variance"], torch.ones(2))


def test_dapo_normalisation_is_the_steps_token_mean():
    """Averaged over the step's prompts (what the trainer does), "dapo" is Σ token losses / step tokens."""
    policy = tokens(0)
    losses, _ = grpo(policy, policy - 0.1, policy, MASK, REWARDS, torch.full((2,), 6.0),
                     step_tokens(MASK)["mean_step_tokens"], beta=0.0, loss_type="dapo")
    advantages = group_advantages(REWARDS, "group").unsqueeze(-1)
    ratio = math.exp(0.1)
    token = -torch.min(ratio * advantages, torch.clamp(torch.tensor(ratio), 0.8, 1.2) * advantages).expand(2, 3, 4)
    assert losses.mean().item() == pytest.approx(((token * MASK).sum() / MASK.sum()).item(), rel=1e-5)


def test_reinforce_pp_advantages_by_hand():
    """K = 2, lengths 2 and 1, rewards 1 and 0, KL (old − ref) 0.5 per token, β = 0.2: returns [1 − 0.2, −0.1]
    on the first completion, [0 − 0.1] on the second; whitened over the three tokens."""
    rewards = torch.tensor([[1.0, 0.0]])
    mask = torch.tensor([[[1, 1], [1, 0]]], dtype=torch.bool)
    old = torch.full((1, 2, 2), -1.0)
    ref = torch.full((1, 2, 2), -1.5)
    advantages = reinforce_pp_advantages(rewards, old, ref, mask, beta=0.2)["advantages"]
    returns = torch.tensor([1 - 0.1 - 0.1, 1 - 0.1, -0.1])  # G_0 = r_0 + r_1, G_1 = r_1 (+ reward at the end)
    mean, var = returns.mean(), returns.var()  # unbiased
    expected = (returns - mean) / torch.sqrt(var + 1e-8)
    assert torch.allclose(advantages[0, 0], expected[:2], atol=1e-6)
    assert torch.allclose(advantages[0, 1, 0], expected[2], atol=1e-6) and advantages[0, 1, 1] == 0


def test_reinforce_pp_gradient_is_minus_the_advantage_per_token():
    policy = tokens(0).requires_grad_()
    advantages = reinforce_pp_advantages(REWARDS, policy.detach(), tokens(1), MASK)["advantages"]
    losses, _ = reinforce_pp(policy, policy.detach(), tokens(1), MASK, REWARDS, advantages)
    losses.sum().backward()
    lengths = MASK.sum(-1, keepdim=True).float()
    assert torch.allclose(policy.grad, -advantages / lengths / 3 * MASK, atol=1e-6)


def test_online_dpo_takes_the_better_sample_as_chosen():
    policy = torch.tensor([[-3.0, -5.0], [-4.0, -2.0], [-1.0, -1.5]])
    ref = torch.tensor([[-3.5, -4.0], [-4.0, -3.0], [-1.0, -1.0]])
    rewards = torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.5, 0.5]])
    losses, metrics = online_dpo(policy, ref, rewards, torch.ones(3, 2), beta=0.1)
    # row 0: chosen = 1 → 0.1·[(−1) − (0.5)]; row 1: chosen = 0 → 0.1·[0 − 1]; row 2: a tie
    expected = [-torch.nn.functional.logsigmoid(torch.tensor(0.1 * (-1.5))),
                -torch.nn.functional.logsigmoid(torch.tensor(0.1 * -1.0)), torch.tensor(0.0)]
    assert torch.allclose(losses, torch.stack(expected))
    assert metrics["tie"].tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("name", ["rloo", "grpo", "reinforce_pp", "online_dpo"])
def test_a_constant_reward_gives_no_policy_gradient(name):
    policy = tokens(0).requires_grad_()
    constant, ref = torch.full((2, 3), 0.7), tokens(1)
    if name == "rloo":
        losses, _ = rloo(policy.sum(-1), policy.sum(-1).detach(), ref.sum(-1), constant, MASK.sum(-1), beta=0.0)
    elif name == "grpo":
        losses, _ = grpo(policy, policy.detach(), ref, MASK, constant, torch.full((2,), 4.0), torch.ones(2), beta=0.0)
    elif name == "reinforce_pp":
        advantages = reinforce_pp_advantages(constant, policy.detach(), ref, MASK, beta=0.0)["advantages"]
        losses, _ = reinforce_pp(policy, policy.detach(), ref, MASK, constant, advantages, beta=0.0)
    else:
        losses, _ = online_dpo(policy.sum(-1)[:, :2], ref.sum(-1)[:, :2], constant[:, :2], MASK.sum(-1)[:, :2])
    losses.sum().backward()
    assert torch.count_nonzero(policy.grad) == 0


# ------------------------------------------------------------------ parity with TRL 1.16's loss code

class _Accelerator:
    num_processes, sync_gradients = 1, True

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def gather(self, tensor):
        return tensor

    gather_for_metrics = gather


def _trl_stub(per_token_logps: torch.Tensor, **settings) -> SimpleNamespace:
    """What TRL's `_compute_loss` reads of its trainer, with the policy's token log-probs given."""
    def logps_and_entropies(*args, **kwargs):
        return per_token_logps, torch.zeros_like(per_token_logps), None
    return SimpleNamespace(
        _get_per_token_logps_and_entropies=logps_and_entropies, accelerator=_Accelerator(),
        model=SimpleNamespace(training=True), _metrics={"train": defaultdict(list)}, aux_loss_enabled=False,
        top_entropy_quantile=1.0, off_policy_mask_threshold=None, importance_sampling_level="token",
        use_vllm=False, vllm_importance_sampling_correction=False, current_gradient_accumulation_steps=1,
        _entropy_bonus_enabled=False, args=SimpleNamespace(use_bias_correction_kl=False, delta=None,
                                                           steps_per_generation=1), **settings)


def _trl_inputs(mask: torch.Tensor, **extra) -> dict:
    rows, width = mask.shape
    return {"prompt_ids": torch.ones(rows, 2, dtype=torch.long), "prompt_mask": torch.ones(rows, 2, dtype=torch.long),
            "completion_ids": torch.ones(rows, width, dtype=torch.long), "completion_mask": mask.long(), **extra}


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_grpo_equals_trls_loss_and_gradients(loss_type):
    from trl.trainer.grpo_trainer import GRPOTrainer

    beta, budget = 0.04, 4
    old, ref = tokens(2), tokens(3)
    ours = (old + 0.3 * tokens(4)).requires_grad_()  # ratios far enough from 1 that some clip
    theirs = ours.detach().clone().reshape(6, 4).requires_grad_()
    losses, _ = grpo(ours, old, ref, MASK, REWARDS, torch.full((2,), float(budget)),
                     step_tokens(MASK)["mean_step_tokens"], beta=beta, loss_type=loss_type)
    ours_loss = losses.mean()  # the trainer's mean over the step's prompts
    ours_loss.backward()
    stub = _trl_stub(theirs, beta=beta, loss_type=loss_type, epsilon_low=0.2, epsilon_high=0.2,
                     max_completion_length=budget)
    advantages = group_advantages(REWARDS, "group").reshape(-1)  # TRL's scale_rewards="group" formula
    inputs = _trl_inputs(MASK.reshape(6, 4), advantages=advantages, old_per_token_logps=old.reshape(6, 4),
                         ref_per_token_logps=ref.reshape(6, 4), num_items_in_batch=MASK.sum())
    trl_loss = GRPOTrainer._compute_loss(stub, None, inputs)
    trl_loss.backward()
    assert ours_loss.item() == pytest.approx(trl_loss.item(), rel=1e-5)
    assert torch.allclose(ours.grad.reshape(6, 4), theirs.grad, atol=1e-6)


def test_rloo_equals_trls_loss_and_gradients():
    from trl.trainer.rloo_trainer import RLOOTrainer

    beta = 0.05
    old, ref = tokens(2), tokens(3)
    ours_tokens = (old + 0.3 * tokens(4)).requires_grad_()
    theirs = ours_tokens.detach().clone().reshape(6, 4).requires_grad_()
    policy_sums = (ours_tokens * MASK).sum(-1)
    old_sums, ref_sums = (old * MASK).sum(-1), (ref * MASK).sum(-1)
    losses, _ = rloo(policy_sums, old_sums, ref_sums, REWARDS, MASK.sum(-1), beta=beta)
    losses.mean().backward()
    shaped = REWARDS - beta * (old_sums - ref_sums)  # TRL: rewards − β·Σ_t (old − ref), then leave-one-out
    advantages = (shaped - (shaped.sum(1, keepdim=True) - shaped) / 2).reshape(-1)
    stub = _trl_stub(theirs, epsilon_low=0.2, epsilon_high=0.2)
    trl_loss = RLOOTrainer._compute_loss(stub, None, _trl_inputs(MASK.reshape(6, 4), advantages=advantages,
                                                                 old_logps=old_sums.reshape(-1)))
    trl_loss.backward()
    assert losses.mean().item() == pytest.approx(trl_loss.item(), rel=1e-5)
    assert torch.allclose(ours_tokens.grad.reshape(6, 4), theirs.grad, atol=1e-6)
