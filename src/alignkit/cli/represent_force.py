"""`alignkit represent force-align`: iterative pseudo-forced alignment of a long synthetic sequence (López &
Luque 2022, "Iterative pseudo-forced alignment by acoustic CTC loss for self-supervised ASR domain
adaptation", arXiv 2210.15226; `alignkit.represent.iterative_alignment`).

    alignkit represent force-align --utterances 40 --noise 0.3 --seed 0 --out results.json

A long CTC-like posterior with known utterance boundaries (and untranscribed stretches) is aligned to its
text utterance by utterance: CTC forced alignment inside a window from the anchor, the text shrunk or the
window grown until the last utterance's confidence passes the threshold, the anchor moved to its end. Prints
the boundary error at each step and writes every number to --out (JSON).
"""

from __future__ import annotations

import argparse

from alignkit.cli.common import RAW, require

FORCE_EPILOG = """\
the schedule (per row of --row-size utterances): text = carried utterances + the row; window = [anchor,
the row's end estimated from its share of the text]; align; the last utterance's score s (the least mean
frame log-posterior over windows of --score-window frames) decides:
  s < --threshold                       drop the last utterance and realign; a lone failing one is carried
                                        with the rest and the anchor stays (the next window is longer)
  --threshold <= s < --accept-score     try one utterance fewer, keep it while the now-last one improves
  s >= --accept-score                   accept; the anchor moves to the end of the last utterance
boundary error: mean over utterances of (|start - true start| + |end - true end|) / 2, in frames (20 ms).
The threshold defaults are calibrated to this synthetic posterior at noise about 0.3 (the official code's,
for a real recogniser, are -2.0 and -1.0); raise them towards 0 for less noise, lower them for more.
"""


def add_force_verbs(subparsers: argparse._SubParsersAction) -> None:
    """Add `force-align` to the `alignkit represent` subcommands."""
    force = subparsers.add_parser(
        "force-align", help="iterative pseudo-forced CTC alignment of a long synthetic sequence (arXiv 2210.15226)",
        description="CTC forced alignment with anchors: align a long synthetic posterior to its text utterance "
                    "by utterance and report the boundary error per step.",
        epilog=FORCE_EPILOG, formatter_class=RAW)
    force.add_argument("--utterances", type=int, default=40, help="utterances in the sequence (default 40)")
    force.add_argument("--noise", type=float, default=0.3,
                       help="Gaussian noise on the posterior's logits, relative to the label's peak (default 0.3)")
    force.add_argument("--seed", type=int, default=0)
    force.add_argument("--vocab", type=int, default=8, help="vocabulary size with the blank (default 8)")
    force.add_argument("--untranscribed-rate", type=float, default=0.3,
                       help="chance that speech the text omits follows an utterance (default 0.3)")
    force.add_argument("--threshold", type=float, default=-0.6, help="least confident score (default -0.6)")
    force.add_argument("--accept-score", type=float, default=-0.3,
                       help="score accepted without trying less text (default -0.3)")
    force.add_argument("--score-window", type=int, default=30,
                       help="frames per window of the score; 0 for the whole utterance's mean (default 30)")
    force.add_argument("--min-anchor-tokens", type=int, default=0,
                       help="utterances with fewer tokens never become anchors (default 0: any)")
    force.add_argument("--max-window", type=int, default=3500,
                       help="window length (frames) at which the rough ends are recomputed (default 3500)")
    force.add_argument("--row-size", type=int, default=1, help="utterances per text row (default 1)")
    force.add_argument("--out", help="write the results here (a .json file)")
    force.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    force.set_defaults(run=run_force_align)


def check_force_args(args: argparse.Namespace) -> None:
    """ValueError for arguments the demonstration cannot run with."""
    require(args.utterances >= 1, "--utterances must be at least 1")
    require(args.noise >= 0.0, "--noise must be at least 0")
    require(args.vocab >= 2, "--vocab must be at least 2 (the blank and one label)")
    require(0.0 <= args.untranscribed_rate <= 1.0, "--untranscribed-rate must be in [0, 1]")
    require(args.threshold <= 0.0, "--threshold must be at most 0 (scores are log posteriors)")
    require(args.threshold <= args.accept_score <= 0.0, "--accept-score must be in [--threshold, 0]")
    require(args.score_window >= 0, "--score-window must be at least 0")
    require(args.min_anchor_tokens >= 0, "--min-anchor-tokens must be at least 0")
    require(args.max_window >= 1 and args.row_size >= 1, "--max-window and --row-size must be at least 1")


def number(value: float | None, digits: int = 2) -> str:
    """`value` with `digits` decimals, or "-" for None (nothing to measure)."""
    return "-" if value is None else f"{value:.{digits}f}"


def step_table(steps: list[dict]) -> str:
    """The per-step lines printed after the run."""
    lines = ["step  window         text  outcome     passes  last score  error  cumulative"]
    for step in steps:
        window = f"[{step['window'][0]}, {step['window'][1]})"
        lines.append(f"{step['step']:>4}  {window:<14} {len(step['text']):>4}  {step['outcome']:<10} "
                     f"{step['passes']:>6}  {number(step['last_score'], 3):>10}  "
                     f"{number(step['boundary_error']):>5}  {number(step['cumulative_error']):>10}")
    return "\n".join(lines)


def run_force_align(args: argparse.Namespace) -> int:
    check_force_args(args)
    from alignkit.data.writing import check_output, write_json

    out = check_output(args.out, overwrite=args.overwrite, suffix=".json") if args.out else None
    from alignkit.represent.iterative_alignment import ScheduleConfig, SyntheticConfig, demonstration

    synthetic = SyntheticConfig(utterances=args.utterances, vocab=args.vocab, noise=args.noise, seed=args.seed,
                                untranscribed_rate=args.untranscribed_rate)
    schedule = ScheduleConfig(threshold=args.threshold, accept_score=args.accept_score,
                              score_window=args.score_window or None, min_anchor_tokens=args.min_anchor_tokens,
                              max_window=args.max_window, row_size=args.row_size)
    document = demonstration(synthetic, schedule)
    print(step_table(document["steps"]))
    summary = document["summary"]
    print(f"{document['frames']} frames ({document['seconds_at_20ms']:.0f} s at 20 ms); aligned "
          f"{summary['aligned']}/{summary['utterances']}, boundary error {number(summary['boundary_error'])} "
          f"frames (the {summary['confident']} confident ones: {number(summary['confident_boundary_error'])}); "
          f"baseline without anchors {number(summary['baseline_boundary_error'])}")
    if out is not None:
        write_json(document, out)
        print(f"wrote {out}")
    return 0
