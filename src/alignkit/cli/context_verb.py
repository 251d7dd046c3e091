"""`alignkit eval context`: context grounding of models on held-out context rows (`alignkit.eval.context`).

    alignkit eval context --model smollm2-135m-instruct --model runs/rdpo/final \\
        --data builtin:context/heldout.jsonl --out runs/rdpo/eval_context
"""

from __future__ import annotations

import argparse

from alignkit.cli.common import RAW, flagged, require

EPILOG = """\
rows: the context format {"prompt", "context", "distractor_context", "chosen", "rejected"} and optionally
"answer" (shipped: builtin:context/heldout.jsonl, scripts/make_context_pairs.py). Per model, with answer
log-probs summed as training scores them (c: the passage that states the answer, c~: the distractor):
  answer preferred   fraction with log p(chosen | c) > log p(rejected | c)
  context preferred  fraction with log p(chosen | c) > log p(chosen | c~)
  context margin     mean of log p(chosen | c) - log p(chosen | c~), nats
  exact match        fraction of greedy answers under c that contain "answer" (rows with an answer field)
output (--out DIR): eval.json and report.md
"""


def add_context_eval(evals: argparse._SubParsersAction) -> None:
    """Add `context` to the `alignkit eval` subcommands."""
    parser = evals.add_parser("context", help="context grounding: answers from the passage, not the distractor",
                              description="Context grounding of one or more models on context rows (Re-Align's "
                                          "rDPO in text form, arXiv 2502.13146).", epilog=EPILOG, formatter_class=RAW)
    parser.add_argument("--model", action="append", required=True, help="a model (repeatable): name, folder, .gguf")
    parser.add_argument("--data", default="builtin:context/heldout.jsonl", help="context rows (default: the "
                                                                                "shipped held-out set)")
    parser.add_argument("--out", required=True, help="output folder (new or empty; --overwrite to reuse)")
    parser.add_argument("--overwrite", action="store_true", help="write into a folder that already holds files")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.set_defaults(run=_eval_context, parser=parser)


def _eval_context(args: argparse.Namespace) -> int:
    from alignkit.data import load_examples, load_records
    from alignkit.eval.context import context_grounding
    from alignkit.eval.output import prepare_output, write_results
    from alignkit.models import load
    from alignkit.models.loading import resolve

    require(args.max_new_tokens >= 1, f"--max-new-tokens: must be at least 1, got {args.max_new_tokens}")
    require(args.batch_size >= 1, f"--batch-size: must be at least 1, got {args.batch_size}")
    examples = flagged("--data", load_examples, args.data, "context")
    answers = [record.data.get("answer") for record in flagged("--data", load_records, args.data)]
    answers = answers if all(isinstance(answer, str) and answer for answer in answers) else None
    folder = flagged("--out", prepare_output, args.out, overwrite=args.overwrite, inputs=[args.data])
    for name in args.model:
        flagged("--model", resolve, name)
    results = {}
    for name in args.model:
        model, tokenizer, _ = flagged("--model", load, name)
        results[name] = context_grounding(model.eval(), tokenizer, examples, answers,
                                          max_new_tokens=args.max_new_tokens, batch_size=args.batch_size).as_dict()
    table = _table(results)
    write_results(folder, "eval", {"models": results, "data": args.data}, f"# Context grounding\n\n{table}")
    print(table, end="")
    print(f"wrote {folder}/eval.json and report.md")
    return 0


def _table(results: dict[str, dict]) -> str:
    lines = ["| model | answer preferred | context preferred | context margin (nats) | exact match |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        exact = "—" if r["exact_match"] is None else f"{r['exact_match']:.3f}"
        lines.append(f"| {name} | {r['answer_preferred']:.3f} | {r['context_preferred']:.3f} | "
                     f"{r['context_margin']:.2f} | {exact} |")
    return "\n".join(lines) + "\n"
