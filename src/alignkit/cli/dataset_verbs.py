"""`alignkit sample` and `alignkit score`: run a model or a reward over a dataset, write a new one.

    alignkit sample --model smollm2-135m-instruct --data prompts.jsonl --k 4 --out samples.jsonl
    alignkit score --models A B --data sft.jsonl --out scored.jsonl
    alignkit score --reward verifier:max_words=50 --data sft.jsonl --reference-samples samples.jsonl --out r.jsonl

Each handler checks its arguments, calls one function of `alignkit.pipelines`, and writes the rows.
"""

from __future__ import annotations

import argparse

from alignkit.cli.common import RAW, io_arguments, read_rows, require, write_rows
from alignkit.cli.generate_verb import add_chat_template_options

SAMPLE_EPILOG = """\
each output row is the input row plus `samples`: K completions of its prompt (strings for string
prompts; one-message lists [{"role": "assistant", "content": ...}] for message-list prompts), which
is the `samples` data format that D2O trains on (with the row's `rejected`), for example:
  alignkit sample --model smollm2-135m-instruct --data negatives.jsonl --k 4 --out d2o.jsonl

chat templates: the model reads every prompt through its chat template, a string prompt as one user
message. Training (D2O included) tokenizes string prompts as raw text, so for string-prompt data meant
for training with raw prompts pass --no-chat-template: the samples are then drawn from the raw prompt
that training sees. Message-list prompts are unaffected (the template is used in training too). A model
without a chat template needs --chat-template chatml|zephyr|FILE or --no-chat-template.
"""

SCORE_EPILOG = """\
with --models, each output row is the input row plus `scores` (the per-token mean log-prob of the
completion under each --models, in that order) and `scores_sum` (the summed log-prob). Every model
tokenizes with its own tokenizer and chat template. PoFT trains on `scores`, for example:
  alignkit score --models aligned-a aligned-b --data sft.jsonl --out sft_scored.jsonl

with --reward SPEC, each output row is the input row plus `reward`: a float, or a list of k floats
for a reward model with k attributes. SPEC is one of
  classifier:PATH               a Hugging Face sequence-classification folder (e.g. an rm_pairwise
                                run's final/ folder)
  judge:MODEL                   an LLM judge: the expected 1..10 score under MODEL's next-token probs
  verifier:max_words=N          1 if the completion has 1..N words, else 0 (also min_words=N,
                                max_chars=N)
  verifier:required_words=a,b   1 if every word occurs (also forbidden_words=a,b)
  verifier:json                 1 if the completion parses as JSON (json_schema=FILE: and fits FILE)
  verifier:refusal              1 if the completion refuses or apologises
  verifier:regex=PATTERN        1 if PATTERN is found in the completion
  verifier:checks=FILE          1 if the completion passes its prompt's `check` in FILE (rows
                                {prompt, check}, like the demo's held-out set)

calibration (InfAlign): --reference-samples FILE takes rows {prompt, samples: [completions]}, the
output of `alignkit sample` from the reference policy. For each prompt the reward of its samples
gives an empirical CDF, and each row also gets `reward_calibrated` = the fraction of reference
samples scoring below its reward (ties count half with --tie mid, fully with --tie right), in [0, 1].
--transform best_of_n --n N adds `reward_transformed` = calibrated^N (worst_of_n: 1-(1-calibrated)^N).
Every row's prompt must appear in FILE (same --prompt-field, identical text or messages). Example:
  alignkit sample --model sft-model --data prompts.jsonl --k 16 --out ref.jsonl
  alignkit score --reward classifier:runs/rm/final --data policy.jsonl --reference-samples ref.jsonl \\
      --transform best_of_n --n 4 --out policy_rewards.jsonl
"""


def add_dataset_verbs(verbs: argparse._SubParsersAction) -> None:
    """Add `sample` and `score` to the `alignkit` subcommands."""
    _add_sample(verbs)
    _add_score(verbs)


def _add_sample(verbs: argparse._SubParsersAction) -> None:
    sample = verbs.add_parser("sample", help="K sampled completions per prompt (the self-samples of D2O, distributional dispreference optimization)",
                              epilog=SAMPLE_EPILOG, formatter_class=RAW,
                              description="Sample K completions of every prompt from a model (batched, KV cache).")
    sample.add_argument("--model", required=True, help="model name, HF folder, .gguf file or hub id")
    io_arguments(sample, "rows with a prompt")
    sample.add_argument("--k", type=int, default=4, help="completions per prompt (default 4)")
    sample.add_argument("--max-new-tokens", type=int, default=128)
    sample.add_argument("--temperature", type=float, default=1.0, help="1 samples the model as is; 0 is greedy")
    sample.add_argument("--top-p", type=float, default=1.0)
    sample.add_argument("--batch-size", type=int, default=8, help="prompts per generate call (each with k samples)")
    sample.add_argument("--seed", type=int, default=0, help="same seed, data and batch size: same samples")
    sample.add_argument("--prompt-field", default="prompt")
    add_chat_template_options(sample)
    sample.set_defaults(run=_sample)


def _add_score(verbs: argparse._SubParsersAction) -> None:
    score = verbs.add_parser("score", help="completion log-likelihoods under models (PoFT, preference-oriented fine-tuning), or rewards "
                             "(calibrated as in InfAlign, inference-aware alignment)",
                             description="Score each row's completion given its prompt: its log-likelihood under "
                             "every --models, or its --reward (optionally calibrated against reference samples).",
                             epilog=SCORE_EPILOG, formatter_class=RAW)
    what = score.add_mutually_exclusive_group(required=True)
    what.add_argument("--models", nargs="+", metavar="MODEL", help="one or more models (writes scores, scores_sum)")
    what.add_argument("--reward", metavar="SPEC", help="a reward spec, e.g. verifier:max_words=50 or "
                      "classifier:runs/rm/final (writes reward; see below)")
    io_arguments(score, "rows with a prompt and a completion")
    score.add_argument("--field", default="completion", help="the completion field to score (default completion)")
    score.add_argument("--prompt-field", default="prompt")
    score.add_argument("--batch-size", type=int, default=8)
    score.add_argument("--max-length", type=int, default=None, help="truncate longer rows (keeps the prompt's end)")
    score.add_argument("--reference-samples", metavar="FILE", help="with --reward: rows {prompt, samples} from "
                       "`alignkit sample` of the reference policy; adds reward_calibrated")
    score.add_argument("--tie", choices=("mid", "right"), default="mid", help="calibration ties: count half (mid, "
                       "default) or fully (right)")
    score.add_argument("--transform", choices=("none", "best_of_n", "worst_of_n"), default="none",
                       help="with --reference-samples: add reward_transformed = u^n (best_of_n) or 1-(1-u)^n "
                       "(worst_of_n) of the calibrated u")
    score.add_argument("--n", type=int, default=None, help="the n of --transform")
    score.set_defaults(run=_score)


def _sample(args: argparse.Namespace) -> int:
    from alignkit.pipelines import sample_rows

    rows = sample_rows(read_rows(args), args.model, k=args.k, max_new_tokens=args.max_new_tokens,
                       temperature=args.temperature, top_p=args.top_p, batch_size=args.batch_size, seed=args.seed,
                       prompt_field=args.prompt_field, chat_template=args.chat_template)
    write_rows(args, rows)
    return 0


def _score(args: argparse.Namespace) -> int:
    from alignkit.pipelines import likelihood_rows

    if args.reward is not None:
        return _score_reward(args)
    require(not (args.reference_samples or args.transform != "none" or args.n is not None),
            "--reference-samples, --transform and --n go with --reward, not --models")
    rows = likelihood_rows(read_rows(args), args.models, field=args.field, prompt_field=args.prompt_field,
                           batch_size=args.batch_size, max_length=args.max_length)
    write_rows(args, rows)
    print(f"scores[i] / scores_sum[i]: mean / summed completion log-prob under {', '.join(args.models)} (in order)")
    return 0


def _score_reward(args: argparse.Namespace) -> int:
    """`alignkit score --reward SPEC [--reference-samples FILE]`: raw and calibrated rewards per row."""
    import sys

    from alignkit.pipelines import read_reference_samples, reward_rows

    transform = None if args.transform == "none" else args.transform
    require(args.reference_samples is not None or (transform is None and args.n is None),
            "--transform and --n apply to the calibrated reward: pass --reference-samples too")
    require(transform is None or (args.n is not None and args.n >= 1), f"--transform {transform} needs --n N with N >= 1")
    require(transform is not None or args.n is None, "--n needs --transform best_of_n or worst_of_n")
    require(args.batch_size >= 1, f"--batch-size must be at least 1, got {args.batch_size}")
    records = read_rows(args)
    references = (read_reference_samples(args.reference_samples, args.prompt_field)
                  if args.reference_samples is not None else None)
    rows = reward_rows(records, args.reward, field=args.field, prompt_field=args.prompt_field, references=references,
                       reference_source=args.reference_samples or "", tie=args.tie, transform=transform, n=args.n,
                       batch_size=args.batch_size, max_length=args.max_length)
    replaced = sum("reward" in record.data for record in records)
    write_rows(args, rows)
    if replaced:
        print(f"replaced the existing `reward` of {replaced} rows", file=sys.stderr)
    print(f"reward: {args.reward}")
    if references is not None:
        print(f"reward_calibrated: empirical CDF (tie {args.tie}) over {sum(len(s) for _, s in references)} "
              f"reference samples of {len(references)} prompts"
              + (f"; reward_transformed: {transform}, n={args.n}" if transform else ""))
    return 0
