"""Build the demo preference data (`train.jsonl`) and held-out prompts (`heldout.jsonl`).

Base tasks (`src/alignkit/data/demo/tasks.txt`) are shuffled with `--seed` and split into disjoint
TRAIN and HELD-OUT tasks. Each task is combined with instruction families whose compliance a
verifier in `alignkit.models.verifiers` can check. For every training prompt the default model
samples `--samples` completions; a completion that passes the check (and ended on its own, i.e.
was not cut off at `--max-new-tokens`) and stays on topic (`verifiers.on_topic`: no refusal, shares a
content word with the task) becomes *chosen*; one that fails the check becomes *rejected*. Without the
on-topic rule, DPO learns that saying nothing ("I'm not a helpful AI.") satisfies every format check.

The raw samples are written to `--samples-out`; `--from-samples` re-filters them without generating.

    .venv/bin/python scripts/build_demo_data.py            # writes src/alignkit/data/demo/*.jsonl

Everything is seeded, so a rerun on the same software versions and batch size reproduces the files.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from pathlib import Path

from alignkit.decode.sampling import draw_samples
from alignkit.models import DEFAULT_MODEL, load
from alignkit.models.verifiers import check, on_topic

DEMO_DIR = Path(__file__).resolve().parents[1] / "src" / "alignkit" / "data" / "demo"
WORDS = ["simple", "bright", "gentle", "quiet", "important", "happy", "careful", "warm", "friendly", "fresh"]
FAMILIES = ("max_words", "include_word", "no_commas")


def read_tasks(path: Path) -> list[str]:
    """Non-empty, non-comment lines of the task file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def instruction(family: str, rng: random.Random) -> tuple[str, dict]:
    """An instruction sentence for `family` (parameters drawn from `rng`) and its verifier spec."""
    if family == "max_words":
        n = rng.choice([15, 20])
        return f"Answer in at most {n} words.", {"type": "max_words", "n": n}
    if family == "include_word":
        word = rng.choice(WORDS)
        return f"Use the word '{word}' in your answer.", {"type": "include_word", "word": word}
    if family == "no_commas":
        return "Do not use any commas in your answer.", {"type": "no_commas"}
    raise ValueError(f"unknown family {family!r}")


def make_row(task: str, family: str, rng: random.Random) -> dict:
    """A held-out style row: a one-turn conversational prompt plus its check."""
    text, spec = instruction(family, rng)
    return {"prompt": [{"role": "user", "content": f"{task} {text}"}], "check": spec, "topic": task}


def make_pairs(row: dict, samples: list[str], finished: list[bool], per_prompt: int,
               rng: random.Random) -> list[dict]:
    """Up to `per_prompt` (chosen, rejected) pairs with distinct texts.

    Chosen: passes the check, finished, on topic. Rejected: fails the check.
    """
    chosen = list(dict.fromkeys(s for s, done in zip(samples, finished)
                                if done and check(row["check"], s) and on_topic(s, row["topic"])))
    rejected = list(dict.fromkeys(s for s in samples if not check(row["check"], s)))
    rng.shuffle(chosen)
    rng.shuffle(rejected)
    return [{"prompt": row["prompt"], "chosen": [{"role": "assistant", "content": c}],
             "rejected": [{"role": "assistant", "content": r}], "check": row["check"]}
            for c, r in zip(chosen[:per_prompt], rejected[:per_prompt])]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """One compact JSON object per line, UTF-8."""
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--tasks", type=Path, default=DEMO_DIR / "tasks.txt")
    parser.add_argument("--out", type=Path, default=DEMO_DIR)
    parser.add_argument("--heldout-tasks", type=int, default=64, help="tasks reserved for evaluation")
    parser.add_argument("--samples", type=int, default=4, help="completions sampled per training prompt")
    parser.add_argument("--pairs-per-prompt", type=int, default=2)
    parser.add_argument("--max-pairs", type=int, default=480)
    parser.add_argument("--max-new-tokens", type=int, default=72)
    parser.add_argument("--temperature", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generation batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples-out", type=Path, default=Path("runs/demo_samples.jsonl"),
                        help="where to keep the raw samples (not shipped)")
    parser.add_argument("--from-samples", type=Path, help="reuse raw samples written by an earlier run")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    rng = random.Random(args.seed)
    tasks = read_tasks(args.tasks)
    rng.shuffle(tasks)
    heldout_tasks, train_tasks = tasks[:args.heldout_tasks], tasks[args.heldout_tasks:]
    heldout = [make_row(task, FAMILIES[i % len(FAMILIES)], rng) for i, task in enumerate(heldout_tasks)]
    train_rows = [make_row(task, family, rng) for task in train_tasks for family in FAMILIES]

    model, tokenizer, _ = load(args.model)
    start = time.time()
    if args.from_samples:
        samples = [json.loads(line)["samples"] for line in args.from_samples.read_text().splitlines()]
    else:
        samples, _, _ = draw_samples(model, tokenizer, [row["prompt"] for row in train_rows], n=args.samples,
                                     max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                     batch_size=args.batch_size, seed=args.seed)
        args.samples_out.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(args.samples_out, [{**row, "samples": outs} for row, outs in zip(train_rows, samples)])
    seconds = time.time() - start
    limit = args.max_new_tokens - 1  # re-tokenized length at the limit: the sample was (very likely) cut off
    pairs, passed, pairable = [], Counter(), Counter()
    for row, outs in zip(train_rows, samples):
        finished = [len(tokenizer(s, add_special_tokens=False)["input_ids"]) < limit for s in outs]
        new = make_pairs(row, outs, finished, args.pairs_per_prompt, rng)
        passed[row["check"]["type"]] += sum(check(row["check"], s) for s in outs)
        pairable[row["check"]["type"]] += bool(new)
        pairs.extend(new)
    rng.shuffle(pairs)
    pairs = pairs[:args.max_pairs]

    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "train.jsonl", pairs)
    write_jsonl(args.out / "heldout.jsonl", heldout)
    prompts_per_family = len(train_tasks)
    print(json.dumps({
        "train_tasks": len(train_tasks), "heldout_tasks": len(heldout_tasks), "train_prompts": len(train_rows),
        "samples_per_prompt": args.samples, "generation_seconds": round(seconds),
        "sample_pass_rate": {f: round(passed[f] / (prompts_per_family * args.samples), 3) for f in FAMILIES},
        "prompts_with_pairs": dict(pairable),
        "pairs": dict(Counter(p["check"]["type"] for p in pairs)), "pairs_total": len(pairs),
        "heldout": dict(Counter(r["check"]["type"] for r in heldout)),
    }, indent=2))


if __name__ == "__main__":
    main()
