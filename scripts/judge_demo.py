"""The default model as an LLM judge on the held-out demo pairs: pairwise accuracy and throughput.

    .venv/bin/python scripts/judge_demo.py [--held-out 40]

Pointwise (`LLMJudge`, 1–10 expected score; a pair counts as right when chosen scores higher) and
pairwise (`PairwiseJudge`, both orders averaged; right when P(chosen better) > 0.5), on the same held-out
pairs as `scripts/train_reward_demo.py`; throughput in completions (pointwise) or pairs (pairwise) per second.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from alignkit.data.builtin import resolve_source
from alignkit.models import DEFAULT_MODEL, load
from alignkit.models.rewards import LLMJudge, PairwiseJudge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held-out", type=int, default=40)
    args = parser.parse_args()
    with open(resolve_source("builtin:demo/train.jsonl")) as file:
        rows = [json.loads(line) for line in file if line.strip()][-args.held_out:]
    model, tokenizer, _ = load(DEFAULT_MODEL)
    model.eval()
    prompts = [row["prompt"] for row in rows]
    chosen, rejected = [row["chosen"] for row in rows], [row["rejected"] for row in rows]
    with torch.no_grad():
        started = time.perf_counter()
        scores = LLMJudge(model, tokenizer).score(prompts + prompts, chosen + rejected)
        pointwise_s = time.perf_counter() - started
        started = time.perf_counter()
        preference = PairwiseJudge(model, tokenizer).prefer(prompts, chosen, rejected)
        pairwise_s = time.perf_counter() - started
    accuracy = (scores[:len(rows)] > scores[len(rows):]).float().mean().item()
    print(f"pointwise judge: accuracy {accuracy:.1%} on {len(rows)} held-out pairs, "
          f"{2 * len(rows) / pointwise_s:.1f} completions/s; mean score {scores.mean():.2f}")
    print(f"pairwise judge: accuracy {(preference > 0.5).float().mean().item():.1%}, "
          f"{len(rows) / pairwise_s:.1f} pairs/s (two orders each)")


if __name__ == "__main__":
    main()
