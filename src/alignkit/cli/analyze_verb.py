"""`alignkit analyze shift`: URIAL's token distribution shift between a base and an aligned model (Lin et al.,
"The Unlocking Spell on Base LLMs", arXiv 2312.01552; official code Re-Align/AlignTDS).

    alignkit analyze shift --base smollm2-135m-instruct --aligned runs/demo/final \\
        --prompts builtin:demo/heldout.jsonl --out runs/shift_demo

The aligned model answers each prompt greedily; the base model reads the same answer tokens after its frame
(`--frame`); each answer position is unshifted, marginal or shifted by the rank of the aligned token under the
base. Writes shift.json, report.md and plots/shift_by_position.png to --out (`alignkit.eval.shift`).
"""

from __future__ import annotations

import argparse

from alignkit.cli.common import RAW, flagged, require

SHIFT_EPILOG = """\
frames (what the base model reads before the answer):
  urial   AlignTDS's zero-shot frame: "# Query: \\n ```{query}``` \\n\\n \\n# Answer: \\n ```" (default)
  same    exactly the aligned model's rendered prompt (its chat template): what the weights alone change
  plain   the prompt text as is
--chat-template / --no-chat-template set how prompts are rendered for the aligned model.
"""


def add_analyze_verb(verbs: argparse._SubParsersAction) -> None:
    """Add `analyze` and its analyses to the `alignkit` subcommands."""
    from alignkit.cli.generate_verb import add_chat_template_options

    analyze = verbs.add_parser("analyze", help="analyses of aligned models: shift (token-distribution shift)")
    analyses = analyze.add_subparsers(dest="subverb", required=True, metavar="ANALYSIS")
    shift = analyses.add_parser(
        "shift", help="token-distribution shift between a base and an aligned model (URIAL, arXiv 2312.01552)",
        description="Where does alignment change the next token? The aligned model answers each prompt greedily; "
                    "the base model scores the same answer tokens teacher-forced; each position is unshifted "
                    "(the aligned token is the base's top-1), marginal (rank 2-3) or shifted (rank > 3), with "
                    "the base's probability of the token and the top-k KL (base || aligned) between the two.",
        epilog=SHIFT_EPILOG, formatter_class=RAW)
    shift.add_argument("--base", required=True, help="the base model: a name, folder, .gguf file or hub id")
    shift.add_argument("--aligned", required=True, help="the aligned model (the same tokenizer as --base)")
    shift.add_argument("--prompts", required=True,
                       help="prompts: a dataset with a prompt field, a .txt file, builtin:..., or - for stdin")
    shift.add_argument("--prompt-field", default="prompt")
    shift.add_argument("--out", required=True, help="output folder (new or empty; see --overwrite)")
    shift.add_argument("--overwrite", action="store_true", help="write into a folder that already holds files")
    shift.add_argument("--frame", choices=("urial", "same", "plain"), default="urial",
                       help="what the base model reads before the answer (default: urial; see below)")
    shift.add_argument("--max-new-tokens", type=int, default=96)
    shift.add_argument("--batch-size", type=int, default=8)
    shift.add_argument("--top-k", type=int, default=30, help="candidates per model in the top-k KL (default 30)")
    shift.add_argument("--bucket-width", type=int, default=8, help="answer positions per bucket (default 8)")
    shift.add_argument("--top-tokens", type=int, default=20, help="most shifted tokens to list (default 20)")
    add_chat_template_options(shift)
    shift.set_defaults(run=_shift)


def _shift(args: argparse.Namespace) -> int:
    import time

    from alignkit.cli.generate_verb import chat_template_choice
    from alignkit.eval.inputs import read_prompts
    from alignkit.eval.output import plot_path, prepare_output, write_results
    from alignkit.eval.shift import analyze_shift, check_same_vocabulary
    from alignkit.eval.shift_report import plot_shift_by_position, shift_report, shift_results, summarize
    from alignkit.models.loading import ensure_loaded

    for flag in ("max_new_tokens", "batch_size", "top_k", "bucket_width", "top_tokens"):
        require(getattr(args, flag) >= 1, f"--{flag.replace('_', '-')} must be at least 1")
    template = chat_template_choice(args)
    prompts, _ = read_prompts(args.prompts, args.prompt_field)
    folder = prepare_output(args.out, overwrite=args.overwrite, inputs=[args.prompts] if args.prompts != "-" else [])
    base = flagged("--base", ensure_loaded, args.base)
    aligned = flagged("--aligned", ensure_loaded, args.aligned)
    check_same_vocabulary(base.tokenizer, aligned.tokenizer, f"--base {args.base}", f"--aligned {args.aligned}")
    started = time.perf_counter()
    analysis = analyze_shift(base.model, base.tokenizer, aligned.model, aligned.tokenizer, prompts, frame=args.frame,
                             chat_template=template, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                             top_k=args.top_k)
    summary = summarize(analysis, bucket_width=args.bucket_width, top_tokens=args.top_tokens)
    settings = {"base": args.base, "aligned": args.aligned, "prompts": args.prompts,
                "chat_template": args.chat_template, "max_new_tokens": args.max_new_tokens,
                "wall_s": round(time.perf_counter() - started, 1)}
    plot_shift_by_position(summary["by_position"], plot_path(folder, "shift_by_position"))
    results = shift_results(analysis, summary, settings)
    write_results(folder, "shift", results, shift_report(summary, results["settings"]))
    fractions = summary["fractions"]
    print(f"{summary['positions']} answer positions of {summary['prompts']} prompts: "
          + ", ".join(f"{name} {100 * value:.1f}%" for name, value in fractions.items())
          + f"; wrote {folder}/shift.json, report.md, plots/shift_by_position.png")
    return 0
