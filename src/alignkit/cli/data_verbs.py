"""`alignkit data TRANSFORM`: dataset transforms (`alignkit.data.transforms`), model soups and BCO's UDM weights.

    alignkit data reward-augment --data prefs.jsonl --out goals.jsonl
    alignkit data soup --models sft-a sft-b --out soup

Each handler checks its arguments, calls one library function, and writes the result (a new file).
"""

from __future__ import annotations

import argparse

from alignkit.cli.common import RAW, io_arguments, read_rows, require, write_rows
from alignkit.cli.honesty_verbs import add_honesty_data

DATA_EPILOG = """\
examples (every transform writes a new JSONL file and never overwrites its input):
  alignkit data reward-augment --data prefs.jsonl --out goals.jsonl        two goal-conditioned copies per pair
  alignkit data reward-augment --inference --data prompts.jsonl --out top.jsonl    prompts asking for score 10
  alignkit data buckets --score-field score --k 8 --data sft.jsonl --out noc.jsonl    edges in noc.buckets.json
  alignkit data buckets --inference --k 8 --data prompts.jsonl --out top.jsonl     prompts with <q_7>
  alignkit data direction --angle -15 --data prompts.jsonl --out dpa.jsonl
  alignkit data soup --models sft-a sft-b --weights 0.5 0.5 --out soup      then: reference.model=soup
  alignkit data udm --model smollm2-135m-instruct --data unpaired.jsonl --out udm.jsonl   then: objective.name=bco_udm
"""

UDM_EPILOG = """\
each output row is the input row plus `scores: [w(x)]`, BCO's density ratio w(x) = p(x)/(1 - p(x)) clamped
to [--min-ratio, --max-ratio], where p(x) is a logistic-regression classifier's probability that prompt x
is from a desirable (label true) row. The classifier is fit on the mean-pooled last hidden states of up to
--sample-size prompts from each side (a seeded random sample); every row's prompt is then weighted. An
existing `scores` field is replaced. The `bco_udm` objective weights undesirable rows' losses by it:
  alignkit data udm --model smollm2-135m-instruct --data unpaired.jsonl --out udm.jsonl
  alignkit train --config recipes/bco_udm_smollm2.yaml data.train=udm.jsonl
"""


def add_data_verbs(verbs: argparse._SubParsersAction) -> None:
    """Add `data` and its transforms to the `alignkit` subcommands."""
    data = verbs.add_parser("data", help="dataset transforms: reward-augment, buckets, direction, soup, udm, honesty",
                            description="Transform a dataset into a new one.", epilog=DATA_EPILOG, formatter_class=RAW)
    transforms = data.add_subparsers(dest="subverb", required=True, metavar="TRANSFORM")
    _add_augment(transforms)
    _add_buckets(transforms)
    _add_direction(transforms)
    _add_soup(transforms)
    _add_udm(transforms)
    add_honesty_data(transforms)


def _add_augment(transforms: argparse._SubParsersAction) -> None:
    augment = transforms.add_parser("reward-augment", help="goal-conditioned copies of scored preference pairs",
                                    description="Reward-augmented data (arXiv 2410.08067): each pair becomes a copy "
                                    "with goal = chosen's score and a swapped copy with goal = rejected's score. "
                                    "With --inference, every prompt is conditioned on --goal (default --scale-max).")
    io_arguments(augment)
    augment.add_argument("--chosen-score", default="score_chosen", help="field with chosen's score")
    augment.add_argument("--rejected-score", default="score_rejected", help="field with rejected's score")
    augment.add_argument("--scale-max", type=float, default=10, help="top of the score scale (default 10)")
    augment.add_argument("--keep-if-ordered", nargs=2, metavar=("A", "B"), help="drop rows where field A < field B")
    augment.add_argument("--inference", action="store_true", help="condition prompts on one goal instead")
    augment.add_argument("--goal", type=float, default=None, help="the --inference goal (default --scale-max)")
    augment.add_argument("--nosys", action="store_true", help="prefix the first user turn, not a system message")
    augment.set_defaults(run=_reward_augment)


def _add_buckets(transforms: argparse._SubParsersAction) -> None:
    buckets = transforms.add_parser("buckets", help="quality-level conditioning (NoC, noise-aware learning from web-crawled pairs): score -> k levels",
                                    description="Discretise a per-row score into k levels and write the level "
                                    "into the prompt; the bin edges are saved next to --out (OUT.buckets.json). "
                                    "With --inference, every prompt gets one level (default the top, k-1).")
    io_arguments(buckets)
    buckets.add_argument("--score-field", default="score")
    buckets.add_argument("--k", type=int, default=8, help="number of levels (default 8)")
    buckets.add_argument("--strategy", choices=("uniform", "quantile"), default="uniform",
                         help="uniform-width bins (NoC) or equal-count bins")
    buckets.add_argument("--style", choices=("token", "system"), default="token",
                         help="a <q_LEVEL> prefix, or a system-prompt sentence")
    buckets.add_argument("--edges", help="reuse the edges of an earlier OUT.buckets.json instead of fitting")
    buckets.add_argument("--inference", action="store_true", help="condition every prompt on --level")
    buckets.add_argument("--level", type=int, default=None, help="the --inference level (default k-1)")
    buckets.add_argument("--nosys", action="store_true", help="with --style system: prefix the first user turn")
    buckets.set_defaults(run=_buckets)


def _add_direction(transforms: argparse._SubParsersAction) -> None:
    direction = transforms.add_parser("direction", help="direction conditioning (DPA, Directional Preference Alignment): attribute weights in the "
                                      "system prompt", description="Write w = round(100·v), v a unit vector (cos θ, "
                                      "sin θ) or normalized --weights, into DPA's system prompt.")
    io_arguments(direction)
    how = direction.add_mutually_exclusive_group(required=True)
    how.add_argument("--angle", type=float, help="θ in degrees (0: all helpfulness; DPA suggests -45..45)")
    how.add_argument("--weights", type=float, nargs="+", help="one weight per attribute (normalized)")
    how.add_argument("--angle-field", help="a field holding each row's angle in degrees")
    direction.add_argument("--attributes", nargs="+", default=["helpfulness", "verbosity"])
    direction.add_argument("--nosys", action="store_true", help="prefix the first user turn, not a system message")
    direction.set_defaults(run=_direction)


def _add_soup(transforms: argparse._SubParsersAction) -> None:
    soup = transforms.add_parser("soup", help="average N models' weights into one (the reference of SALSA, soup-based alignment learning)",
                                 description="Write a model whose weights are the weighted average of --models' "
                                 "weights (uniform by default); use it as reference.model=OUT.")
    soup.add_argument("--models", nargs="+", required=True, metavar="MODEL")
    soup.add_argument("--weights", nargs="+", type=float, default=None, help="one per model (normalized to sum 1)")
    soup.add_argument("--out", required=True, help="output model folder")
    soup.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    soup.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    soup.set_defaults(run=_soup)


def _add_udm(transforms: argparse._SubParsersAction) -> None:
    udm = transforms.add_parser("udm", help="BCO's prompt density-ratio weights (UDM, underlying distribution matching) as `scores`",
                                description="Underlying distribution matching for BCO (arXiv 2404.04656): embed "
                                "every row's prompt with --model, fit a desirable-vs-undesirable prompt classifier, "
                                "and write each row with scores = [w(x)].", epilog=UDM_EPILOG, formatter_class=RAW)
    udm.add_argument("--model", required=True, help="embedding model: name, HF folder, .gguf file or hub id")
    io_arguments(udm, "unpaired rows (prompt, label)")
    udm.add_argument("--prompt-field", default="prompt")
    udm.add_argument("--label-field", default="label", help="true = desirable, false = undesirable")
    udm.add_argument("--sample-size", type=int, default=1024,
                     help="prompts per side the classifier is fit on (default 1024, as TRL's prompt_sample_size)")
    udm.add_argument("--min-ratio", type=float, default=0.5, help="lower clamp of w(x) (default 0.5)")
    udm.add_argument("--max-ratio", type=float, default=10.0, help="upper clamp of w(x) (default 10)")
    udm.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    udm.add_argument("--seed", type=int, default=0, help="seed of the --sample-size sample")
    udm.set_defaults(run=_udm)


def _reward_augment(args: argparse.Namespace) -> int:
    from alignkit.data.transforms import goal_condition, reward_augment

    records = read_rows(args)
    if args.inference:
        rows = goal_condition(records, args.goal, scale_max=args.scale_max, nosys=args.nosys)
    else:
        rows = reward_augment(records, args.chosen_score, args.rejected_score, scale_max=args.scale_max,
                              nosys=args.nosys, keep_if_ordered=tuple(args.keep_if_ordered or ()) or None)
    write_rows(args, rows)
    return 0


def _buckets(args: argparse.Namespace) -> int:
    import json

    from alignkit.data.transforms import bucket_document, quality_buckets, quality_condition
    from alignkit.data.writing import sidecar_path, write_json

    records = read_rows(args)
    if args.inference:
        write_rows(args, quality_condition(records, args.k, args.level, args.style, nosys=args.nosys))
        return 0
    edges = json.loads(open(args.edges, encoding="utf-8").read())["edges"] if args.edges else None
    rows, edges = quality_buckets(records, args.score_field, args.k, args.strategy, args.style, edges=edges,
                                  nosys=args.nosys)
    write_rows(args, rows)
    sidecar = write_json(bucket_document(edges, args.score_field, args.strategy, args.style),
                         sidecar_path(args.out, "buckets"))
    print(f"bin edges written to {sidecar}")
    return 0


def _direction(args: argparse.Namespace) -> int:
    from alignkit.data.transforms import direction_condition

    rows = direction_condition(read_rows(args), args.angle, weights=args.weights, angle_field=args.angle_field,
                               attributes=args.attributes, nosys=args.nosys)
    write_rows(args, rows)
    return 0


def _soup(args: argparse.Namespace) -> int:
    import torch

    from alignkit.models.soup import save_soup

    save_soup(args.models, args.out, args.weights, dtype=getattr(torch, args.dtype), overwrite=args.overwrite)
    print(f"wrote the soup of {len(args.models)} models to {args.out} (use it as reference.model={args.out})")
    return 0


def _udm(args: argparse.Namespace) -> int:
    import sys

    from alignkit.pipelines import udm_rows

    require(args.sample_size >= 1 and args.batch_size >= 1, f"--sample-size and --batch-size must be at least 1, "
            f"got {args.sample_size}, {args.batch_size}")
    require(0 < args.min_ratio <= args.max_ratio, f"need 0 < --min-ratio <= --max-ratio, got {args.min_ratio}, "
            f"{args.max_ratio}")
    records = read_rows(args)
    rows, summary = udm_rows(records, args.model, prompt_field=args.prompt_field, label_field=args.label_field,
                             sample_size=args.sample_size, seed=args.seed, min_ratio=args.min_ratio,
                             max_ratio=args.max_ratio, batch_size=args.batch_size)
    replaced = sum("scores" in record.data for record in records)
    write_rows(args, rows)
    if replaced:
        print(f"replaced the existing `scores` of {replaced} rows", file=sys.stderr)
    print(f"w(x) fit on {summary.desirable} desirable and {summary.undesirable} undesirable prompts "
          f"({summary.distinct_prompts} distinct prompts embedded): min {summary.min:.3g}, mean {summary.mean:.3g}, "
          f"max {summary.max:.3g}; train on it with objective.name=bco_udm")
    return 0
