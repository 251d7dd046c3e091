"""Seconds per DPO step on the default model: full-vocabulary logits, completion-only LM head, the
completion-only head with the prompt shared by both answers (prefix sharing, alignkit's default), and
prefix-shared pairs packed several to a row (first-fit in the longest pair's width, or all in one row).

    .venv/bin/python bench/dpo_step.py --steps 5 --batch-size 4

Each step is a forward + backward of the DPO loss over `batch-size` pairs of the shipped demo data
(reference log-probs precomputed, as in training), fp32, then an AdamW step. The two heads must
give the same loss; the script checks it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from alignkit.data import (
    TruncationConfig,
    collate_rows,
    collate_shared_prefix,
    load_examples,
    tokenize_examples,
)
from alignkit.data.builtin import resolve_source
from alignkit.models import DEFAULT_MODEL, load
from alignkit.models.logprobs import CompletionScorer, SequenceLogps, pair_logps
from alignkit.objectives import dpo


def full_logits_pair_logps(model, batch) -> tuple[SequenceLogps, SequenceLogps]:
    """The textbook path: logits at every position, log-softmax over the vocabulary, gather, mask."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    mask = batch["completion_mask"][:, 1:]
    token_logps = torch.gather(logits.log_softmax(-1), 2, batch["input_ids"][:, 1:, None]).squeeze(-1)
    sums, counts = (token_logps * mask).sum(1), mask.sum(1).float()
    half = sums.size(0) // 2
    return SequenceLogps(sums[:half], counts[:half]), SequenceLogps(sums[half:], counts[half:])


def completion_head(model, batch) -> tuple[SequenceLogps, SequenceLogps]:
    return pair_logps(CompletionScorer(model), batch)


def time_steps(model, batches, score, steps: int) -> tuple[list[float], list[float]]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)  # lr 0: every step sees the same weights
    seconds, losses = [], []
    for step in range(steps + 1):  # the first step warms up and is not counted
        batch = batches[step % len(batches)]
        started = time.perf_counter()
        chosen, rejected = score(model, batch)
        losses_per_pair, _ = dpo(chosen.sum, rejected.sum, batch["ref_chosen"], batch["ref_rejected"])
        loss = losses_per_pair.mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step:
            seconds.append(time.perf_counter() - started)
            losses.append(loss.item())
    return seconds, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    model, tokenizer, _ = load(DEFAULT_MODEL)
    model.train()
    examples = load_examples(resolve_source("builtin:demo/train.jsonl"), "preference")
    pairs, _ = tokenize_examples(examples[: args.batch_size * (args.steps + 1)], tokenizer,
                                    TruncationConfig(max_length=256, max_prompt_length=128))
    batches, shared_batches, packed_batches, one_row_batches = [], [], [], []
    for start in range(0, len(pairs), args.batch_size):
        chunk = pairs[start:start + args.batch_size]
        batch = collate_rows(chunk, tokenizer.pad_token_id)
        with torch.no_grad():
            chosen, rejected = pair_logps(CompletionScorer(model), batch)
        batch["ref_chosen"], batch["ref_rejected"] = chosen.sum - 1.0, rejected.sum + 1.0  # a non-trivial margin
        batches.append(batch)
        shared = collate_shared_prefix(chunk, tokenizer.pad_token_id)
        shared["ref_chosen"], shared["ref_rejected"] = batch["ref_chosen"], batch["ref_rejected"]
        shared_batches.append(shared)
        for layout, row_tokens in ((packed_batches, None), (one_row_batches, 1_000_000)):
            packed = collate_shared_prefix(chunk, tokenizer.pad_token_id, pack=True, row_tokens=row_tokens)
            packed["ref_chosen"], packed["ref_rejected"] = batch["ref_chosen"], batch["ref_rejected"]
            layout.append(packed)
    tokens = statistics.mean(b["attention_mask"].sum().item() for b in batches)
    results = {
        "full logits": time_steps(model, batches, full_logits_pair_logps, args.steps),
        "completion-only head": time_steps(model, batches, completion_head, args.steps),
        "+ prefix sharing": time_steps(model, shared_batches, completion_head, args.steps),
        "+ packing (first-fit)": time_steps(model, packed_batches, completion_head, args.steps),
        "+ packing (one row)": time_steps(model, one_row_batches, completion_head, args.steps),
    }
    rows = statistics.mean(b["input_ids"].size(0) for b in packed_batches)
    print(f"SmolLM2-135M-Instruct, fp32, {torch.get_num_threads()} threads, {args.batch_size} pairs/step, "
          f"{tokens:.0f} tokens/step, {args.steps} timed steps; first-fit packing gives {rows:.2f} rows/step")
    for name, (seconds, _) in results.items():
        print(f"{name:<24} {statistics.mean(seconds):6.2f} s/step (min {min(seconds):.2f})  "
              f"{tokens / statistics.mean(seconds):6.0f} tokens/s")
    baseline = results["full logits"][1]
    for name, (_, losses) in results.items():
        gap = max(abs(x - y) for x, y in zip(baseline, losses))
        print(f"max |loss - full-logits loss| for {name}: {gap:.2e}")
        assert gap < 1e-4, f"{name} disagrees with the full-logits loss"


if __name__ == "__main__":
    main()
