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
