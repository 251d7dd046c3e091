"""Building the online data source of a run: its prompts, its reward (specs combined by weights; InfAlign's
calibration against reference samples drawn once and cached, and a transform), and its reference scorer."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn

from alignkit.data import DataError, load_records
from alignkit.data import template_fingerprint
from alignkit.data.prompts import Prompt, content_key
from alignkit.data.rows import read_prompts
from alignkit.data.writing import write_json
from alignkit.models.sampling import sample_sequences
from alignkit.models import resolve
from alignkit.models.loading import cache_root
from alignkit.models.logprobs import CompletionScorer
from alignkit.models.reference import files_fingerprint, policy_as_reference
from alignkit.models.rewards.base import Reward, WeightedSum
from alignkit.models.rewards.calibration import N_TRANSFORMS, CalibratedReward, fit_reference_cdf
from alignkit.models.rewards.spec import reward_from_spec
from alignkit.objectives import Objective
from alignkit.train.config import ConfigError, TrainConfig
from alignkit.train.online import OnlineSampler, generation_seed, online_plan
from alignkit.train.plan import BatchPlan
from alignkit.train.references import Collate, external_reference, online_reference, scorer_inputs

log = logging.getLogger(__name__)


def load_prompts(config: TrainConfig) -> list[Prompt]:
    """The prompts of `data.train` (any source `alignkit train` reads; every bad row reported at once)."""
    try:
        prompts = read_prompts(load_records(config.data.train))
    except DataError as err:
        raise DataError(f"data.train={config.data.train}: the online objective '{config.objective.name}' reads "
                        f"prompts (a `prompt` field per row):\n{err}") from None
    if not prompts:
        raise ConfigError(f"data.train={config.data.train}: no prompts in it")
    return prompts


def base_reward(config: TrainConfig, device: torch.device) -> Reward:
    """The specs of `reward.specs`, summed with `reward.weights` (1 each by default)."""
    rewards = [reward_from_spec(spec, device=str(device)) for spec in config.reward.specs]
    if len(rewards) == 1 and config.reward.weights is None:
        return rewards[0]
    return WeightedSum(rewards, config.reward.weights or [1.0] * len(rewards))


def reference_samples(config: TrainConfig, prompts: Sequence[Prompt], policy: nn.Module, tokenizer: Any,
                      identity: str, device: torch.device) -> list[list[str]]:
    """`reward.reference_samples` answers per prompt from the reference policy (`reference.model`, or the
    policy before training), read from the on-disk cache when the same reference, prompts, template and
    sampling settings drew them before."""
    online, m = config.online, config.reward.reference_samples
    settings = {"m": m, "max_new_tokens": online.max_new_tokens, "temperature": online.temperature,
                "top_p": online.top_p, "seed": config.seed, "template": template_fingerprint(tokenizer)}
    key = hashlib.sha256(json.dumps([identity, settings, [content_key(p) for p in prompts]]).encode()).hexdigest()
    path = cache_root() / "reference_samples" / f"{key}.json"
    if path.exists():
        log.info("calibration: reused the reference samples in %s", path)
        return json.loads(path.read_text())["texts"]
    log.info("calibration: drawing %d reference samples for each of %d prompts", m, len(prompts))
    model = external_reference(config, device)

    def draw(reference: nn.Module) -> list[list[str]]:
        return sample_sequences(reference, tokenizer, prompts, n=m, temperature=online.temperature,
                                top_p=online.top_p, max_new_tokens=online.max_new_tokens,
                                batch_size=online.sample_batch_size,
                                seed=generation_seed(config.seed, -1, 0)).texts
    if model is not None:
        texts = draw(model)
    else:
        with policy_as_reference(policy) as reference:
            texts = draw(reference)
    write_json({"settings": settings, "identity": identity, "prompts": [content_key(p) for p in prompts],
                "texts": texts}, path)
    return texts


def run_reward(config: TrainConfig, prompts: Sequence[Prompt], policy: nn.Module, tokenizer: Any,
               policy_fingerprint: str, device: torch.device) -> Reward:
    """The run's reward: `base_reward`, calibrated (InfAlign, arXiv 2412.19792) when `reward.calibrate` or a
    `reward.transform` is set, then transformed (best_of_n: uⁿ, worst_of_n: 1 − (1 − u)ⁿ, n = `reward.n`)."""
    reward = base_reward(config, device)
    settings = config.reward
    if not settings.calibrate and settings.transform is None:
        return reward
    identity = files_fingerprint(resolve(config.reference.model)) if config.reference.model else policy_fingerprint
    texts = reference_samples(config, prompts, policy, tokenizer, identity, device)
    cdf = fit_reference_cdf(reward, list(zip(prompts, texts)))
    transform = None if settings.transform is None else functools.partial(N_TRANSFORMS[settings.transform],
                                                                          n=settings.n)
    return CalibratedReward(reward, cdf, transform)


def visited(prompts: Sequence[Prompt], plan: BatchPlan) -> list[Prompt]:
    """The prompts this process's plan will sample from (the calibration needs reference samples of these only),
    in order of first visit."""
    seen: dict[int, None] = {}
    for generation in range(plan.total_steps):
        for group in plan.step_batches(generation):
            seen.update(dict.fromkeys(group))
    return [prompts[i] for i in seen]


def online_source(config: TrainConfig, objective: Objective, params: dict, prompts: Sequence[Prompt],
                  model: nn.Module, tokenizer: Any, policy_fingerprint: str, collate: Collate,
                  accelerator: Accelerator) -> OnlineSampler:
    """The data source of an objective on `prompts` (see `alignkit.train.online`)."""
    online, device = config.online, accelerator.device
    plan = online_plan(len(prompts), config.batch_size, config.grad_accum, config.epochs, config.max_steps,
                       online.updates_per_batch, config.seed, accelerator.num_processes, accelerator.process_index)
    reward = run_reward(config, visited(prompts, plan), model, tokenizer, policy_fingerprint, device)
    reference = online_reference(config, model, device, per_token=True) if objective.needs_reference else None
    keep_old = online.updates_per_batch > 1 or any(name.startswith("old_") for name in objective.prepare_inputs)
    old = None
    if keep_old:
        scorer = CompletionScorer(model, config.lm_head_chunk, per_token=True)

        def old(batch):
            with torch.no_grad():
                return scorer(**scorer_inputs(batch))
    return OnlineSampler(prompts, model, tokenizer, reward, objective, params, collate, plan, online.k,
                         online.max_new_tokens, online.temperature, online.top_p, online.updates_per_batch,
                         online.sample_batch_size, config.seed, config.max_steps, reference, old, device)
