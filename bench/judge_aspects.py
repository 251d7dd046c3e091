"""Seconds per answer and aspect of the JUST-EVAL multi-aspect judge, with the default model as judge.

    .venv/bin/python bench/judge_aspects.py --answers 16 --rationale 0

Scores `--answers` copies of one held-out demo prompt and a short answer with
`AspectJudge(rationale_tokens=--rationale)` (fp32, CPU unless a GPU is present) and prints the wall time, the
time per answer and aspect, and the five expected scores of the first answer. The judge reads the whole
filled template (about 1,000 tokens) once per aspect, so the time grows with answers x aspects.
"""

from __future__ import annotations

import argparse
import time

from alignkit.models import load
from alignkit.models.rewards import MULTI_ASPECTS, AspectJudge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--answers", type=int, default=16)
    parser.add_argument("--rationale", type=int, default=0, help="rationale tokens per aspect (default 0)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    model, tokenizer, _ = load("smollm2-135m-instruct")
    model.eval()
    judge = AspectJudge(model, tokenizer, rationale_tokens=args.rationale, batch_size=args.batch_size)
    prompts = ["Explain what a star is. Answer in at most 15 words."] * args.answers
    answers = ["A star is a ball of hot gas that shines."] * args.answers
    started = time.perf_counter()
    scores = judge.score(prompts, answers)
    seconds = time.perf_counter() - started
    per = seconds / (args.answers * len(MULTI_ASPECTS))
    print(f"{args.answers} answers x {len(MULTI_ASPECTS)} aspects, rationale {args.rationale}: {seconds:.1f} s, "
          f"{per:.2f} s per answer and aspect; first answer: "
          + ", ".join(f"{a} {s:.2f}" for a, s in zip(MULTI_ASPECTS, scores[0].tolist())))


if __name__ == "__main__":
    main()
