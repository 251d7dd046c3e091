"""Batch tokenized examples into padded tensors for a policy/reference forward pass, in one of two layouts:
one row per completion (`collate_rows`) or one row per prompt with its completions after it
(`collate_shared_prefix`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from alignkit.lazy import lazy

torch = lazy("torch")



def collate_rows(examples: Sequence[Grouped], pad_token_id: int) -> dict[str, torch.Tensor]:
    """The plain layout: one right-padded row per (prompt, completion). With K completions per example
    (a pair: chosen, rejected), rows k·B .. k·B + B − 1 hold completion k of examples 0 .. B − 1.

    Returns ``input_ids`` (long, [K·B, T], padded with ``pad_token_id``), ``attention_mask`` (long,
    1 on real tokens), ``completion_mask`` (bool, True exactly on completion tokens, the ones that get
    scored), ``index`` (long, [B], each example's ``index``) and, where the examples have them,
    ``labels`` ([B]) and ``scores`` ([B, m]). T is the longest row.
    """
    if not examples:
        raise ValueError("collate_rows needs at least one example")
    per_example = [[(prompt, completion) for prompt, completions in e.groups for completion in completions]
                   for e in examples]
    _check_same_count(per_example)
    rows = [sequences[k] for k in range(len(per_example[0])) for sequences in per_example]
    width = max(len(prompt) + len(completion) for prompt, completion in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for row, (prompt, completion) in enumerate(rows):
        length = len(prompt) + len(completion)
        input_ids[row, :length] = torch.tensor(tuple(prompt) + tuple(completion), dtype=torch.long)
        attention_mask[row, :length] = 1
        completion_mask[row, len(prompt):length] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask,
            **_example_fields(examples)}


def _check_same_count(per_example: list[list]) -> None:
    counts = {len(sequences) for sequences in per_example}
    if len(counts) != 1:
        raise ValueError(f"every example needs the same number of completions, got {sorted(counts)}")


def _example_fields(examples: Sequence[Grouped]) -> dict[str, torch.Tensor]:
    fields = {"index": torch.tensor([example.index for example in examples], dtype=torch.long)}
    labels = [getattr(example, "label", None) for example in examples]
    if all(label is not None for label in labels):
        fields["labels"] = torch.tensor(labels, dtype=torch.float32)
    scores = [tuple(getattr(example, "scores", ())) for example in examples]
    if scores[0]:
        fields["scores"] = torch.tensor(scores, dtype=torch.float32)
    smoothing = [getattr(example, "label_smoothing", None) for example in examples]
    if all(value is not None for value in smoothing):
        fields["row_label_smoothing"] = torch.tensor(smoothing, dtype=torch.float32)
    return fields


class Grouped(Protocol):
    """An example as `groups` of (prompt ids, completion ids): a pair is one group of two completions;
    JPO's two answers to different prompts are two groups of one (`alignkit.data.TokenizedExample`)."""

    index: int

    @property
    def groups(self) -> tuple[tuple[Sequence[int], tuple[Sequence[int], ...]], ...]: ...


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
    examples: Sequence[Grouped],
    pad_token_id: int,
    pack: bool = False,
    row_tokens: int | None = None,
) -> dict[str, torch.Tensor]:
    """Lay out B examples of K completions each as rows `[prompt | c_1 | … | c_K]`: the prompt is computed
    once for all its completions (an example with several prompts puts each with its own completions).
    With `pack`, several examples share a row (`pack_rows`, at most `row_tokens` tokens a row), so short
    examples fill the room that padding would take.

    Returns, all [rows, T] unless noted:

    * ``input_ids`` (padded with ``pad_token_id``) and ``position_ids``: a prompt counts 0..P-1 and each
      completion restarts at P, so every completion sits where it would in its own sequence;
    * ``segment_ids``: a number per prompt or completion, unique within the row (-1 padding), and
      ``context_ids``: the segment a token may see besides its own (a completion's prompt; a prompt itself).
      `alignkit.models.logprobs.segment_attention_mask` turns these into the block mask;
    * ``completion_mask`` (bool): the scored tokens; ``source_index``: for each scored token, the position
      whose hidden state predicts it (the previous token, or the prompt's last token for a completion's
      first token); ``slots``: the sequence a scored token counts towards, k·B + b for completion k of
      example b (-1 elsewhere), so the output has the K·B sequences of `collate_rows` in its order;
    * ``index`` (long, [B]): each example's ``index``; ``sequence_tokens`` (scalar): the tokens the
      batch would have as K·B separate sequences (prompt + completion each), for throughput numbers;
      ``labels`` and ``scores`` where the examples have them.
    """
    if not examples:
        raise ValueError("collate_shared_prefix needs at least one example")
    _check_same_count([[c for _, cs in e.groups for c in cs] for e in examples])
    if any(not prompt for e in examples for prompt, _ in e.groups):
        raise ValueError("a prompt is empty: its completions' first tokens have nothing to be scored from")
    if any(not completion for e in examples for _, cs in e.groups for completion in cs):
        raise ValueError("a completion is empty: there is nothing to score")
    batch = len(examples)
    lengths = [sum(len(prompt) + sum(len(c) for c in cs) for prompt, cs in e.groups) for e in examples]
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
    tensors["sequence_tokens"] = torch.tensor(sum(len(prompt) + len(c) for e in examples
                                                  for prompt, cs in e.groups for c in cs))
    return {**tensors, **_example_fields(examples)}


def _place_example(tensors: dict[str, torch.Tensor], row: int, cursor: int, segment: int,
                   example: Grouped, b: int, batch: int) -> tuple[int, int]:
    """Write example b (each prompt, then its completions) into `row` from `cursor`; return the next
    cursor and segment number."""
    k = 0
    for prompt_ids, completions in example.groups:
        prompt = len(prompt_ids)
        span = slice(cursor, cursor + prompt)
        tensors["input_ids"][row, span] = torch.tensor(tuple(prompt_ids))
        tensors["position_ids"][row, span] = torch.arange(prompt)
        tensors["segment_ids"][row, span] = tensors["context_ids"][row, span] = segment
        prompt_segment, last_prompt_token = segment, cursor + prompt - 1
        cursor, segment = cursor + prompt, segment + 1
        for completion in completions:
            span = slice(cursor, cursor + len(completion))
            tensors["input_ids"][row, span] = torch.tensor(tuple(completion))
            tensors["position_ids"][row, span] = torch.arange(prompt, prompt + len(completion))
            tensors["segment_ids"][row, span] = segment
            tensors["context_ids"][row, span] = prompt_segment
            tensors["completion_mask"][row, span] = True
            tensors["source_index"][row, span] = torch.arange(cursor - 1, span.stop - 1)
            tensors["source_index"][row, cursor] = last_prompt_token
            tensors["slots"][row, span] = k * batch + b
            cursor, segment, k = span.stop, segment + 1, k + 1
    return cursor, segment


def sequence_token_count(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """How many tokens the batch holds counted as separate sequences (prompt + each completion), whichever
    layout the batch uses, so throughput numbers compare across layouts."""
    if "sequence_tokens" in batch:
        return batch["sequence_tokens"]
    return batch["attention_mask"].sum()
