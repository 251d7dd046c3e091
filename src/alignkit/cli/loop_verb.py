"""`alignkit loop`: self-alignment rounds of sample → label → train → evaluate (`alignkit.loops`)."""

from __future__ import annotations

import argparse

EPILOG = """\
a loop config (YAML; key=value arguments override it):
  preset: rsf_dpa | spa | cyclealign | honesty | isheep | self_specialization | long_output
                                   (alignkit loop --list: each with its parameters and source)
  model: smollm2-135m-instruct     the model of round 1
  data: builtin:demo/train.jsonl   the prompt rows each round labels (questions for honesty)
  rounds: 2                        limit: N (first N rows)   seed: 0
  sample: {k: 4, max_new_tokens: 96, temperature: 1.0, top_p: 1.0, batch_size: 8}
  train: {recipe: sft_smollm2, overrides: [max_steps=20]}  (default recipe: the preset's)
  eval: {kind: checks | honesty | directions | length | none, data: FILE, limit: N}
  params: {...}                    the preset's parameters (defaults: --list)
output_dir/round-N/ holds data.jsonl (a dataset `alignkit train` reads), provenance.json, train/ and eval.json;
output_dir/summary.md the table of every round. Run the same command again to resume a stopped loop.
shipped configs: recipes/loops/*.yaml
"""


def add_loop_verb(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("loop", help="self-alignment rounds: sample, label, train, evaluate, repeat",
                              description="Run (or resume) a self-alignment loop from a YAML config.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="the loop config (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, dotted keys")
    parser.add_argument("--list", action="store_true", help="list the presets with their parameters and exit")
    parser.add_argument("--print-config", action="store_true", help="print the merged config and exit")
    parser.set_defaults(run=_loop)


def _loop(args: argparse.Namespace) -> int:
    if args.list:
        from alignkit.loops.presets import PRESETS

        for preset in PRESETS.values():
            required = "".join(f" {name}=REQUIRED" for name in preset.required)
            defaults = " ".join(f"{k}={v}" for k, v in preset.defaults.items())
            print(f"{preset.name:<12} {preset.description}\n{'':12} recipe {preset.recipe};{required} {defaults}\n"
                  f"{'':12} source: {preset.source}")
        return 0
    if not args.config and not args.overrides:
        raise ValueError("give --config loop.yaml (or key=value settings); see alignkit loop --help")
    from alignkit.loops.config import load_loop_config

    config = load_loop_config(args.config, args.overrides)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    from alignkit.loops.driver import run_loop

    result = run_loop(config)
    print(result.summary, end="")
    print(f"final model: {result.final_model}; rounds in {result.output_dir}")
    return 0
