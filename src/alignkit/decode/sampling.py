"""K sampled completions per prompt (D2O's self-samples) and completion log-likelihoods under models (PoFT).

* `sample_completions` draws y_1..y_K ~ π(·|x) for every prompt x (objectives.md §6: D2O's positives are K
  samples of the reference model), batched with the KV cache through `alignkit.decode.generate`.
* `score_completions` computes, for each model m and row (x, y), `sum_t log π_m(y_t | x, y_<t)` and its
  per-token mean (objectives.md §8: PoFT's aligned-model score is the per-token mean log-prob of the
  response, tokenized with that model's own tokenizer and chat template). Tokenization is the training
  tokenization (`alignkit.data.tokenize_preferences`): chat-template rendering for message lists (the
  end-of-turn tokens count as completion tokens), the EOS token appended to string completions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data import DataError, PreferenceExample, Record, TruncationConfig, tokenize_preferences
from alignkit.data.errors import raise_if_any
from alignkit.data.preferences import _kind, _RowProblem
from alignkit.decode.generate import Prompt, generate
from alignkit.models.loading import Loaded, load
from alignkit.models.logprobs import completion_logps

NO_LIMIT = 1 << 30


def default_device() -> torch.device:
    """The first GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sample_completions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt],
                       k: int = 4, max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0,
                       batch_size: int = 8, seed: int | None = 0) -> list[list[str]]:
    """K completions (stripped strings) for each prompt, in prompt order.

    temperature > 0 samples (`num_return_sequences=k`, so a batch holds batch_size × k sequences);
    temperature 0 decodes greedily once and repeats the completion k times. With `seed` the result is
    reproducible for the same inputs, batch size and device; the global RNG state is restored afterwards.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    greedy = temperature == 0
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        completions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, do_sample=not greedy,
                               temperature=temperature, top_p=top_p, num_return_sequences=1 if greedy else k,
                               batch_size=batch_size, seed=seed)
    return [texts * k for texts in completions] if greedy else completions


def checked_prompts(records: Sequence[Record], field: str = "prompt") -> list[Prompt]:
    """Each record's prompt (a non-empty string or message list); every bad row in one DataError."""
    prompts, problems = [], []
    for record in records:
        try:
            prompts.append(_prompt(record.data, field))
        except _RowProblem as problem:
            problems.append(f"{record.where}, {problem}")
    raise_if_any(problems)
    return prompts


def _prompt(data: dict, field: str) -> Prompt:
    prompt = data.get(field)
    if prompt is None:
        raise _RowProblem(field, "missing")
    _kind(prompt, field)
    if not prompt:
        raise _RowProblem(field, "empty prompt")
    return prompt


def _completion(data: dict, field: str, prompt: Prompt) -> Any:
    """The completion to score; a string answering a message-list prompt becomes one assistant message."""
    completion = data.get(field)
    if completion is None:
        raise _RowProblem(field, "missing")
    kind = _kind(completion, field)
    if isinstance(prompt, list) and kind == "text":
        return [{"role": "assistant", "content": completion}]
    if isinstance(prompt, str) and kind == "messages":
        raise _RowProblem(field, "a message list cannot complete a string prompt")
    if kind == "messages" and (not completion or completion[0]["role"] != "assistant"):
        raise _RowProblem(field, "a completion must start with an assistant message")
    return completion


def scoring_examples(records: Sequence[Record], field: str = "completion",
                     prompt_field: str = "prompt") -> list[PreferenceExample]:
    """(prompt, completion) of each record as a PreferenceExample whose chosen = rejected = the completion."""
    examples, problems = [], []
    for record in records:
        try:
            prompt = _prompt(record.data, prompt_field)
            completion = _completion(record.data, field, prompt)
            examples.append(PreferenceExample(prompt, completion, completion, record.where))
        except _RowProblem as problem:
            problems.append(f"{record.where}, {problem}")
    raise_if_any(problems)
    return examples


class CompletionScores(NamedTuple):
    """Per row, one value per model (in the order the models were given)."""

    mean: list[list[float]]  # per-token mean log-prob of the completion
    sum: list[list[float]]  # summed log-prob of the completion


@torch.inference_mode()
def score_with(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[PreferenceExample],
               batch_size: int = 8, max_length: int | None = None) -> tuple[list[float], list[float]]:
    """(mean, sum) completion log-probs of each example under one model, tokenized with `tokenizer`.

    Rows are sorted by length into right-padded batches and scored with `completion_logps`. With
    `max_length`, over-long rows keep the end of their prompt (then cut the completion), as in training.
    """
    limit = max_length or NO_LIMIT
    truncation = TruncationConfig(max_length=limit, max_prompt_length=limit - 1, overlong="truncate_prompt")
    try:
        tokenized, _ = tokenize_preferences(examples, tokenizer, truncation)
    except DataError:
        raise
    except ValueError as error:  # e.g. message lists and a tokenizer without a chat template
        raise DataError(str(error)) from error
    sequences = [(pair.prompt_ids, pair.chosen_ids) for pair in tokenized]
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i][0]) + len(sequences[i][1]))
    means, sums = [0.0] * len(sequences), [0.0] * len(sequences)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(sequences[i][0]) + len(sequences[i][1]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            completion_mask = torch.zeros((len(batch), width), dtype=torch.bool)
            for row, index in enumerate(batch):
                prompt, completion = sequences[index]
                input_ids[row, :len(prompt) + len(completion)] = torch.tensor(prompt + completion)
                attention_mask[row, :len(prompt) + len(completion)] = 1
                completion_mask[row, len(prompt):len(prompt) + len(completion)] = True
            device = model.device
            scores = completion_logps(model, input_ids.to(device), attention_mask.to(device),
                                      completion_mask.to(device))
            for row, index in enumerate(batch):
                means[index], sums[index] = scores.mean[row].item(), scores.sum[row].item()
    finally:
        model.train(was_training)
    return means, sums


def score_completions(models: Sequence[str | os.PathLike | Loaded], rows: Sequence[Record] | Sequence[dict], *,
                      field: str = "completion", prompt_field: str = "prompt", batch_size: int = 8,
                      max_length: int | None = None, dtype: torch.dtype = torch.float32,
                      device: str | torch.device | None = None) -> CompletionScores:
    """Mean and summed log-prob of each row's `field` given its `prompt_field`, under every model.

    Models are names/paths (loaded one at a time with `alignkit.models.load`, moved to `device`, default
    the GPU if any, and released after scoring) or already loaded `Loaded` tuples (used where they are).
    Each model uses its own tokenizer and chat template.
    """
    records = [row if isinstance(row, Record) else Record(dict(row), f"row {i}") for i, row in enumerate(rows, 1)]
    examples = scoring_examples(records, field, prompt_field)
    per_model: list[tuple[list[float], list[float]]] = []
    for spec in models:
        loaded = spec if isinstance(spec, Loaded) else load(spec, dtype=dtype)
        if not isinstance(spec, Loaded):
            loaded.model.to(device or default_device())
        per_model.append(score_with(loaded.model, loaded.tokenizer, examples, batch_size, max_length))
        del loaded
    return CompletionScores(mean=[list(values) for values in zip(*(m for m, _ in per_model))],
                            sum=[list(values) for values in zip(*(s for _, s in per_model))])
