"""Completion log-likelihoods under a model, tokenized exactly as training tokenizes them.

For each (prompt x, completion y): `sum_t log π(y_t | x, y_<t)` and its per-token mean, e.g. PoFT's
aligned-model score, the per-token mean log-prob of the response under each aligned model with that model's
own tokenizer and chat template (Fan et al. 2024, arXiv 2412.12865). Message lists go through the chat template
(the end-of-turn tokens count as completion tokens); string completions get the EOS token appended.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data import DataError, Example, TruncationConfig, collate_rows, tokenize_examples
from alignkit.models.logprobs import completion_logps, scored_logps
from alignkit.models.modes import evaluating


@torch.inference_mode()
def completion_likelihoods(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example],
                           batch_size: int = 8, max_length: int | None = None) -> tuple[list[float], list[float]]:
    """(mean, sum) completion log-probs of each one-completion example under `model`, tokenized with `tokenizer`.

    Rows are sorted by length into right-padded batches (`collate_rows`). With `max_length`, over-long rows
    keep the end of their prompt (then cut the completion), as in training.
    """
    truncation = TruncationConfig.at_most(max_length)
    try:
        tokenized, _ = tokenize_examples(examples, tokenizer, truncation)
    except DataError:
        raise
    except ValueError as error:  # e.g. message lists and a tokenizer without a chat template
        raise DataError(str(error)) from error
    order = sorted(range(len(tokenized)), key=lambda i: sum(len(ids) for ids in (tokenized[i].prompt_ids,
                                                                                 *tokenized[i].slot("completion"))))
    means, sums = [0.0] * len(tokenized), [0.0] * len(tokenized)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = collate_rows([tokenized[i] for i in rows], pad)
            device = model.device
            scores = completion_logps(model, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                                      batch["completion_mask"].to(device))
            for row, index in enumerate(rows):
                means[index], sums[index] = scores.mean[row].item(), scores.sum[row].item()
    finally:
        model.train(was_training)
    return means, sums


def token_logps_of_ids(model: PreTrainedModel, prompt_ids: Sequence[Sequence[int]],
                       completion_ids: Sequence[Sequence[int]], batch_size: int = 8) -> list[torch.Tensor]:
    """log π(y_t | x, y_<t) of every token of each (prompt ids x, completion ids y), teacher-forced: one forward
    per batch of rows, in float32, one tensor of len(y) per row, in row order.

    The ids are used as given (no re-tokenization: sampled ids stay the sampled ids). Rows are right-padded
    with masks built from their lengths, so a completion may contain any id, the padding id included; a batch
    is the same rows in the same order whichever model scores it, so two copies of one model give bit-equal
    values (the KL of a model to itself is exactly 0). The scoring engine is the training one
    (`alignkit.models.logprobs.scored_logps`) with one slot per completion token.
    """
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    if any(not ids for ids in prompt_ids):
        raise ValueError("every prompt needs at least one token (the first completion token is scored from it)")
    results: list[torch.Tensor] = []
    device = model.device
    with evaluating(model):
        for start in range(0, len(prompt_ids), batch_size):
            rows = [list(p) + list(c) for p, c in
                    zip(prompt_ids[start:start + batch_size], completion_ids[start:start + batch_size])]
            starts = [len(p) for p in prompt_ids[start:start + batch_size]]
            width = max(len(row) for row in rows)
            input_ids = torch.zeros(len(rows), width, dtype=torch.long)
            attention = torch.zeros(len(rows), width, dtype=torch.long)
            scored = torch.zeros(len(rows), width, dtype=torch.bool)
            for b, (row, first) in enumerate(zip(rows, starts)):
                input_ids[b, :len(row)] = torch.tensor(row)
                attention[b, :len(row)] = 1
                scored[b, first:len(row)] = True
            slots = (scored.flatten().cumsum(0) - 1).clamp(min=0).view_as(scored)
            previous = torch.arange(-1, width - 1).expand_as(input_ids)
            logps = scored_logps(model, input_ids.to(device), attention.to(device), scored.to(device),
                                 previous.to(device), slots.to(device), int(scored.sum())).sum.float().cpu()
            counts = scored.sum(1).tolist()
            results.extend(logps.split(counts))
    return results
