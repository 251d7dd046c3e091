"""`alignkit represent ctc-latency`: plain CTC against CTC + the low-latency property loss of Align With Purpose
(Segev et al. 2023, "Align With Purpose: Optimize Desired Properties in CTC Models with a General
Plug-and-Play Framework", arXiv 2307.01715), on seeded synthetic speech.

    alignkit represent ctc-latency --steps 1200 --weight 0.03 --margin 0 --out runs/ctc_latency.json

The verb is named for the property it optimises (emission latency); the methods live in
`alignkit.represent.ctc_property` (the loss), `alignkit.represent.synthetic_speech` (the task) and
`alignkit.represent.ctc_demo` (the comparison). Nothing here imports torch until the verb runs.
"""

from __future__ import annotations

import argparse

from alignkit.cli.common import RAW, flagged, require

EPILOG = """\
Two causal GRU CTC models (one unidirectional layer + linear, same seed, same batches, same steps): plain CTC,
and CTC for --warmup steps then L_CTC + weight * L_prop, where per utterance N = --samples paths a_i are drawn
frame by frame from the softmax, f(a_i) is a_i shifted one frame earlier (a leading blank or a repeated frame
dropped, a blank appended), and
  L_prop = 1/N sum_i max(0, log P(a_i) - log P(f(a_i)) + margin),  log P(a) = sum_t log p_t(a_t).
Scored on held-out utterances by the greedy CTC path:
  token error rate = sum edit distance / sum reference tokens
  emission offset  = mean (first frame of the token's greedy run - its true onset) over correct tokens
output (--out FILE.json): both runs' scores, their difference, the settings and the wall time.
"""


def add_ctc_verbs(subparsers: argparse._SubParsersAction) -> None:
    """Add `ctc-latency` to the `alignkit represent` subcommands."""
    parser = subparsers.add_parser("ctc-latency", help="CTC vs CTC + Align With Purpose low-latency loss on "
                                                       "synthetic speech (emission offset, token error rate)",
                                   description="Align With Purpose (arXiv 2307.01715), low-latency property, "
                                               "on seeded synthetic speech.", epilog=EPILOG, formatter_class=RAW)
    parser.add_argument("--out", required=True, help="output .json file (a new file; --overwrite to replace)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--steps", type=int, default=1200, help="optimiser steps of each run (default 1200)")
    parser.add_argument("--warmup", type=int, default=400, help="plain-CTC steps before the property loss "
                                                                "(default 400)")
    parser.add_argument("--weight", type=float, default=0.03, help="weight of the property loss (default 0.03)")
    parser.add_argument("--margin", type=float, default=0.0, help="hinge margin in nats (default 0)")
    parser.add_argument("--samples", type=int, default=5, help="sampled paths per utterance (default 5)")
    parser.add_argument("--batch", type=int, default=32, help="utterances per step (default 32)")
    parser.add_argument("--hidden", type=int, default=64, help="GRU width (default 64)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    parser.add_argument("--test-utterances", type=int, default=500, help="held-out utterances (default 500)")
    parser.add_argument("--noise", type=float, default=1.0, help="std of the per-frame feature noise (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.set_defaults(run=_run_ctc_latency, parser=parser)


def _run_ctc_latency(args: argparse.Namespace) -> int:
    """Every argument checked (ValueError) and --out cleared before the two trainings run."""
    require(args.threads >= 1, f"--threads: must be at least 1, got {args.threads}")
    import torch

    from alignkit.data.writing import check_output, write_json
    from alignkit.represent.ctc_demo import DemoSettings, compare
    from alignkit.represent.synthetic_speech import SpeechConfig

    settings = DemoSettings(steps=args.steps, warmup=args.warmup, batch=args.batch, hidden=args.hidden,
                            lr=args.lr, weight=args.weight, margin=args.margin, samples=args.samples,
                            test_utterances=args.test_utterances, seed=args.seed)
    config = flagged("--noise", SpeechConfig, noise=args.noise)
    flagged("--out", check_output, args.out, overwrite=args.overwrite, suffix=".json")
    torch.set_num_threads(args.threads)
    document = compare(settings, config)
    document["command"] = "alignkit " + " ".join(getattr(args, "argv", []))
    write_json(document, args.out)
    for name, scores in document["runs"].items():
        print(f"{name:<13} token error rate {scores['token_error_rate']:.4f}  "
              f"mean emission offset {scores['mean_emission_offset']:.3f} frames")
    print(f"wrote {args.out} ({document['wall_s']} s)")
    return 0
