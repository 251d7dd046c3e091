"""Policies against a reference on one prompt set: samples, rewards, win rates and KL.

    comparison = compare(["runs/dpo/final"], "smollm2-135m-instruct", prompts, {"checks": checks})
    results = summarise(comparison)          # the numbers of eval.json (alignkit.eval.compare_report)

Each system (the reference, then each policy) answers every prompt n times with the same sampler
(`alignkit.decode.sampling.sample_sequences`; greedy at temperature 0) and the same seed. Every reward scores
every completion. For each policy and reward:

* win rate against the reference: per prompt, the fraction of (policy sample, reference sample) pairs the
  policy wins, ties counting ½ (`alignkit.eval.stats.win_fraction`), averaged over prompts, with a
  percentile-bootstrap interval over prompts — the estimator of inference-time win rate of InfAlign
  (Balashankar et al. 2024, arXiv 2412.19792, §2);
* KL(policy ‖ reference) per sequence and per token from the policy's own samples at temperature 1
  (`alignkit.eval.kl`): the evaluation samples when they are drawn at temperature 1 and top-p 1, else
  `kl_samples` extra samples per prompt; the reference scores the sampled token ids (teacher-forced, one
  forward per batch) after the policy's own prompt rendering, so both log-probs condition on the same ids.

The reference stays loaded while the policies are loaded one at a time (two models in memory at most).
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from alignkit.data.prompts import ChatTemplate, Prompt
from alignkit.models.sampling import Samples, sample_sequences
from alignkit.eval.kl import SampleKL, sample_kl
from alignkit.models.likelihood import token_logps_of_ids
from alignkit.models.loading import Loaded, ensure_loaded, load_tokenizer
from alignkit.models.rewards import Reward

log = logging.getLogger(__name__)

ModelSpec = str | os.PathLike | Loaded


@dataclass(frozen=True)
class SamplingSettings:
    """How every system answers: n samples per prompt at `temperature` (0: greedy) and `top_p`; `kl_samples`
    samples per prompt at temperature 1 for the KL when the evaluation samples are not at temperature 1."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 128
    batch_size: int = 8
    seed: int = 0
    kl_samples: int = 1
    chat_template: ChatTemplate = True
    best_of: int = 1  # a policy's answer is the best of this many of its samples under the first reward

    def __post_init__(self) -> None:
        if self.n < 1 or self.kl_samples < 1:
            raise ValueError(f"n and kl_samples must be at least 1, got {self.n} and {self.kl_samples}")
        if self.best_of < 1 or self.n % self.best_of:
            raise ValueError(f"best_of must be at least 1 and divide n, got best_of={self.best_of}, n={self.n}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")

    @property
    def samples_are_the_policy(self) -> bool:
        """Whether the evaluation samples are draws from the policy itself (temperature 1, no truncation)."""
        return self.temperature == 1 and self.top_p == 1


@dataclass
class SystemOutput:
    """One system's answers: texts and token counts [P][n]; for a policy, the KL of each of its KL samples."""

    name: str
    role: str  # "reference" or "policy"
    texts: list[list[str]]
    tokens: list[list[int]]
    kl: list[list[SampleKL]] | None = None


@dataclass
class Comparison:
    """Everything an evaluation measured: the systems' answers and every reward of every answer.

    `scores[reward][s]` is a [P, n] array for system s (0: the reference, then the policies in order).
    """

    prompts: list[Prompt]
    systems: list[SystemOutput]
    scores: dict[str, list[np.ndarray]]
    settings: SamplingSettings
    pass_rates: tuple[str, ...] = field(default_factory=tuple)  # rewards that are 0/1 checks

    @property
    def reference(self) -> SystemOutput:
        return self.systems[0]

    @property
    def policies(self) -> list[SystemOutput]:
        return self.systems[1:]


def system_name(spec: ModelSpec) -> str:
    """How a model is named in results: its path or name as given."""
    return Path(spec.source).name if isinstance(spec, Loaded) else os.fspath(spec)


def check_tokenizers(policies: Sequence[ModelSpec], reference: ModelSpec) -> None:
    """Every policy shares the reference's vocabulary (the KL scores the same token ids under both); reading
    each tokenizer also finds a model that does not exist before anything is generated."""
    def vocabulary(spec: ModelSpec) -> dict[str, int]:
        tokenizer = spec.tokenizer if isinstance(spec, Loaded) else load_tokenizer(spec)
        return tokenizer.get_vocab()

    expected = vocabulary(reference)
    for policy in policies:
        if vocabulary(policy) != expected:
            raise ValueError(f"policy {system_name(policy)} and reference {system_name(reference)} have different "
                             "vocabularies; KL(policy ‖ reference) needs both to score the same token ids")


def _sample(loaded: Loaded, prompts: Sequence[Prompt], settings: SamplingSettings, n: int,
            temperature: float, top_p: float) -> Samples:
    return sample_sequences(loaded.model, loaded.tokenizer, prompts, n=n, temperature=temperature, top_p=top_p,
                            max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                            seed=settings.seed, chat_template=settings.chat_template)


def policy_kl(policy: Loaded, reference: Loaded, samples: Samples, batch_size: int) -> list[list[SampleKL]]:
    """k1 and k3 of each sample (drawn from `policy` at temperature 1): its ids scored under both models."""
    prompt_ids = [ids for p, row in enumerate(samples.completion_ids) for ids in [samples.prompt_ids[p]] * len(row)]
    completion_ids = [ids for row in samples.completion_ids for ids in row]
    mine = token_logps_of_ids(policy.model, prompt_ids, completion_ids, batch_size)
    theirs = token_logps_of_ids(reference.model, prompt_ids, completion_ids, batch_size)
    flat = iter([sample_kl(a, b) for a, b in zip(mine, theirs)])
    return [[next(flat) for _ in row] for row in samples.completion_ids]


def _answer(loaded: Loaded, name: str, role: str, prompts: Sequence[Prompt], settings: SamplingSettings,
            reference: Loaded | None) -> SystemOutput:
    """A system's evaluation samples, and for a policy the KL of its temperature-1 samples."""
    log.info("%s: %d answer(s) to each of %d prompts", name, settings.n, len(prompts))
    samples = _sample(loaded, prompts, settings, settings.n, settings.temperature, settings.top_p)
    output = SystemOutput(name, role, samples.texts, samples.counts)
    if reference is not None:
        kl_samples = samples if settings.samples_are_the_policy else _sample(loaded, prompts, settings,
                                                                              settings.kl_samples, 1.0, 1.0)
        log.info("%s: KL to the reference from %s", name, "those answers" if settings.samples_are_the_policy
                 else f"{settings.kl_samples} temperature-1 sample(s) per prompt")
        output.kl = policy_kl(loaded, reference, kl_samples, settings.batch_size)
    return output


def compare(policies: Sequence[ModelSpec], reference: ModelSpec, prompts: Sequence[Prompt],
            rewards: Mapping[str, Reward], settings: SamplingSettings = SamplingSettings(), *,
            pass_rates: Sequence[str] = ()) -> Comparison:
    """Sample every system, measure each policy's KL to the reference, and score every answer with every
    reward (a k-attribute reward counts as k rewards named "name/attribute"). `pass_rates` names the rewards
    that are 0/1 checks (reported as pass rates)."""
    if not prompts:
        raise ValueError("no prompts to evaluate on")
    if not policies:
        raise ValueError("give at least one policy to compare with the reference")
    check_tokenizers(policies, reference)
    reference_model = ensure_loaded(reference)
    systems = [_answer(reference_model, system_name(reference), "reference", prompts, settings, None)]
    for spec in policies:
        policy = ensure_loaded(spec)
        systems.append(_answer(policy, system_name(spec), "policy", prompts, settings, reference_model))
        del policy
        gc.collect()
    del reference_model
    gc.collect()
    scores = score_systems(prompts, systems, rewards)
    if settings.best_of > 1:
        systems, scores = best_of_n(systems, scores, settings.best_of, next(iter(scores)))
    return Comparison(list(prompts), systems, scores, settings, tuple(pass_rates))


def best_of_n(systems: Sequence[SystemOutput], scores: dict[str, list[np.ndarray]], n: int,
              by: str) -> tuple[list[SystemOutput], dict[str, list[np.ndarray]]]:
    """Each policy's answers replaced by best-of-n decoding: consecutive blocks of n samples per prompt, the
    one with the highest `by` score kept (the first of a tie); the reference's answers stay plain samples — the
    inference-time win rate of best-of-n against the reference policy (InfAlign, arXiv 2412.19792, §2)."""
    kept_systems, kept_scores = [systems[0]], {name: [values[0]] for name, values in scores.items()}
    for s, system in enumerate(systems[1:], start=1):
        prompts, samples = scores[by][s].shape
        best = scores[by][s].reshape(prompts, samples // n, n).argmax(-1) + np.arange(0, samples, n)  # [P, samples/n]
        pick = lambda rows: [[row[i] for i in chosen] for row, chosen in zip(rows, best)]  # noqa: E731
        kept_systems.append(SystemOutput(system.name, system.role, pick(system.texts), pick(system.tokens), system.kl))
        for name, values in scores.items():
            kept_scores[name].append(np.take_along_axis(values[s], best, axis=1))
    return kept_systems, kept_scores


def score_systems(prompts: Sequence[Prompt], systems: Sequence[SystemOutput],
                  rewards: Mapping[str, Reward]) -> dict[str, list[np.ndarray]]:
    """`{reward: [P, n] scores per system}`, each reward called once on every answer of every system."""
    flat_prompts = [prompts[p] for system in systems for p, row in enumerate(system.texts) for _ in row]
    flat_texts = [text for system in systems for row in system.texts for text in row]
    shapes = [(len(system.texts), len(system.texts[0])) for system in systems]
    scores: dict[str, list[np.ndarray]] = {}
    for name, reward in rewards.items():
        log.info("scoring %d answers with %s", len(flat_texts), name)
        values = reward(flat_prompts, flat_texts).double().cpu().numpy()
        columns = {name: values} if values.ndim == 1 else {f"{name}/{attribute}": values[:, k]
                                                          for k, attribute in enumerate(reward.attributes)}
        for column, column_values in columns.items():
            if not np.isfinite(column_values).all():
                raise ValueError(f"reward {column} returned a non-finite score")
            split = np.cumsum([rows * n for rows, n in shapes])[:-1]
            scores[column] = [part.reshape(shape) for part, shape in zip(np.split(column_values, split), shapes)]
    return scores
