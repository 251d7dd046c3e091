"""`alignkit eval`: policies against a reference (win rate, rewards, KL), and the evaluations under it
(`eval honesty`, `eval compliance-gap`).

    alignkit eval --policy runs/dpo/final --reference smollm2-135m-instruct --prompts builtin:demo/heldout.jsonl \\
        --out runs/dpo/eval
"""

from __future__ import annotations

import argparse
import shlex

from alignkit.cli.common import RAW
from alignkit.cli.compliance_verb import add_compliance_eval
from alignkit.cli.context_verb import add_context_eval
from alignkit.cli.generate_verb import add_chat_template_options, chat_template_choice
from alignkit.cli.honesty_verbs import add_honesty_eval

EVAL_EPILOG = """\
what it measures (alignkit.eval.compare; every interval is a 95% bootstrap over prompts, seed 0):
  win rate       per prompt, the share of (policy answer, reference answer) pairs the policy's answer
                 scores higher under a reward, ties counting 1/2; averaged over prompts
  rewards        mean reward per model (a verifier's or the prompts' checks: the pass rate)
  length         answer length in tokens and words
  KL             KL(policy || reference) per sequence and per token, from the policy's own samples at
                 temperature 1 (the evaluation samples when --temperature 1 --top-p 1, else --kl-samples
                 more), with the k1 (sum of log-ratios) and k3 (never negative) estimators
output (--out DIR): eval.json (every number), samples.jsonl (every answer and its rewards), report.md,
plots/ (reward distributions, win rates, and reward against KL when several policies are given)

rewards (--reward, repeatable): checks (each prompt row's own `check`; the default when every row has
one), verifier:NAME[=VALUE], classifier:PATH, judge:MODEL, aspects:MODEL, safety:MODEL — as in
`alignkit score --reward`.

examples:
  alignkit eval --policy runs/demo/final --reference smollm2-135m-instruct \\
      --prompts builtin:demo/heldout.jsonl --out runs/demo/eval
  alignkit eval --policy runs/demo --reference smollm2-135m-instruct --prompts prompts.jsonl \\
      --reward classifier:runs/rm/final --n 4 --temperature 1 --out runs/demo/frontier
      (a run folder stands for each of its checkpoints and its final model)
"""


def add_eval_verb(verbs: argparse._SubParsersAction) -> None:
    """Add `eval` and its sub-evaluations to the `alignkit` subcommands."""
    evaluation = verbs.add_parser("eval", help="win rate, rewards and KL of policies against a reference; "
                                               "eval honesty, eval compliance-gap, eval context",
                                  description="Compare one or more policies with a reference model on a prompt "
                                              "set; or run one of the evaluations below.",
                                  epilog=EVAL_EPILOG, formatter_class=RAW)
    evaluation.add_argument("--policy", action="append", default=[], metavar="MODEL",
                            help="a policy (repeatable): model name, folder, .gguf file or hub id, or a training "
                                 "run's folder (each checkpoint and the final model)")
    evaluation.add_argument("--reference", metavar="MODEL", help="the model the policies are compared with")
    evaluation.add_argument("--prompts", help="prompt rows (JSONL/JSON/Parquet/CSV, builtin:..., .txt, - for stdin)")
    evaluation.add_argument("--prompt-field", default="prompt", help="the prompt field of the rows (default prompt)")
    evaluation.add_argument("--reward", action="append", default=[], metavar="SPEC", help="a reward (repeatable)")
    evaluation.add_argument("--n", type=int, default=1, help="answers per prompt per model (default 1)")
    evaluation.add_argument("--best-of", type=int, default=1, metavar="N",
                            help="best-of-N decoding for the policies: of each N of their --n samples, the one the "
                                 "first --reward scores highest is the answer (the reference's stay plain samples); "
                                 "N must divide --n (default 1: off)")
    evaluation.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy")
    evaluation.add_argument("--top-p", type=float, default=1.0)
    evaluation.add_argument("--kl-samples", type=int, default=1,
                            help="temperature-1 samples per prompt for the KL when the answers are not (default 1)")
    evaluation.add_argument("--max-new-tokens", type=int, default=128)
    evaluation.add_argument("--batch-size", type=int, default=8)
    evaluation.add_argument("--seed", type=int, default=0)
    evaluation.add_argument("--out", help="output folder (a new or empty folder)")
    evaluation.add_argument("--overwrite", action="store_true", help="write into a folder that holds files")
    add_chat_template_options(evaluation)
    evaluation.set_defaults(run=_evaluate_policies, parser=evaluation)
    evals = evaluation.add_subparsers(dest="subverb", required=False, metavar="EVALUATION")
    add_honesty_eval(evals)
    add_compliance_eval(evals)
    add_context_eval(evals)


def _evaluate_policies(args: argparse.Namespace) -> int:
    missing = [flag for flag, value in (("--policy", args.policy), ("--reference", args.reference),
                                        ("--prompts", args.prompts), ("--out", args.out)) if not value]
    if missing:
        args.parser.error(f"the following arguments are required: {', '.join(missing)} "
                          "(or name an evaluation: honesty, compliance-gap)")
    from alignkit.eval.compare import SamplingSettings, compare
    from alignkit.eval.compare_report import write_evaluation
    from alignkit.eval.inputs import CHECKS, build_rewards, expand_policies, read_prompts
    from alignkit.eval.output import prepare_output
    from alignkit.models.loading import default_device

    try:
        settings = SamplingSettings(n=args.n, temperature=args.temperature, top_p=args.top_p,
                                    kl_samples=args.kl_samples, max_new_tokens=args.max_new_tokens,
                                    batch_size=args.batch_size, seed=args.seed,
                                    chat_template=chat_template_choice(args), best_of=args.best_of)
    except ValueError as err:
        args.parser.error(str(err).replace("best_of", "--best-of").replace(" n=", " --n="))
    folder = prepare_output(args.out, overwrite=args.overwrite, inputs=[args.prompts])
    prompts, records = read_prompts(args.prompts, args.prompt_field)
    policies = expand_policies(args.policy)
    rewards, pass_rates = build_rewards(args.reward, records, args.prompt_field, batch_size=args.batch_size,
                                        device=str(default_device()))
    comparison = compare(policies, args.reference, prompts, rewards, settings, pass_rates=pass_rates)
    check_rows = [record.data for record in records] if CHECKS in rewards else None
    results = write_evaluation(comparison, folder, "alignkit " + shlex.join(args.argv), check_rows)
    _print_summary(results)
    print(f"wrote {folder}/eval.json, {folder}/report.md, {folder}/samples.jsonl and {len(results['plots'])} plots")
    return 0


def _print_summary(results: dict) -> None:
    for system, table in zip(results["systems"][1:], results.get("check_tables", [])):
        print(f"checks by family: {results['systems'][0]['name']} (before) and {system['name']} (after)\n{table}")
    for k, system in enumerate(results["systems"][1:], start=1):
        kl = results["kl"][k]["k3_per_sequence"]
        print(f"{system['name']}: KL to the reference {kl['value']:.3f} nats per answer "
              f"[{kl['low']:.3f}, {kl['high']:.3f}] (k3)")
        for name, reward in results["rewards"].items():
            win = reward["win_rate"][k]
            print(f"  {name}: win rate {win['value']:.3f} [{win['low']:.3f}, {win['high']:.3f}]; "
                  f"{reward['kind']} {reward['mean'][k]['value']:.3f} vs {reward['mean'][0]['value']:.3f}")
