"""Decoding-time alignment on the default model, measured on the demo's 64 held-out instructions.

    .venv/bin/python scripts/decoding_demo.py --part all --aligned runs/demo/final --out runs/decoding_demo.json

Parts (docs/decoding.md reports their numbers):
  urial      SmolLM2-135M-Instruct used as a base model (no chat template): plain prompt vs URIAL, next to
             the model with its chat template;
  nudging    that base nudged by the DPO-trained demo model (`make demo` writes runs/demo/final): pass rates
             and the fraction of nudged tokens;
  steering   a direction per layer from the demo's training pairs (prompt + chosen vs prompt + rejected),
             added with a sweep of coefficients; held-out pass rates;
  best_of_n  N samples per prompt, the row's own instruction check as the verifier (best and worst of N).
Every configuration reports the held-out pass count and "passed and substantive" (the guard that an
answer is on topic, not a refusal and not a loop), which no method here optimises directly.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from alignkit.data import load_records
from alignkit.data.prompts import render_prompt, text_of
from alignkit.decode import best_of_n, nudging, steering, steering_directions, urial, worst_of_n
from alignkit.decode.core import Completion
from alignkit.decode.sampling import draw_samples
from alignkit.eval.instructions import PASSED_SUBSTANTIVE, load_heldout, score_instructions
from alignkit.models import load
from alignkit.models.rewards import InstructionChecks

DEMO_TRAIN = Path(__file__).resolve().parents[1] / "src" / "alignkit" / "data" / "demo" / "train.jsonl"


def summary(rows: list[dict], texts: list[str], seconds: float, extra: dict | None = None) -> dict:
    report = score_instructions(rows, texts)
    substance = report.substance_counts()
    return {"passed": report.passed, "total": len(rows), "passed_substantive": substance[PASSED_SUBSTANTIVE][0],
            "seconds": round(seconds, 1), **(extra or {})}


def timed(run) -> tuple[list, float]:
    start = time.perf_counter()
    result = run()
    return result, time.perf_counter() - start


def mean_of(completions: list[Completion], key: str) -> float:
    return sum(c.diagnostics[key] for c in completions) / len(completions)


def greedy(model, tokenizer, prompts, max_new_tokens: int, chat_template: bool = True) -> list[list[str]]:
    return draw_samples(model, tokenizer, prompts, n=1, temperature=0, max_new_tokens=max_new_tokens, batch_size=16,
                        chat_template=chat_template)[0]


def part_urial(model, tokenizer, rows, args) -> dict:
    prompts = [row["prompt"] for row in rows]
    raw = [render_prompt(tokenizer, p, chat_template=False) for p in prompts]
    chat, t_chat = timed(lambda: greedy(model, tokenizer, prompts, args.max_new_tokens))
    plain, t_plain = timed(lambda: greedy(model, tokenizer, raw, args.max_new_tokens, chat_template=False))
    urial_out, t_urial = timed(lambda: urial(model, tokenizer, raw, max_new_tokens=args.max_new_tokens))
    return {"chat_template": summary(rows, [c[0] for c in chat], t_chat),
            "no_template": summary(rows, [c[0] for c in plain], t_plain),
            "urial": summary(rows, [c.text for c in urial_out], t_urial,
                             {"prefix_tokens": urial_out[0].diagnostics.get("prefix_tokens")})}


def part_nudging(model, tokenizer, rows, args) -> dict:
    guide, guide_tokenizer, _ = load(args.aligned)
    prompts = [row["prompt"] for row in rows]
    results = {}
    for gamma in args.gammas:
        out, seconds = timed(lambda: nudging(model, tokenizer, prompts, guide=guide, guide_tokenizer=guide_tokenizer,
                                             gamma=gamma, max_new_tokens=args.max_new_tokens))
        results[f"gamma={gamma}"] = summary(rows, [c.text for c in out], seconds,
                                            {"nudged_fraction": round(mean_of(out, "nudged_fraction"), 4)})
    aligned, seconds = timed(lambda: greedy(guide, guide_tokenizer, prompts, args.max_new_tokens))
    results["guide_alone"] = summary(rows, [c[0] for c in aligned], seconds)
    return results


def part_steering(model, tokenizer, rows, args) -> dict:
    pairs = [record.data for record in load_records(DEMO_TRAIN)][:args.contrast_pairs]
    prefixes = [render_prompt(tokenizer, pair["prompt"]) for pair in pairs]
    positive = [p + text_of(pair["chosen"]) for p, pair in zip(prefixes, pairs)]
    negative = [p + text_of(pair["rejected"]) for p, pair in zip(prefixes, pairs)]
    directions, t_read = timed(lambda: steering_directions(model, tokenizer, positive, negative))
    results = {"reading_seconds": round(t_read, 1), "layers": sorted(directions), "pairs": len(pairs)}
    prompts = [row["prompt"] for row in rows]
    for coefficient in args.coefficients:
        out, seconds = timed(lambda: steering(model, tokenizer, prompts, directions=directions,
                                              coefficient=coefficient, max_new_tokens=args.max_new_tokens))
        results[f"coefficient={coefficient}"] = summary(rows, [c.text for c in out], seconds)
    return results


def part_best_of_n(model, tokenizer, rows, args) -> dict:
    reward = InstructionChecks(rows)
    prompts = [row["prompt"] for row in rows]
    results = {}
    for n in args.ns:
        for name, method in (("best", best_of_n), ("worst", worst_of_n)):
            if name == "worst" and n == 1:
                continue
            out, seconds = timed(lambda: method(model, tokenizer, prompts, reward=reward, n=n,
                                                max_new_tokens=args.max_new_tokens, seed=args.seed))
            results[f"{name}_of_{n}"] = summary(rows, [c.text for c in out], seconds)
    return results


PARTS = {"urial": part_urial, "nudging": part_nudging, "steering": part_steering, "best_of_n": part_best_of_n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--aligned", default="runs/demo/final", help="the nudging guide (the DPO demo model)")
    parser.add_argument("--limit", type=int, default=64, help="held-out rows to use")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.4])
    parser.add_argument("--coefficients", type=float, nargs="+", default=[0.0, 2.0, 4.0, 8.0])
    parser.add_argument("--contrast-pairs", type=int, default=64)
    parser.add_argument("--ns", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/decoding_demo.json")
    args = parser.parse_args()
    model, tokenizer, _ = load(args.model)
    model.eval()
    rows = load_heldout()[:args.limit]
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    for name in PARTS if args.part == "all" else [args.part]:
        results[name] = PARTS[name](model, tokenizer, rows, args)
        print(name, json.dumps(results[name], indent=1), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
