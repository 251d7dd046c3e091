"""`alignkit <verb>`: the command line.

    alignkit train --config recipes/dpo_smollm2.yaml objective.params.beta=0.2 max_steps=50
    alignkit evaluate --model smollm2-135m-instruct --model runs/demo/final
    alignkit objectives
    alignkit loop --config recipes/loops/rsf_dpa_smollm2.yaml
    alignkit sample --model smollm2-135m-instruct --data prompts.jsonl --k 4 --out samples.jsonl
    alignkit score --models A B --data sft.jsonl --out scored.jsonl
    alignkit data reward-augment --data prefs.jsonl --out goals.jsonl
    alignkit generate --method best_of_n --model smollm2-135m-instruct --reward verifier:max_words=30 --prompts p.txt --out o.jsonl
    alignkit represent align --source glove --target smollm2-135m-instruct --out words.json
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap

from alignkit.cli.analyze_verb import add_analyze_verb
from alignkit.cli.data_verbs import add_data_verbs
from alignkit.cli.dataset_verbs import add_dataset_verbs
from alignkit.cli.eval_verb import add_eval_verb
from alignkit.cli.export_verb import add_export_verb
from alignkit.cli.generate_verb import add_generate_verb
from alignkit.cli.loop_verb import add_loop_verb
from alignkit.cli.recipes_verb import add_recipes_verb
from alignkit.cli.report_verb import add_report_verb
from alignkit.cli.represent_verb import add_represent_verb

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
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks with errors")
    parser.add_argument("--version", action="version", version=f"alignkit {_version()}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    train = verbs.add_parser("train", help="train a model with a preference objective (DPO, ...)",
                             description="Train a model from a YAML recipe; key=value arguments override it.",
                             epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("--config", help="YAML recipe (see recipes/); defaults are used for keys it omits")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, dotted keys")
    train.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    train.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    train.set_defaults(run=_train)

    from alignkit.cli.generate_verb import add_chat_template_options

    evaluate = verbs.add_parser("evaluate", help="instruction-following pass rates of one or more models",
                                description="Greedy completions of held-out prompts, scored by programmatic "
                                            "checks; with two models, a before/after table. Every prompt (a "
                                            "string as one user message) goes through each model's chat "
                                            "template; see --chat-template and --no-chat-template.")
    evaluate.add_argument("--model", action="append", required=True,
                          help="model to evaluate (repeat: the first is 'before', the second 'after')")
    evaluate.add_argument("--data", default=None, help="held-out rows JSONL (default: the shipped demo set)")
    evaluate.add_argument("--max-new-tokens", type=int, default=96)
    evaluate.add_argument("--batch-size", type=int, default=16)
    evaluate.add_argument("--output", help="write per-row completions and results as JSONL here")
    add_chat_template_options(evaluate)
    evaluate.set_defaults(run=_evaluate)

    objectives = verbs.add_parser("objectives", help="list the registered training objectives",
                                  description="List every training objective: its one-line formula, the data "
                                  "format it trains on, whether it needs a reference model, whether it sums or "
                                  "averages token log-probs, its parameters with their defaults, and its source "
                                  "(paper and code). Set one with objective.name=NAME objective.params.KEY=VALUE.")
    objectives.set_defaults(run=_objectives)
    add_dataset_verbs(verbs)
    add_data_verbs(verbs)
    add_generate_verb(verbs)
    add_eval_verb(verbs)
    add_analyze_verb(verbs)
    add_report_verb(verbs)
    add_export_verb(verbs)
    add_recipes_verb(verbs)
    add_loop_verb(verbs)
    add_represent_verb(verbs)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("alignkit")
    except PackageNotFoundError:  # running from a source tree that was not installed
        return "unknown (not installed)"


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

    from alignkit.data.prompts import resolve_chat_template
    from alignkit.eval.instructions import evaluate_instructions, format_comparison, load_heldout
    from alignkit.models import load

    if len(args.model) > 2:
        raise SystemExit("evaluate: give one model, or two (before and after)")
    chat_template = resolve_chat_template(args.chat_template)  # a missing FILE is reported before any model loads
    rows = load_heldout(args.data)
    reports = []
    for name in args.model:
        model, tokenizer, _ = load(name)
        model.eval()
        report = evaluate_instructions(model, tokenizer, rows, max_new_tokens=args.max_new_tokens,
                                       batch_size=args.batch_size, chat_template=chat_template)
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
        logps = "per token" if objective.per_token else objective.logps
        data = objective.data_format + (" (sampled online)" if objective.data_format == "prompts" else "")
        print(textwrap.indent(f"data: {data}; {reference}; log-probs: {logps}; "
                              f"defaults: {objective.defaults}\nsource: {objective.source}", " " * 13))
    return 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The arguments; `train`'s KEY=VALUE overrides may come anywhere, also after a flag (`--resume max_steps=30`)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [item for item in extra if "=" in item and not item.startswith("-")] if args.verb == "train" else []
    if len(overrides) != len(extra):
        parser.error(f"unrecognized arguments: {' '.join(item for item in extra if item not in overrides)}")
    if overrides:
        args.overrides = [*args.overrides, *overrides]
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what reports show as the command that made them
    return args


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' and the hub's bars; read at import
    if "transformers" in sys.modules:  # imported already (an in-process caller): the variable comes too late
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    args = parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except Exception as err:
        code = _reported(args, err)
        if code is None or args.verbose:
            raise
        return code


def _reported(args: argparse.Namespace, err: Exception) -> int | None:
    """Print a one-line message for an error the user can act on and return the exit status (3: a run stopped
    on a NaN or inf, its last checkpoint intact; 2: bad arguments, data, config or model); None for anything
    else (a bug: the traceback is shown). The error classes are imported here, not at start-up."""
    from alignkit.models.loading import ModelLoadError
    from alignkit.represent.packages import MissingExtra
    from alignkit.train.guard import NonFiniteError

    verb = " ".join(filter(None, (args.verb, getattr(args, "subverb", None))))
    if isinstance(err, NonFiniteError):
        print(f"alignkit {verb}: stopped: {err}", file=sys.stderr)
        return 3
    if isinstance(err, (ValueError, KeyError, ModelLoadError, MissingExtra, FileNotFoundError, FileExistsError)):
        # DataError, ConfigError and OutputPathError are among these
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"alignkit {verb}: error: {message}", file=sys.stderr)
        return 2
    return None


if __name__ == "__main__":
    sys.exit(main())
