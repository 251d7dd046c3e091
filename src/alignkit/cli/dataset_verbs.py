"""The dataset verbs of `alignkit`: `sample`, `score` and `data ...` (parsers and handlers).

    alignkit sample --model smollm2-135m-instruct --data prompts.jsonl --k 4 --out samples.jsonl
    alignkit score --models A B --data sft.jsonl --out scored.jsonl
    alignkit score --reward verifier:max_words=50 --data sft.jsonl --reference-samples samples.jsonl --out r.jsonl
    alignkit data reward-augment --data prefs.jsonl --out goals.jsonl

Each reads one dataset and writes a new one (`alignkit.data.writing`: atomic, never over its input).
`alignkit.cli.main` adds them to its parser with `add_dataset_verbs`.
"""

from __future__ import annotations

import argparse
import sys

SAMPLE_EPILOG = """\
each output row is the input row plus `samples`: K completions of its prompt (strings for string
prompts; one-message lists [{"role": "assistant", "content": ...}] for message-list prompts), which
is the `samples` data format that D2O trains on (with the row's `rejected`), for example:
  alignkit sample --model smollm2-135m-instruct --data negatives.jsonl --k 4 --out d2o.jsonl
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

RAW = argparse.RawDescriptionHelpFormatter


def _io_arguments(parser: argparse.ArgumentParser, what: str = "rows") -> None:
    parser.add_argument("--data", required=True, help=f"input {what}: JSONL/JSON/Parquet/CSV or a save_to_disk folder")
    parser.add_argument("--out", required=True, help="output .jsonl file (a new file; never the input)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")


def add_dataset_verbs(verbs: argparse._SubParsersAction) -> None:
    """Add `sample`, `score` and `data` (with its transforms) to the `alignkit` subcommands."""
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

    score = verbs.add_parser("score", help="completion log-likelihoods under models (PoFT), or rewards (InfAlign)",
                             description="Score each row's completion given its prompt: its log-likelihood under "
                             "every --models, or its --reward (optionally calibrated against reference samples).",
                             epilog=SCORE_EPILOG, formatter_class=RAW)
    what = score.add_mutually_exclusive_group(required=True)
    what.add_argument("--models", nargs="+", metavar="MODEL", help="one or more models (writes scores, scores_sum)")
    what.add_argument("--reward", metavar="SPEC", help="a reward spec, e.g. verifier:max_words=50 or "
                      "classifier:runs/rm/final (writes reward; see below)")
    _io_arguments(score, "rows with a prompt and a completion")
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
    score.set_defaults(run=_checked(_score))

    data = verbs.add_parser("data", help="dataset transforms: reward-augment, buckets, direction, soup, udm",
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

    udm = transforms.add_parser("udm", help="BCO's prompt density-ratio weights (UDM) as `scores`",
                                description="Underlying distribution matching for BCO (arXiv 2404.04656): embed "
                                "every row's prompt with --model, fit a desirable-vs-undesirable prompt classifier, "
                                "and write each row with scores = [w(x)].", epilog=UDM_EPILOG, formatter_class=RAW)
    udm.add_argument("--model", required=True, help="embedding model: name, HF folder, .gguf file or hub id")
    _io_arguments(udm, "unpaired rows (prompt, label)")
    udm.add_argument("--prompt-field", default="prompt")
    udm.add_argument("--label-field", default="label", help="true = desirable, false = undesirable")
    udm.add_argument("--sample-size", type=int, default=1024,
                     help="prompts per side the classifier is fit on (default 1024, as TRL's prompt_sample_size)")
    udm.add_argument("--min-ratio", type=float, default=0.5, help="lower clamp of w(x) (default 0.5)")
    udm.add_argument("--max-ratio", type=float, default=10.0, help="upper clamp of w(x) (default 10)")
    udm.add_argument("--batch-size", type=int, default=8, help="prompts per forward pass")
    udm.add_argument("--seed", type=int, default=0, help="seed of the --sample-size sample")
    udm.set_defaults(run=_checked(_udm))


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

    check_output(args.out, _inputs(args), overwrite=args.overwrite)
    return load_records(args.data)


def _inputs(args: argparse.Namespace) -> list[str]:
    """The files a verb reads (never overwritten): --data, and --reference-samples where given."""
    extra = getattr(args, "reference_samples", None)
    return [args.data] + ([extra] if extra else [])


def _write(args: argparse.Namespace, rows: list[dict]) -> None:
    from alignkit.data.writing import write_jsonl

    write_jsonl(rows, args.out, inputs=_inputs(args), overwrite=args.overwrite)
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

    if args.reward is not None:
        return _score_reward(args)
    if args.reference_samples or args.transform != "none" or args.n is not None:
        raise ValueError("--reference-samples, --transform and --n go with --reward, not --models")
    records = _read(args)
    scores = score_completions(args.models, records, field=args.field, prompt_field=args.prompt_field,
                               batch_size=args.batch_size, max_length=args.max_length)
    rows = [{**record.data, "scores": mean, "scores_sum": total}
            for record, mean, total in zip(records, scores.mean, scores.sum)]
    _write(args, rows)
    print(f"scores[i] / scores_sum[i]: mean / summed completion log-prob under {', '.join(args.models)} (in order)")
    return 0


def _score_reward(args: argparse.Namespace) -> int:
    """`alignkit score --reward SPEC [--reference-samples FILE]`: raw and calibrated rewards per row."""
    from alignkit.data import DataError
    from alignkit.decode.sampling import default_device, scoring_examples
    from alignkit.models.rewards.calibration import EmpiricalCDF, best_of_n, worst_of_n
    from alignkit.models.rewards.spec import reward_from_spec

    if args.reference_samples is None and (args.transform != "none" or args.n is not None):
        raise ValueError("--transform and --n apply to the calibrated reward: pass --reference-samples too")
    if args.transform != "none" and (args.n is None or args.n < 1):
        raise ValueError(f"--transform {args.transform} needs --n N with N >= 1")
    if args.transform == "none" and args.n is not None:
        raise ValueError("--n needs --transform best_of_n or worst_of_n")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    records = _read(args)
    examples = scoring_examples(records, args.field, args.prompt_field)
    reference = None
    if args.reference_samples is not None:
        reference = _reference_samples(args.reference_samples, args.prompt_field)
        missing = [f"{example.where}: prompt {_short(example.prompt)} has no reference samples in "
                   f"{args.reference_samples}" for example in examples if _prompt_key(example.prompt) not in reference]
        if missing:
            raise DataError.from_problems(missing)

    device = str(default_device())
    reward = reward_from_spec(args.reward, batch_size=args.batch_size, device=device,
                              max_length=args.max_length)
    if reference is not None and reward.attributes:
        raise ValueError(f"calibration needs a scalar reward, but {args.reward} has {len(reward.attributes)} "
                         f"attributes {list(reward.attributes)}")
    values = reward([e.prompt for e in examples], [e.chosen for e in examples]).float()
    rows = [{**record.data, "reward": value} for record, value in zip(records, values.tolist())]

    if reference is not None:
        pairs = [(prompt, sample) for prompt, samples in reference.values() for sample in samples]
        ref_values = reward([p for p, _ in pairs], [c for _, c in pairs]).float().tolist()
        fitted, start = [], 0
        for prompt, samples in reference.values():
            fitted.append((prompt, ref_values[start:start + len(samples)]))
            start += len(samples)
        cdf = EmpiricalCDF(tie=args.tie, unseen="error").fit(fitted)
        try:
            calibrated = cdf.calibrate([e.prompt for e in examples], values)
        except KeyError as err:  # checked above; kept as a guard
            raise DataError(str(err)) from None
        transformed = {"best_of_n": best_of_n, "worst_of_n": worst_of_n}.get(args.transform)
        extra = transformed(calibrated, args.n).tolist() if transformed else None
        for i, (row, u) in enumerate(zip(rows, calibrated.tolist())):
            row["reward_calibrated"] = u
            if extra is not None:
                row["reward_transformed"] = extra[i]
    replaced = sum("reward" in record.data for record in records)
    _write(args, rows)
    if replaced:
        print(f"replaced the existing `reward` of {replaced} rows", file=sys.stderr)
    shape = f"a list of {len(reward.attributes)} ({', '.join(reward.attributes)})" if reward.attributes else "a float"
    print(f"reward: {args.reward} ({shape} per row)")
    if reference is not None:
        n_samples = sum(len(samples) for _, samples in reference.values())
        print(f"reward_calibrated: empirical CDF (tie {args.tie}) over {n_samples} reference samples of "
              f"{len(reference)} prompts" + (f"; reward_transformed: {args.transform}, n={args.n}"
                                             if args.transform != "none" else ""))
    return 0


def _prompt_key(prompt) -> str:
    from alignkit.models.rewards.calibration import _key

    return _key(prompt)


def _short(prompt) -> str:
    import json

    text = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _reference_samples(path: str, prompt_field: str) -> dict:
    """prompt key -> (prompt, [completions]) from `alignkit sample` rows; samples of repeated prompts are pooled.

    A string sample of a message-list prompt becomes one assistant message, as in `alignkit sample`."""
    from alignkit.data import load_records
    from alignkit.data.errors import raise_if_any
    from alignkit.decode.sampling import checked_prompts

    records = load_records(path)
    prompts = checked_prompts(records, prompt_field)
    reference: dict = {}
    problems = []
    for record, prompt in zip(records, prompts):
        samples = record.data.get("samples")
        if not isinstance(samples, list) or not samples:
            problems.append(f"{record.where}, field 'samples': "
                            + ("missing" if samples is None else "expected a non-empty list of completions"))
            continue
        converted = []
        for j, sample in enumerate(samples):
            if isinstance(sample, str) and isinstance(prompt, list):
                sample = [{"role": "assistant", "content": sample}]
            if not (isinstance(sample, str) or isinstance(sample, list) and isinstance(prompt, list)
                    and all(isinstance(m, dict) for m in sample)):
                problems.append(f"{record.where}, samples[{j}]: expected a string"
                                + (" or a message list" if isinstance(prompt, list) else " (the prompt is a string)"))
                break
            converted.append(sample)
        else:
            reference.setdefault(_prompt_key(prompt), (prompt, []))[1].extend(converted)
    raise_if_any(problems)
    return reference


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


def _labels(records: list, field: str) -> list[bool]:
    """Each record's boolean label; every bad row in one DataError."""
    from alignkit.data.errors import raise_if_any

    labels, problems = [], []
    for record in records:
        label = record.data.get(field)
        if isinstance(label, bool):
            labels.append(label)
        else:
            problems.append(f"{record.where}, field '{field}': "
                            + ("missing" if label is None else f"expected true or false, got {label!r}"))
    raise_if_any(problems)
    return labels


def _udm(args: argparse.Namespace) -> int:
    import json
    import random

    from alignkit.data import DataError
    from alignkit.decode.sampling import checked_prompts, default_device
    from alignkit.models import load
    from alignkit.models.embeddings import prompt_embeddings
    from alignkit.objectives.udm import density_ratio_weights

    if args.sample_size < 1 or args.batch_size < 1:
        raise ValueError(f"--sample-size and --batch-size must be at least 1, got {args.sample_size}, "
                         f"{args.batch_size}")
    if not 0 < args.min_ratio <= args.max_ratio:
        raise ValueError(f"need 0 < --min-ratio <= --max-ratio, got {args.min_ratio}, {args.max_ratio}")
    records = _read(args)
    prompts = checked_prompts(records, args.prompt_field)
    labels = _labels(records, args.label_field)
    desirable = [i for i, label in enumerate(labels) if label]
    undesirable = [i for i, label in enumerate(labels) if not label]
    if not desirable or not undesirable:
        raise DataError(f"{args.data}: UDM needs rows with {args.label_field} true and rows with false, got "
                        f"{len(desirable)} true and {len(undesirable)} false")
    rng = random.Random(args.seed)
    fit_desirable = sorted(rng.sample(desirable, min(args.sample_size, len(desirable))))
    fit_undesirable = sorted(rng.sample(undesirable, min(args.sample_size, len(undesirable))))

    # identical prompts (common in unpaired data) are embedded once
    keys = [json.dumps(prompt, sort_keys=True, ensure_ascii=False) for prompt in prompts]
    distinct: dict[str, int] = {}  # prompt key -> row index of its first occurrence
    for index, key in enumerate(keys):
        distinct.setdefault(key, index)
    position = {key: i for i, key in enumerate(distinct)}
    model, tokenizer, _ = load(args.model)
    model.to(default_device())
    embedded = prompt_embeddings(model, tokenizer, [prompts[index] for index in distinct.values()], args.batch_size)
    embeddings = embedded[[position[key] for key in keys]]
    weights = density_ratio_weights(embeddings[fit_desirable], embeddings[fit_undesirable], embeddings,
                                    min_ratio=args.min_ratio, max_ratio=args.max_ratio)
    replaced = sum("scores" in record.data for record in records)
    rows = [{**record.data, "scores": [float(weight)]} for record, weight in zip(records, weights.tolist())]
    _write(args, rows)
    if replaced:
        print(f"replaced the existing `scores` of {replaced} rows", file=sys.stderr)
    print(f"w(x) fit on {len(fit_desirable)} desirable and {len(fit_undesirable)} undesirable prompts "
          f"({len(distinct)} distinct prompts embedded): min {weights.min():.3g}, mean {weights.mean():.3g}, "
          f"max {weights.max():.3g}; train on it with objective.name=bco_udm")
    return 0
