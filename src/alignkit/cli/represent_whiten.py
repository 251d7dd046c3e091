"""`alignkit represent whiten`: WhitenedCSE fine-tuning of all-MiniLM-L6-v2 (Zhuo et al. 2023, arXiv 2305.17746).

    alignkit represent whiten --steps 20 --batch-size 64 --out runs/whiten/results.json --save runs/whiten/model

The method lives in `alignkit.represent.whitening`, the demonstration in `alignkit.represent.whiten_demo`;
nothing heavy (torch, transformers) is imported until the verb runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from alignkit.cli.common import RAW, require

EPILOG = """\
each step: --batch-size sentences, --views dropout views each (one forward pass, dropout on), mean-pooled,
shuffled group whitening of each view (a random channel permutation, ZCA within --groups groups, the
permutation undone), a training-only tanh(W z + b) head, then the multi-positive InfoNCE at --temperature:
  L = sum_v mean_i -log softmax_j(cos(h0_i, hv_j) / tau)_i      (view 0 the anchor, views 1.. its positives)
AdamW, lr linearly decayed to 0. Training sentences: the sentences alignkit ships, minus the held-out tasks.
before and after, on held-out demo prompts (a base task stated with two different instructions):
  same_task_alignment = mean ||f(x) - f(x+)||^2      uniformity = log mean exp(-2 ||f(x) - f(y)||^2)
  same_task_top1 (nearest other prompt of the same base task; chance in data.same_task_top1_chance)
  dropout_alignment (two dropout views of one prompt)
output: --out JSON (config, data sizes, before, after, per-step losses, seconds); --save DIR: the fine-tuned
encoder and tokenizer (save_pretrained; the head is dropped, as in the official code).
"""


def add_whiten_verbs(subparsers: argparse._SubParsersAction) -> None:
    """Add `whiten` to the `alignkit represent` subcommands."""
    parser = subparsers.add_parser("whiten", help="WhitenedCSE: fine-tune MiniLM with shuffled group whitening",
                                   description="Unsupervised WhitenedCSE fine-tuning of all-MiniLM-L6-v2 (Zhuo "
                                               "et al. 2023, arXiv 2305.17746), with alignment and uniformity "
                                               "(Wang & Isola 2020, arXiv 2005.10242) before and after.",
                                   epilog=EPILOG, formatter_class=RAW)
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps (default 20, a few CPU minutes)")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences per step (default 64)")
    parser.add_argument("--lr", type=float, default=3e-5, help="AdamW learning rate (default 3e-5)")
    parser.add_argument("--temperature", type=float, default=0.05, help="InfoNCE temperature (default 0.05)")
    parser.add_argument("--views", type=int, default=3, help="dropout views per sentence (default 3)")
    parser.add_argument("--groups", type=int, default=64, help="whitening groups (default 64: 6 channels of 384)")
    parser.add_argument("--eps", type=float, default=1e-5,
                        help="added to the eigenvalues (default 1e-5; the code adds none, but MiniLM has three "
                             "dead channels, so 0 gives a NaN loss)")
    parser.add_argument("--split", choices=("views", "rows"), default="views",
                        help="whiten each view (views) or the code's thirds of the sentence-major rows (rows)")
    parser.add_argument("--combine", choices=("sum", "mean"), default="sum", help="combine positives (default sum)")
    parser.add_argument("--grad-through-whitening", action="store_true",
                        help="back-propagate through Sigma^-1/2 (the code detaches it)")
    parser.add_argument("--max-tokens", type=int, default=32, help="word pieces per training sentence (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="results JSON file")
    parser.add_argument("--save", metavar="DIR", help="also save the fine-tuned encoder here (a new or empty folder)")
    parser.set_defaults(run=run_whiten)


def check_paths(args: argparse.Namespace) -> None:
    """ValueError unless --out can be written and --save is a new or empty folder."""
    out = Path(args.out)
    require(out.parent.is_dir(), f"--out: the folder {out.parent} does not exist")
    require(not out.is_dir(), f"--out: {out} is a folder, not a file")
    if args.save is not None:
        save = Path(args.save)
        require(not save.exists() or (save.is_dir() and not any(save.iterdir())),
                f"--save: {save} exists and is not an empty folder")


def run_whiten(args: argparse.Namespace) -> int:
    """Check the arguments, fine-tune, write the JSON, print the before/after table."""
    check_paths(args)
    from alignkit.data.writing import write_json
    from alignkit.represent.whiten_demo import WhitenConfig, fine_tune

    config = WhitenConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, temperature=args.temperature,
                          views=args.views, groups=args.groups, eps=args.eps, split=args.split,
                          combine=args.combine, detach_transform=not args.grad_through_whitening,
                          max_tokens=args.max_tokens, seed=args.seed)
    document = fine_tune(config, save=args.save)
    write_json(document, args.out)
    print(f"{'metric':<22}{'before':>10}{'after':>10}")
    for name, value in document["before"].items():
        print(f"{name:<22}{value:>10.4f}{document['after'][name]:>10.4f}")
    print(f"same-task top-1 chance: {document['data']['same_task_top1_chance']:.4f}; "
          f"{config.steps} steps in {document['train_seconds']} s; wrote {args.out}")
    return 0
