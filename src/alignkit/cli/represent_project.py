"""`alignkit represent project`: OneEncoder-style progressive contrastive alignment of frozen sentence spaces
(Faye et al., arXiv 2409.11059; CLIP's symmetric InfoNCE, arXiv 2103.00020).

    alignkit represent project --steps 300 --third-steps 300 --out runs/project.json

Embeds the sentences alignkit ships with all-MiniLM-L6-v2, SmolLM2 (mean-pooled last hidden state) and GloVe
50-d averages, trains a light Universal Projection on MiniLM<->SmolLM2, freezes it and aligns GloVe onto it
by training only GloVe's adapter; writes held-out R@1 / R@5 before and after (`alignkit.represent.
projection_demo`). torch and transformers are imported only when the command runs.
"""

from __future__ import annotations

import argparse

from alignkit.cli.common import RAW, require

FIRST_PAIR = ("minilm", "smollm2")


def add_project_verbs(subparsers: argparse._SubParsersAction) -> None:
    """Add `project` to the `alignkit represent` subcommands."""
    parser = subparsers.add_parser(
        "project", help="align frozen sentence encoders with a light contrastive projector (OneEncoder)",
        description="Train a light Universal Projection with per-space adapters and modality tokens (OneEncoder, "
                    "arXiv 2409.11059) with the symmetric InfoNCE loss (CLIP, arXiv 2103.00020) so that "
                    "MiniLM and SmolLM2 embeddings of the same sentence meet; then freeze it and align GloVe "
                    "averages by training only their adapter. Reports held-out R@1/R@5 both ways, before "
                    "(at initialisation) and after.", formatter_class=RAW)
    parser.add_argument("--out", required=True, help="output .json file (a new file; see --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--steps", type=int, default=300, help="step-1 training steps (default 300)")
    parser.add_argument("--third-steps", type=int, default=300, help="step-2 (GloVe adapter) steps (default 300)")
    parser.add_argument("--heldout", type=int, default=300, help="held-out sentences (default 300)")
    parser.add_argument("--sentences", type=int, help="use a random N of the shipped sentences (default: all)")
    parser.add_argument("--batch-size", type=int, default=256, help="sentences per batch (default 256)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (default 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="split, initialisation and batch seed (default 0)")
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="the causal LM: a name, folder, .gguf file or hub id (default smollm2-135m-instruct)")
    parser.add_argument("--anchors", nargs="+", choices=FIRST_PAIR, default=["minilm"],
                        help="aligned spaces GloVe trains against (default minilm; the other is zero-shot)")
    parser.add_argument("--temperature", type=float, default=0.07, help="initial temperature tau (default 0.07)")
    parser.add_argument("--fixed-temperature", action="store_true", help="keep tau fixed instead of learning it")
    parser.set_defaults(run=run_project)


def check_arguments(args: argparse.Namespace) -> None:
    """ValueError with the flag's name for a bad value (before anything is loaded)."""
    for flag in ("steps", "third_steps", "heldout"):
        require(getattr(args, flag) >= 1, f"--{flag.replace('_', '-')} must be at least 1")
    require(args.batch_size >= 2, "--batch-size must be at least 2 (in-batch negatives)")
    require(args.lr > 0, "--lr must be positive")
    require(args.temperature > 0, "--temperature must be positive")


def run_project(args: argparse.Namespace) -> int:
    from alignkit.data.writing import check_output, write_json
    from alignkit.represent.projection import ProjectorConfig
    from alignkit.represent.projection_demo import run_projection_demo
    from alignkit.represent.sentences import shipped_sentences

    check_arguments(args)
    available = len(shipped_sentences())
    require(args.heldout < available, f"--heldout must be below the {available} sentences available")
    require(args.sentences is None or args.heldout < args.sentences <= available,
            f"--sentences must be above --heldout and at most the {available} sentences available")
    path = check_output(args.out, overwrite=args.overwrite, suffix=".json")
    config = ProjectorConfig(temperature=args.temperature, learn_temperature=not args.fixed_temperature)
    demo = run_projection_demo(steps=args.steps, third_steps=args.third_steps, heldout=args.heldout, seed=args.seed,
                               model=args.model, anchors=tuple(args.anchors), config=config,
                               batch_size=args.batch_size, lr=args.lr, sentences=args.sentences)
    write_json(demo.to_dict(), path)
    for line in summary_lines(demo.to_dict()):
        print(line)
    print(f"wrote {path}")
    return 0


def summary_lines(result: dict) -> list[str]:
    """One line per retrieval direction: R@1 and R@5 before -> after."""
    rows = [(f"{a}->{b}" if way == "a_to_b" else f"{b}->{a}", entry, way)
            for a, b, entry in [(*result["first_pair"]["pair"], result["first_pair"])]
            + [("glove", other, pair) for other, pair in result["third_space"]["pairs"].items()]
            for way in ("a_to_b", "b_to_a")]
    return [f"{name:<18} R@1 {entry['before'][way]['R@1']:.3f} -> {entry['after'][way]['R@1']:.3f}   "
            f"R@5 {entry['before'][way]['R@5']:.3f} -> {entry['after'][way]['R@5']:.3f}" for name, entry, way in rows]
