"""`alignkit <verb>`: the command line.

    alignkit train --config recipes/dpo_smollm2.yaml objective.params.beta=0.2 max_steps=50
    alignkit evaluate --model smollm2-135m-instruct --model runs/demo/final
    alignkit objectives
    alignkit sample --model smollm2-135m-instruct --data prompts.jsonl --k 4 --out samples.jsonl
    alignkit score --models A B --data sft.jsonl --out scored.jsonl
    alignkit data reward-augment --data prefs.jsonl --out goals.jsonl
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap

TRAIN_EPILOG = """\
overrides are dotted keys of the recipe, for example:
  model.name_or_path=path/to/model     a local HF folder, a .gguf file, a hub id, or smollm2-135m-instruct
  model.lora.r=16                      train LoRA adapters instead of all weights
  data.train=prefs.jsonl               JSONL/JSON/Parquet/CSV, a save_to_disk folder (folder::split), or builtin:...
  objective.name=dpo objective.params.beta=0.2
  batch_size=4 grad_accum=4 optim.lr=5e-6 max_steps=100 save_every=25 output_dir=runs/x
  reference.precompute=false           score the reference every step instead of once, up front
show every key with its default:  alignkit train --print-config
resume an interrupted run:         alignkit train --config same.yaml output_dir=same --resume
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit", description="Align language models with what people want.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    train = verbs.add_parser("train", help="train a model with a preference objective (DPO, ...)",
                             description="Train a model from a YAML recipe; key=value arguments override it.",
                             epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", help="YAML recipe (see recipes/); defaults are used for keys it omits")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, dotted keys")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    train.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    train.set_defaults(run=_train)

    evaluate = verbs.add_parser("evaluate", help="instruction-following pass rates of one or more models",
                                description="Greedy completions of held-out prompts, scored by programmatic "
                                            "checks; with two models, a before/after table.")
    evaluate.add_argument("--model", action="append", required=True,
                          help="model to evaluate (repeat: the first is 'before', the second 'after')")
    evaluate.add_argument("--data", default=None, help="held-out rows JSONL (default: the shipped demo set)")
    evaluate.add_argument("--max-new-tokens", type=int, default=96)
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--output", help="write per-row completions and results as JSONL here")
    evaluate.set_defaults(run=_evaluate)

    objectives = verbs.add_parser("objectives", help="list the registered training objectives")
    objectives.set_defaults(run=_objectives)
    _add_dataset_verbs(verbs)
    return parser


def _train(args: argparse.Namespace) -> int:
    from alignkit.train.config import load_config, to_yaml

    config = load_config(args.config, args.overrides)
    if args.print_config:
        print(to_yaml(config), end="")
        return 0
    from alignkit.train.loop import train

    result = train(config, resume=args.resume)
    if os.environ.get("RANK", "0") == "0":
        print(f"trained {result.steps} steps; model saved to {result.final_dir}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import json

    from alignkit.eval.instructions import evaluate_instructions, format_comparison, load_heldout
    from alignkit.models import load

    if len(args.model) > 2:
        raise SystemExit("evaluate: give one model, or two (before and after)")
    rows = load_heldout(args.data)
    reports = []
    for name in args.model:
        model, tokenizer, _ = load(name)
        model.eval()
        report = evaluate_instructions(model, tokenizer, rows, max_new_tokens=args.max_new_tokens,
                                       batch_size=args.batch_size)
        reports.append(report)
        print(f"{name}: {report.passed}/{len(report.rows)} held-out prompts pass their check", flush=True)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            for name, report in zip(args.model, reports):
                for row, result in zip(rows, report.rows):
                    f.write(json.dumps({"model": name, "prompt": row["prompt"], "check": row["check"],
                                        "completion": result.completion, "passed": result.passed}) + "\n")
    if len(reports) == 2:
        print(format_comparison(*reports))
    return 0


def _objectives(args: argparse.Namespace) -> int:
    from alignkit.objectives import available

    for objective in available():
        reference = "reference" if objective.needs_reference else "no reference"
        print(f"{objective.name:<12} {objective.description}")
        print(textwrap.indent(f"data: {objective.data_format}; {reference}; log-probs: {objective.logps}; "
                              f"defaults: {objective.defaults}\nsource: {objective.source}", " " * 13))
    return 0

SAMPLE_EPILOG = """\
each output row is the input row plus `samples`: K completions of its prompt (strings for string
prompts; one-message lists [{"role": "assistant", "content": ...}] for message-list prompts), which
is the `samples` data format that D2O trains on (with the row's `rejected`), for example:
  alignkit sample --model smollm2-135m-instruct --data negatives.jsonl --k 4 --out d2o.jsonl
"""

SCORE_EPILOG = """\
each output row is the input row plus `scores` (the per-token mean log-prob of the completion under
each --models, in that order) and `scores_sum` (the summed log-prob). Every model tokenizes with its
own tokenizer and chat template. PoFT trains on `scores`, for example:
  alignkit score --models aligned-a aligned-b --data sft.jsonl --out sft_scored.jsonl
"""

DATA_EPILOG = """\
examples (every transform writes a new JSONL file and never overwrites its input):
  alignkit data reward-augment --data prefs.jsonl --out goals.jsonl        two goal-conditioned copies per pair
  alignkit data reward-augment --inference --data prompts.jsonl --out top.jsonl    prompts asking for score 10
  alignkit data buckets --score-field score --k 8 --data sft.jsonl --out noc.jsonl    edges in noc.buckets.json
  alignkit data buckets --inference --k 8 --data prompts.jsonl --out top.jsonl     prompts with <q_7>
  alignkit data direction --angle -15 --data prompts.jsonl --out dpa.jsonl
  alignkit data soup --models sft-a sft-b --weights 0.5 0.5 --out soup      then: reference.model=soup
"""

RAW = argparse.RawDescriptionHelpFormatter


def _io_arguments(parser: argparse.ArgumentParser, what: str = "rows") -> None:
    parser.add_argument("--data", required=True, help=f"input {what}: JSONL/JSON/Parquet/CSV or a save_to_disk folder")
    parser.add_argument("--out", required=True, help="output .jsonl file (a new file; never the input)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def _add_dataset_verbs(verbs: argparse._SubParsersAction) -> None:
    sample = verbs.add_parser("sample", help="K sampled completions per prompt (D2O's self-samples)",
                              epilog=SAMPLE_EPILOG, formatter_class=RAW,
                              description="Sample K completions of every prompt from a model (batched, KV cache).")
    sample.add_argument("--model", required=True, help="model name, HF folder, .gguf file or hub id")
    _io_arguments(sample, "rows with a prompt")
    sample.add_argument("--k", type=int, default=4, help="completions per prompt (default 4)")
    sample.add_argument("--max-new-tokens", type=int, default=128)
    sample.add_argument("--temperature", type=float, default=1.0, help="1 samples the model as is; 0 is greedy")
    sample.add_argument("--top-p", type=float, default=1.0)
    sample.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (each with k samples)")
    sample.add_argument("--seed", type=int, default=0, help="same seed, data and batch size: same samples")
    sample.add_argument("--prompt-field", default="prompt")
    sample.set_defaults(run=_checked(_sample))

    score = verbs.add_parser("score", help="log-likelihood of completions under one or more models (PoFT)",
                             description="Score each row's completion given its prompt under every model.",
                             epilog=SCORE_EPILOG, formatter_class=RAW)
    score.add_argument("--models", nargs="+", required=True, metavar="MODEL", help="one or more models")
    _io_arguments(score, "rows with a prompt and a completion")
    score.add_argument("--field", default="completion", help="the completion field to score (default completion)")
    score.add_argument("--prompt-field", default="prompt")
    score.add_argument("--batch-size", type=int, default=8)
    score.add_argument("--max-length", type=int, default=None, help="truncate longer rows (keeps the prompt's end)")
    score.set_defaults(run=_checked(_score))

    data = verbs.add_parser("data", help="dataset transforms: reward-augment, buckets, direction, soup",
                            description="Transform a dataset into a new one.", epilog=DATA_EPILOG, formatter_class=RAW)
    transforms = data.add_subparsers(dest="transform", required=True, metavar="TRANSFORM")
    augment = transforms.add_parser("reward-augment", help="goal-conditioned copies of scored preference pairs",
                                    description="Reward-augmented data (arXiv 2410.08067): each pair becomes a copy "
                                    "with goal = chosen's score and a swapped copy with goal = rejected's score. "
                                    "With --inference, every prompt is conditioned on --goal (default --scale-max).")
    _io_arguments(augment)
    augment.add_argument("--chosen-score", default="score_chosen", help="field with chosen's score")
    augment.add_argument("--rejected-score", default="score_rejected", help="field with rejected's score")
    augment.add_argument("--scale-max", type=float, default=10, help="top of the score scale (default 10)")
    augment.add_argument("--keep-if-ordered", nargs=2, metavar=("A", "B"), help="drop rows where field A < field B")
    augment.add_argument("--inference", action="store_true", help="condition prompts on one goal instead")
    augment.add_argument("--goal", type=float, default=None, help="the --inference goal (default --scale-max)")
    augment.add_argument("--nosys", action="store_true", help="prefix the first user turn, not a system message")
    augment.set_defaults(run=_checked(_reward_augment))

    buckets = transforms.add_parser("buckets", help="quality-level conditioning (NoC): score -> k levels",
                                    description="Discretise a per-row score into k levels and write the level "
                                    "into the prompt; the bin edges are saved next to --out (OUT.buckets.json). "
                                    "With --inference, every prompt gets one level (default the top, k-1).")
    _io_arguments(buckets)
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
    buckets.set_defaults(run=_checked(_buckets))

    direction = transforms.add_parser("direction", help="direction conditioning (DPA): attribute weights in the "
                                      "system prompt", description="Write w = round(100·v), v a unit vector (cos θ, "
                                      "sin θ) or normalized --weights, into DPA's system prompt.")
    _io_arguments(direction)
    how = direction.add_mutually_exclusive_group(required=True)
    how.add_argument("--angle", type=float, help="θ in degrees (0: all helpfulness; DPA suggests -45..45)")
    how.add_argument("--weights", type=float, nargs="+", help="one weight per attribute (normalized)")
    how.add_argument("--angle-field", help="a field holding each row's angle in degrees")
    direction.add_argument("--attributes", nargs="+", default=["helpfulness", "verbosity"])
    direction.add_argument("--nosys", action="store_true", help="prefix the first user turn, not a system message")
    direction.set_defaults(run=_checked(_direction))

    soup = transforms.add_parser("soup", help="average N models' weights into one (SALSA reference)",
                                 description="Write a model whose weights are the weighted average of --models' "
                                 "weights (uniform by default); use it as reference.model=OUT.")
    soup.add_argument("--models", nargs="+", required=True, metavar="MODEL")
    soup.add_argument("--weights", nargs="+", type=float, default=None, help="one per model (normalized to sum 1)")
    soup.add_argument("--out", required=True, help="output model folder")
    soup.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    soup.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    soup.set_defaults(run=_checked(_soup))


def _checked(run):
    """Report a ValueError about the arguments (not the data: DataError goes to `main`) as exit status 2."""
    def wrapped(args: argparse.Namespace) -> int:
        from alignkit.data import DataError

        try:
            return run(args)
        except DataError:
            raise
        except ValueError as err:
            name = f"{args.verb} {getattr(args, 'transform', '')}".strip()
            print(f"alignkit {name}: error: {err}", file=sys.stderr)
            return 2
    return wrapped


def _read(args: argparse.Namespace) -> list:
    """The input records, after checking that --out is a new file (before any slow work)."""
    from alignkit.data import load_records
    from alignkit.data.writing import check_output

    check_output(args.out, [args.data], overwrite=args.overwrite)
    return load_records(args.data)


def _write(args: argparse.Namespace, rows: list[dict]) -> None:
    from alignkit.data.writing import write_jsonl

    write_jsonl(rows, args.out, inputs=[args.data], overwrite=args.overwrite)
    print(f"wrote {len(rows)} rows to {args.out}")


def _sample(args: argparse.Namespace) -> int:
    from alignkit.decode.sampling import checked_prompts, default_device, sample_completions
    from alignkit.models import load

    records = _read(args)
    prompts = checked_prompts(records, args.prompt_field)
    model, tokenizer, _ = load(args.model)
    model.to(default_device())
    samples = sample_completions(model, tokenizer, prompts, k=args.k, max_new_tokens=args.max_new_tokens,
                                 temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size,
                                 seed=args.seed)
    rows = [{**record.data, "samples": [[{"role": "assistant", "content": text}] for text in texts]
             if isinstance(prompt, list) else texts} for record, prompt, texts in zip(records, prompts, samples)]
    _write(args, rows)
    return 0


def _score(args: argparse.Namespace) -> int:
    from alignkit.decode.sampling import score_completions

    records = _read(args)
    scores = score_completions(args.models, records, field=args.field, prompt_field=args.prompt_field,
                               batch_size=args.batch_size, max_length=args.max_length)
    rows = [{**record.data, "scores": mean, "scores_sum": total}
            for record, mean, total in zip(records, scores.mean, scores.sum)]
    _write(args, rows)
    print(f"scores[i] / scores_sum[i]: mean / summed completion log-prob under {', '.join(args.models)} (in order)")
    return 0


def _reward_augment(args: argparse.Namespace) -> int:
    from alignkit.data.transforms import goal_condition, reward_augment

    records = _read(args)
    if args.inference:
        rows = goal_condition(records, args.goal, scale_max=args.scale_max, nosys=args.nosys)
    else:
        rows = reward_augment(records, args.chosen_score, args.rejected_score, scale_max=args.scale_max,
                              nosys=args.nosys, keep_if_ordered=tuple(args.keep_if_ordered or ()) or None)
    _write(args, rows)
    return 0


def _buckets(args: argparse.Namespace) -> int:
    import json

    from alignkit.data.transforms import quality_buckets, quality_condition, quality_text
    from alignkit.data.writing import sidecar_path, write_json

    records = _read(args)
    if args.inference:
        _write(args, quality_condition(records, args.k, args.level, args.style, nosys=args.nosys))
        return 0
    edges = json.loads(open(args.edges, encoding="utf-8").read())["edges"] if args.edges else None
    rows, edges = quality_buckets(records, args.score_field, args.k, args.strategy, args.style, edges=edges,
                                  nosys=args.nosys)
    _write(args, rows)
    k = len(edges) - 1
    write_json({"score_field": args.score_field, "k": k, "strategy": args.strategy, "style": args.style,
                "edges": edges, "inference_level": k - 1, "inference_text": quality_text(k - 1, k, args.style),
                "level": "searchsorted(edges[1:-1], score, side='right')"}, sidecar_path(args.out, "buckets"))
    print(f"bin edges written to {sidecar_path(args.out, 'buckets')}")
    return 0


def _direction(args: argparse.Namespace) -> int:
    from alignkit.data.transforms import direction_condition

    rows = direction_condition(_read(args), args.angle, weights=args.weights, angle_field=args.angle_field,
                               attributes=args.attributes, nosys=args.nosys)
    _write(args, rows)
    return 0


def _soup(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from alignkit.data.writing import OutputPathError
    from alignkit.models.soup import save_soup

    out = Path(args.out).resolve()
    if any(out == Path(model).resolve() for model in args.models):
        raise OutputPathError(f"{args.out}: is one of --models; write the soup to a new folder")
    if out.exists() and not args.overwrite:
        raise OutputPathError(f"{args.out}: already exists; choose a new folder or pass --overwrite")
    save_soup(args.models, args.out, args.weights, dtype=getattr(torch, args.dtype))
    print(f"wrote the soup of {len(args.models)} models to {args.out} (use it as reference.model={args.out})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    from alignkit.data import DataError
    from alignkit.models import ModelLoadError
    from alignkit.train.config import ConfigError

    try:
        return args.run(args)
    except (ConfigError, DataError, ModelLoadError, FileNotFoundError, FileExistsError) as err:
        print(f"alignkit {args.verb}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
