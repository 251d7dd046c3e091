"""Batch tokenized pairs into padded tensors for a policy/reference forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignkit.data.tokenization import TokenizedPair


def collate_pairs(pairs: Sequence[TokenizedPair], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack B pairs into 2B right-padded rows: rows ``0..B-1`` are prompt + chosen, rows ``B..2B-1``
    prompt + rejected (same order).

    Returns ``input_ids`` (long, [2B, T], padded with ``pad_token_id``), ``attention_mask`` (long,
    1 on real tokens), ``completion_mask`` (bool, True exactly on completion tokens, the ones that get
    scored) and ``index`` (long, [B], each pair's ``index``). T is the longest row.
    """
    if not pairs:
        raise ValueError("collate_pairs needs at least one pair")
    rows = [(pair.prompt_ids, pair.chosen_ids) for pair in pairs]
    rows += [(pair.prompt_ids, pair.rejected_ids) for pair in pairs]
    width = max(len(prompt) + len(completion) for prompt, completion in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for row, (prompt, completion) in enumerate(rows):
        length = len(prompt) + len(completion)
        input_ids[row, :length] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[row, :length] = 1
        completion_mask[row, len(prompt):length] = True
    index = torch.tensor([pair.index for pair in pairs], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
            "index": index}


def collate_shared_prefix(pairs: Sequence[TokenizedPair], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Stack B pairs into B right-padded rows `[prompt | chosen | rejected]`: the prompt is computed once.

    Returns, all [B, T] unless noted:

    * ``input_ids`` (padded with ``pad_token_id``) and ``position_ids``: the prompt counts 0..P-1, and
      each answer restarts at P, so every answer sits where it would in its own sequence;
    * ``segment_ids``: 0 prompt, 1 chosen, 2 rejected, -1 padding. An answer may attend to the prompt and
      to itself only (`alignkit.models.logprobs.segment_attention_mask` turns this into a block mask);
    * ``completion_mask`` (bool): the scored tokens; ``source_index``: for each scored token, the position
      whose hidden state predicts it (the previous token, except the first rejected token, which is
      predicted from the last prompt token); ``slots``: the sequence a scored token counts towards,
      b for the chosen answer of pair b and B + b for its rejected one (-1 elsewhere), so the output
      has the 2B sequences of `collate_pairs` in the same order;
    * ``index`` (long, [B]): each pair's ``index``.
    """
    if not pairs:
        raise ValueError("collate_shared_prefix needs at least one pair")
    batch = len(pairs)
    width = max(len(p.prompt_ids) + len(p.chosen_ids) + len(p.rejected_ids) for p in pairs)
    input_ids = torch.full((batch, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((batch, width), dtype=torch.long)
    segment_ids = torch.full((batch, width), -1, dtype=torch.long)
    completion_mask = torch.zeros((batch, width), dtype=torch.bool)
    source_index = torch.zeros((batch, width), dtype=torch.long)
    slots = torch.full((batch, width), -1, dtype=torch.long)
    for row, pair in enumerate(pairs):
        prompt, chosen, rejected = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
        end_chosen, end = prompt + chosen, prompt + chosen + rejected
        input_ids[row, :end] = torch.tensor(pair.prompt_ids + pair.chosen_ids + pair.rejected_ids)
        position_ids[row, :end_chosen] = torch.arange(end_chosen)
        position_ids[row, end_chosen:end] = torch.arange(prompt, prompt + rejected)
        segment_ids[row, :prompt], segment_ids[row, prompt:end_chosen], segment_ids[row, end_chosen:end] = 0, 1, 2
        completion_mask[row, prompt:end] = True
        source_index[row, prompt:end] = torch.arange(prompt - 1, end - 1)
        if rejected:
            source_index[row, end_chosen] = prompt - 1
        slots[row, prompt:end_chosen], slots[row, end_chosen:end] = row, batch + row
    index = torch.tensor([pair.index for pair in pairs], dtype=torch.long)
    return {"input_ids": input_ids, "position_ids": position_ids, "segment_ids": segment_ids,
            "completion_mask": completion_mask, "source_index": source_index, "slots": slots, "index": index}


def pair_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Tokens of the batch's pairs counted as separate sequences (prompt + chosen, prompt + rejected),
    whichever layout the batch uses, so throughput numbers compare across layouts."""
    if "segment_ids" in batch:
        segments = batch["segment_ids"]
        return (segments >= 0).sum() + (segments == 0).sum()
    return batch["attention_mask"].sum()
