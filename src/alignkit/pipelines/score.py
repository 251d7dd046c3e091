"""Score each row's completion: its log-likelihood under models (PoFT's aligned-model scores, Fan et al. 2024,
arXiv 2412.12865), or a reward, optionally calibrated against reference-policy samples (InfAlign, Balashankar
et al. 2024, arXiv 2412.19792)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from alignkit.data import DataError, Example, Record, collect, load_records
from alignkit.data.prompts import Content, Prompt, as_completion, content_key
from alignkit.data import rows
from alignkit.data.rows import RowProblem, kind, required
from alignkit.models.likelihood import completion_likelihoods
from alignkit.models.loading import Loaded, default_device, ensure_loaded
from alignkit.models.rewards import EmpiricalCDF, Reward, fit_reference_cdf
from alignkit.models.rewards.calibration import N_TRANSFORMS
from alignkit.models.rewards.spec import reward_from_spec

References = list[tuple[Prompt, list[Content]]]  # (prompt, reference-policy completions), one entry per prompt


def _completion(data: dict, field: str, prompt: Prompt) -> Content:
    """The completion to score; a string answering a message-list prompt becomes one assistant message."""
    completion = required(data, field)
    completion_kind = kind(completion, field)
    if isinstance(prompt, list) and completion_kind == "text":
        return as_completion(prompt, completion)
    if isinstance(prompt, str) and completion_kind == "messages":
        raise RowProblem(field, "a message list cannot complete a string prompt")
    if completion_kind == "messages" and (not completion or completion[0]["role"] != "assistant"):
        raise RowProblem(field, "a completion must start with an assistant message")
    return completion


def scoring_examples(records: Sequence[Record], field: str = "completion",
                     prompt_field: str = "prompt") -> list[Example]:
    """(prompt, completion) of each record as a one-completion Example; every bad row in one DataError."""
    def read(record: Record) -> Example:
        prompt = rows.prompt_field(record.data, prompt_field)
        return Example.single(prompt, _completion(record.data, field, prompt), record.where)
    return collect(records, read)


def likelihood_rows(records: Sequence[Record], models: Sequence[str | os.PathLike | Loaded], *,
                    field: str = "completion", prompt_field: str = "prompt", batch_size: int = 8,
                    max_length: int | None = None, dtype: torch.dtype = torch.float32,
                    device: str | torch.device | None = None) -> list[dict]:
    """Each row plus `scores` (the completion's per-token mean log-prob under each model, in order) and
    `scores_sum` (its summed log-prob). Models are names or paths (loaded one at a time, moved to `device`,
    released after scoring) or `Loaded` tuples (used where they are); each uses its own tokenizer and chat
    template (`alignkit.models.likelihood`)."""
    examples = scoring_examples(records, field, prompt_field)
    means, sums = [], []
    for spec in models:
        loaded = ensure_loaded(spec, dtype=dtype, device=device)
        model_means, model_sums = completion_likelihoods(loaded.model, loaded.tokenizer, examples, batch_size,
                                                         max_length)
        means.append(model_means)
        sums.append(model_sums)
        del loaded
    return [{**record.data, "scores": list(mean), "scores_sum": list(total)}
            for record, mean, total in zip(records, zip(*means), zip(*sums))]


def read_reference_samples(source: Any, prompt_field: str = "prompt") -> References:
    """(prompt, completions) per distinct prompt from rows {prompt, samples: [completions]} (`alignkit sample`'s
    output); samples of repeated prompts are pooled, and a string sample of a message-list prompt becomes one
    assistant message."""
    def read(record: Record) -> tuple[Prompt, list[Content]]:
        prompt = rows.prompt_field(record.data, prompt_field)
        samples = required(record.data, "samples")
        if not isinstance(samples, list) or not samples:
            raise RowProblem("samples", "expected a non-empty list of completions")
        converted = []
        for j, sample in enumerate(samples):
            if isinstance(sample, str) and isinstance(prompt, list):
                sample = as_completion(prompt, sample)
            if not (isinstance(sample, str) or isinstance(sample, list) and isinstance(prompt, list)
                    and all(isinstance(m, dict) for m in sample)):
                raise RowProblem(None, f"samples[{j}]: expected a string"
                                       + (" or a message list" if isinstance(prompt, list) else " (the prompt is a string)"))
            converted.append(sample)
        return prompt, converted

    pooled: dict[str, tuple[Prompt, list[Content]]] = {}
    for prompt, samples in collect(load_records(source), read):
        pooled.setdefault(content_key(prompt), (prompt, []))[1].extend(samples)
    return list(pooled.values())


def _check_references(examples: Sequence[Example], references: References, source: str) -> None:
    """Every example's prompt has reference samples."""
    known = {content_key(prompt) for prompt, _ in references}
    missing = [example for example in examples if content_key(example.prompt) not in known]
    if missing:
        raise DataError.from_problems([f"{example.where}: prompt {_short(example.prompt)} has no reference samples "
                                       f"in {source}" for example in missing])


def _short(prompt: Prompt) -> str:
    text = content_key(prompt)[2:]
    return repr(text if len(text) <= 60 else text[:57] + "...")


def reward_rows(records: Sequence[Record], reward: str | Reward, *, field: str = "completion",
                prompt_field: str = "prompt", references: References | None = None, reference_source: str = "",
                tie: str = "mid", transform: str | None = None, n: int | None = None, batch_size: int = 8,
                max_length: int | None = None) -> list[dict]:
    """Each row plus `reward` (a float, or a list of k floats for a k-attribute reward). With `references`,
    also `reward_calibrated`: the row's reward under the per-prompt empirical CDF of the reference samples'
    rewards (`EmpiricalCDF(tie)`), and with `transform` ("best_of_n" | "worst_of_n") and `n`,
    `reward_transformed` = Φ(calibrated). A spec string is turned into a reward (`reward_from_spec`) only after
    the rows and references are checked."""
    if transform is not None and (references is None or n is None or n < 1):
        raise ValueError(f"transform {transform} needs reference samples and n >= 1")
    examples = scoring_examples(records, field, prompt_field)
    if references is not None:
        _check_references(examples, references, reference_source or "the reference samples")
    if isinstance(reward, str):
        reward = reward_from_spec(reward, batch_size=batch_size, device=str(default_device()), max_length=max_length)
    if references is not None and reward.attributes:
        raise ValueError(f"calibration needs a scalar reward, but this one has {len(reward.attributes)} "
                         f"attributes {list(reward.attributes)}")
    prompts = [example.prompt for example in examples]
    values = reward(prompts, [example.slot("completion")[0] for example in examples]).float()
    scored = [{**record.data, "reward": value} for record, value in zip(records, values.tolist())]
    if references is None:
        return scored
    calibrated = fit_reference_cdf(reward, references, EmpiricalCDF(tie=tie)).calibrate(prompts, values)
    transformed = N_TRANSFORMS[transform](calibrated, n).tolist() if transform else None
    for i, (row, u) in enumerate(zip(scored, calibrated.tolist())):
        row["reward_calibrated"] = u
        if transformed is not None:
            row["reward_transformed"] = transformed[i]
    return scored
