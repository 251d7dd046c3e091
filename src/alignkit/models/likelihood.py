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
from alignkit.models.logprobs import completion_logps


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
