"""Prompt embeddings from a causal LM: the mean of the last hidden state over the prompt's tokens.

This is the embedding BCO's underlying distribution matching classifies (Jung et al. 2024, arXiv 2404.04656;
TRL's `BCOTrainer` docs use the mean-pooled `last_hidden_state` as `embedding_func`). A prompt is tokenized
as training tokenizes it (`alignkit.data.prompts.prompt_ids`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data.prompts import Prompt, prompt_ids
from alignkit.models.logprobs import unwrap_peft


@torch.no_grad()
def prompt_embeddings(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt],
                      batch_size: int = 8) -> torch.Tensor:
    """Mean-pooled last hidden states of `prompts`: a float32 CPU tensor [N, hidden size], in prompt order.

    Prompts are sorted by length into batches of `batch_size`, right-padded, and run with an attention
    mask under `torch.no_grad()`; padding is excluded from the mean (and, being to the right under causal
    attention, cannot influence the real tokens), so a prompt's embedding does not depend on its batch
    up to floating-point rounding. The model is put in eval mode for the call and restored afterwards.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not prompts:
        raise ValueError("no prompts to embed")
    ids = [prompt_ids(tokenizer, prompt) for prompt in prompts]
    empty = [i for i, tokens in enumerate(ids) if not tokens]
    if empty:
        raise ValueError(f"prompts {empty[:10]} tokenize to no tokens; every prompt needs at least one")
    backbone, device = unwrap_peft(model).get_decoder(), model.device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # masked out either way
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    pooled_batches = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                input_ids[row, :len(ids[index])] = torch.tensor(ids[index])
                mask[row, :len(ids[index])] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            hidden = backbone(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1)
            pooled_batches.append(pooled.float().cpu())
    finally:
        model.train(was_training)
    pooled = torch.cat(pooled_batches)
    result = torch.empty_like(pooled)
    result[order] = pooled
    return result
