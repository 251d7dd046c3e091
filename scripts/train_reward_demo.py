"""A pairwise reward model on the default model, trained on the shipped preference data, with held-out
pairwise accuracy and scoring throughput.

    .venv/bin/python scripts/train_reward_demo.py [--held-out 40] [overrides ...]

The demo's 198 pairs are split: the last `held-out` pairs are never trained on. SmolLM2-135M-Instruct gets
a new scalar head (`rm_pairwise`, Bradley–Terry) and trains on the rest with `recipes/rm_pairwise_smollm2.yaml`.
Accuracy = share of held-out pairs whose chosen answer gets the higher reward, before training (the
random head) and after; throughput = completions scored per second in batches of 8.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from alignkit.data import collate_shared_prefix, load_examples, tokenize_examples
from alignkit.data.builtin import resolve_source
from alignkit.models import DEFAULT_MODEL
from alignkit.models.reward_head import RewardScorer, load_reward_model
from alignkit.train import load_config, train

SCORER_KEYS = ("input_ids", "completion_mask", "position_ids", "segment_ids", "context_ids", "slots")


@torch.no_grad()
def accuracy_and_speed(model, tokenizer, rows: list[dict], batch_size: int = 8) -> tuple[float, float]:
    model.eval()
    examples, _ = tokenize_examples(load_examples(rows, "preference"), tokenizer)
    wins, started = 0, time.perf_counter()
    for start in range(0, len(examples), batch_size):
        batch = collate_shared_prefix(examples[start:start + batch_size], tokenizer.pad_token_id)
        chosen, rejected = RewardScorer(model)(**{k: v for k, v in batch.items() if k in SCORER_KEYS}).chunk(2)
        wins += int((chosen > rejected).sum())
    seconds = time.perf_counter() - started
    return wins / len(examples), 2 * len(examples) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--output-dir", default="runs/reward_demo")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with open(resolve_source("builtin:demo/train.jsonl")) as file:
        rows = [json.loads(line) for line in file if line.strip()]
    train_rows, held_out = rows[:-args.held_out], rows[-args.held_out:]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in train_rows))

    untrained = load_reward_model(DEFAULT_MODEL)
    before, _ = accuracy_and_speed(untrained.model, untrained.tokenizer, held_out)
    del untrained
    result = train(load_config("recipes/rm_pairwise_smollm2.yaml", [
        f"data.train={out / 'train.jsonl'}", f"output_dir={out}", "overwrite=true", *args.overrides]))
    model = AutoModelForSequenceClassification.from_pretrained(result.final_dir)  # plain transformers
    tokenizer = AutoTokenizer.from_pretrained(result.final_dir)
    after, speed = accuracy_and_speed(model, tokenizer, held_out)
    train_accuracy, _ = accuracy_and_speed(model, tokenizer, train_rows)
    print(f"{len(train_rows)} training pairs, {len(held_out)} held-out pairs, {result.steps} steps")
    print(f"held-out pairwise accuracy: {before:.1%} before (random head), {after:.1%} after; "
          f"training pairs after: {train_accuracy:.1%}")
    print(f"scoring throughput: {speed:.1f} completions/s (batches of 8 pairs, prefix sharing, fp32, "
          f"{torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
