"""A loop round's short evaluation, by `eval.kind`:

* `checks` — greedy answers to held-out prompts (default: the demo's 64) scored by their instruction checks and
  for substance, as `make demo` reports them (`alignkit.eval.instructions`);
* `honesty` — prudence, over-conservativeness and the honesty score on held-out questions against the starting
  model's answers under the typical QA prompt (`alignkit.eval.honesty`, Yang et al., arXiv 2312.07000);
* `directions` — DPA's arithmetic control: for each angle θ of `eval.angles` the held-out prompts with the
  direction (cos θ, sin θ) in the system prompt, the mean greedy answer length in words, and the Spearman
  correlation between angle and length (Wang et al., arXiv 2402.18571, Fig. 1);
* `length` — greedy answers to held-out prompts that each state one required length (default: 20 shipped
  tasks), scored by the LongBench-Write length score S_l (Chen et al., arXiv 2410.10210; `long_output`): the
  mean S_l, how many reach the curation threshold `params.min_score` (80), the mean ratio of produced to
  required length;
* `none`.
Each result is written once (`eval.json` in the round's folder) and read back on resume.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from alignkit.data import load_records
from alignkit.data.prompts import as_messages
from alignkit.data.transforms import condition_prompt, direction_text, direction_weights
from alignkit.data.writing import write_json
from alignkit.decode.sampling import draw_samples
from alignkit.eval.honesty import greedy_answers, result_of
from alignkit.eval.instructions import PASSED_SUBSTANTIVE, SUBSTANTIVE, TOTAL, evaluate_instructions, load_heldout
from alignkit.loops.config import LoopConfig
from alignkit.loops.long_output import DEFAULTS as LENGTH_DEFAULTS
from alignkit.loops.long_output import length_score, produced_length, stage_one
from alignkit.models.loading import ensure_loaded
from alignkit.models.verifiers import read_questions, words

DEFAULT_DATA = {"checks": "builtin:demo/heldout.jsonl", "honesty": "builtin:honesty/heldout.jsonl",
                "directions": "builtin:demo/heldout.jsonl", "length": "builtin:long_output/heldout.jsonl"}
PRESET_KINDS = {"honesty": "honesty", "long_output": "length"}  # a preset's evaluation when eval.kind is unset


def eval_kind(config: LoopConfig) -> str:
    return config.eval.kind or PRESET_KINDS.get(config.preset, "checks")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ: Pearson's correlation of the ranks (ties get their mean rank); NaN if either is constant."""
    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        result = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                result[order[k]] = (i + j) / 2 + 1
            i = j + 1
        return result
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx and syy else float("nan")


def _checks(config: LoopConfig, loaded, data: str) -> dict:
    rows = load_heldout(data)[:config.eval.limit]
    report = evaluate_instructions(loaded.model, loaded.tokenizer, rows, max_new_tokens=config.eval.max_new_tokens)
    counts = {**report.counts(), **report.substance_counts()}
    return {name: list(counts[name]) for name in (TOTAL, SUBSTANTIVE, PASSED_SUBSTANTIVE) if name in counts}


def _honesty(config: LoopConfig, loaded, data: str, reference_answers: Path) -> dict:
    questions = read_questions(load_records(data)[:config.eval.limit])
    common = dict(max_new_tokens=config.eval.max_new_tokens)
    if not reference_answers.exists():  # the starting model under the typical prompt, answered once
        answers = greedy_answers(loaded.model, loaded.tokenizer, questions, prompt="typical", **common)
        write_json(answers, reference_answers)
    reference = json.loads(reference_answers.read_text())
    result = result_of(questions, greedy_answers(loaded.model, loaded.tokenizer, questions, **common), reference)
    summary = result.summary("model")
    return {name: summary[name].value for name in ("prudence", "over_conservativeness", "honesty", "accuracy", "idk")}


def _directions(config: LoopConfig, loaded, data: str) -> dict:
    rows = load_heldout(data)[:config.eval.limit]
    lengths = []
    for angle in config.eval.angles:
        text = direction_text(direction_weights(angle))
        prompts = [condition_prompt(as_messages(row["prompt"]), text) for row in rows]
        answers, _, _ = draw_samples(loaded.model, loaded.tokenizer, prompts, n=1, temperature=0,
                                     max_new_tokens=config.eval.max_new_tokens, batch_size=16)
        lengths.append(sum(len(words(a[0])) for a in answers) / len(answers))
    return {"angles": list(config.eval.angles), "mean_words": lengths,
            "spearman": spearman(list(config.eval.angles), lengths)}


def _length(config: LoopConfig, loaded, data: str) -> dict:
    asked = stage_one(load_records(data)[:config.eval.limit])
    if not asked:
        raise ValueError(f"eval.data {data}: no prompt states exactly one required length (\"N words\")")
    answers, _, _ = draw_samples(loaded.model, loaded.tokenizer, [prompt for prompt, _ in asked], n=1,
                                 temperature=0, max_new_tokens=config.eval.max_new_tokens, batch_size=16)
    produced = [produced_length(texts[0]) for texts in answers]
    scores = [length_score(x, y) for (_, x), y in zip(asked, produced)]
    threshold = {**LENGTH_DEFAULTS, **config.params}["min_score"]
    return {"mean_length_score": sum(scores) / len(scores),
            "length_score_at_least_threshold": [sum(score >= threshold for score in scores), len(scores)],
            "mean_produced_over_required": sum(y / x for (_, x), y in zip(asked, produced)) / len(asked)}


def evaluate_round(config: LoopConfig, model: str, path: Path) -> dict:
    """`model`'s evaluation (module docstring), computed once and kept in `path`."""
    kind = eval_kind(config)
    if kind == "none":
        return {}
    if path.exists():
        return json.loads(path.read_text())
    loaded = ensure_loaded(model)
    data = config.eval.data or DEFAULT_DATA[kind]
    if kind == "checks":
        result = _checks(config, loaded, data)
    elif kind == "honesty":
        result = _honesty(config, loaded, data, Path(config.output_dir) / "honesty-reference-answers.json")
    elif kind == "length":
        result = _length(config, loaded, data)
    else:
        result = _directions(config, loaded, data)
    write_json({"kind": kind, "model": model, **result}, path)
    return {"kind": kind, "model": model, **result}


def summary_table(evaluations: Mapping[str, dict]) -> str:
    """A Markdown table: one row per evaluated model (base, round-0, round-1, ...)."""
    rows = {name: {k: v for k, v in result.items() if k not in ("kind", "model")}
            for name, result in evaluations.items() if result}
    if not rows:
        return "no evaluation (eval.kind: none)\n"
    columns = list(next(iter(rows.values())))

    def cell(value) -> str:
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
            return f"{value[0]}/{value[1]}"
        if isinstance(value, list):
            return ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in value)
        return f"{value:.3f}" if isinstance(value, float) else str(value)
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell(result.get(c)) for c in columns) + " |" for name, result in rows.items()]
    return "\n".join(lines) + "\n"
