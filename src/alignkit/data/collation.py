"""Batch tokenized pairs into padded tensors for a policy/reference forward pass."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

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


class PromptCompletions(Protocol):
    """One prompt and the completions scored against it (a pair: chosen, rejected)."""

    prompt_ids: Sequence[int]
    index: int

    @property
    def completions(self) -> tuple[Sequence[int], ...]: ...


def pack_rows(lengths: Sequence[int], capacity: int | None = None) -> list[list[int]]:
    """First-fit decreasing: put items (by index) into rows of at most `capacity` tokens.

    The longest item goes first into the first row with room; a new row opens when none has room. An
    item longer than `capacity` gets a row of its own. `capacity` defaults to the longest item, so packing
    never makes a batch wider, only shorter. Each row lists its items in ascending index order.
    """
    capacity = max(lengths) if capacity is None else capacity
    rows: list[list[int]] = []
    room: list[int] = []
    for item in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        row = next((r for r, free in enumerate(room) if free >= lengths[item]), None)
        if row is None:
            rows.append([])
            room.append(max(capacity, lengths[item]))
            row = len(rows) - 1
        rows[row].append(item)
        room[row] -= lengths[item]
    return [sorted(row) for row in rows]


def collate_shared_prefix(
    examples: Sequence[PromptCompletions],
    pad_token_id: int,
    pack: bool = False,
    row_tokens: int | None = None,
) -> dict[str, torch.Tensor]:
    """Lay out B examples of K completions each as rows `[prompt | c_1 | … | c_K]`: the prompt is computed
    once for all its completions. With `pack`, several examples share a row (`pack_rows`, at most
    `row_tokens` tokens a row), so short examples fill the room that padding would take.

    Returns, all [rows, T] unless noted:

    * ``input_ids`` (padded with ``pad_token_id``) and ``position_ids``: a prompt counts 0..P-1 and each
      completion restarts at P, so every completion sits where it would in its own sequence;
    * ``segment_ids``: a number per prompt or completion, unique within the row (-1 padding), and
      ``context_ids``: the segment a token may see besides its own (a completion's prompt; a prompt itself).
      `alignkit.models.logprobs.segment_attention_mask` turns these into the block mask;
    * ``completion_mask`` (bool): the scored tokens; ``source_index``: for each scored token, the position
      whose hidden state predicts it (the previous token, or the prompt's last token for a completion's
      first token); ``slots``: the sequence a scored token counts towards, k·B + b for completion k of
      example b (-1 elsewhere), so the output has the K·B sequences of `collate_pairs` in its order;
    * ``index`` (long, [B]): each example's ``index``; ``sequence_tokens`` (scalar): the tokens the
      batch would have as K·B separate sequences (prompt + completion each), for throughput numbers.
    """
    if not examples:
        raise ValueError("collate_shared_prefix needs at least one example")
    per_prompt = {len(example.completions) for example in examples}
    if len(per_prompt) != 1:
        raise ValueError(f"every example needs the same number of completions, got {sorted(per_prompt)}")
    if any(not example.prompt_ids for example in examples):
        raise ValueError("a prompt is empty: its completions' first tokens have nothing to be scored from")
    if any(not completion for example in examples for completion in example.completions):
        raise ValueError("a completion is empty: there is nothing to score")
    batch = len(examples)
    lengths = [len(e.prompt_ids) + sum(len(c) for c in e.completions) for e in examples]
    rows = pack_rows(lengths, row_tokens) if pack else [[b] for b in range(batch)]
    width = max(sum(lengths[b] for b in row) for row in rows)
    shape = (len(rows), width)
    tensors = {"input_ids": torch.full(shape, pad_token_id, dtype=torch.long),
               "position_ids": torch.zeros(shape, dtype=torch.long),
               "segment_ids": torch.full(shape, -1, dtype=torch.long),
               "context_ids": torch.full(shape, -1, dtype=torch.long),
               "completion_mask": torch.zeros(shape, dtype=torch.bool),
               "source_index": torch.zeros(shape, dtype=torch.long),
               "slots": torch.full(shape, -1, dtype=torch.long)}
    for row, members in enumerate(rows):
        cursor, segment = 0, 0
        for b in members:
            cursor, segment = _place_example(tensors, row, cursor, segment, examples[b], b, batch)
    prompts = sum(len(e.prompt_ids) * len(e.completions) for e in examples)
    completions = sum(len(c) for e in examples for c in e.completions)
    tensors["index"] = torch.tensor([example.index for example in examples], dtype=torch.long)
    tensors["sequence_tokens"] = torch.tensor(prompts + completions)
    return tensors


def _place_example(tensors: dict[str, torch.Tensor], row: int, cursor: int, segment: int,
                   example: PromptCompletions, b: int, batch: int) -> tuple[int, int]:
    """Write example b (prompt, then each completion) into `row` from `cursor`; return the next cursor
    and segment number."""
    prompt = len(example.prompt_ids)
    span = slice(cursor, cursor + prompt)
    tensors["input_ids"][row, span] = torch.tensor(example.prompt_ids)
    tensors["position_ids"][row, span] = torch.arange(prompt)
    tensors["segment_ids"][row, span] = tensors["context_ids"][row, span] = segment
    prompt_segment, last_prompt_token = segment, cursor + prompt - 1
    cursor, segment = cursor + prompt, segment + 1
    for k, completion in enumerate(example.completions):
        span = slice(cursor, cursor + len(completion))
        tensors["input_ids"][row, span] = torch.tensor(completion)
        tensors["position_ids"][row, span] = torch.arange(prompt, prompt + len(completion))
        tensors["segment_ids"][row, span] = segment
        tensors["context_ids"][row, span] = prompt_segment
        tensors["completion_mask"][row, span] = True
        tensors["source_index"][row, span] = torch.arange(cursor - 1, span.stop - 1)
        tensors["source_index"][row, cursor] = last_prompt_token
        tensors["slots"][row, span] = k * batch + b
        cursor, segment = span.stop, segment + 1
    return cursor, segment


def pair_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Tokens of the batch counted as separate sequences (prompt + each completion), whichever layout the
    batch uses, so throughput numbers compare across layouts."""
    if "sequence_tokens" in batch:
        return batch["sequence_tokens"]
    return batch["attention_mask"].sum()
