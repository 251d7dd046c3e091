"""Conditioning transforms: pure functions from rows (dicts or `Record`s) to new rows.

* `reward_augment` -- reward-augmented preference data (Zhang et al., arXiv 2410.08067; code
  shenao-zhang/reward-augmented-preference `scripts/reward_augmentation.py`): each pair becomes a
  positive-goal copy (goal = score of chosen) and a negative-goal copy (goal = score of rejected, chosen and
  rejected swapped); `goal_condition` conditions inference prompts on `inference_goal` (default: scale max).
* `quality_buckets` -- NoC-style quality conditioning (Kang et al., ICCV'23; kakaobrain/noc): a scalar score
  is discretised into k levels (uniform-width bins as `KBinsDiscretizer(strategy="uniform")`, or quantile
  bins) and the level is written into the prompt; `quality_condition` uses the top level at inference.
* `direction_condition` -- DPA (Wang et al., arXiv 2402.18571; RLHFlow/Directional-Preference-Alignment
  README): the system prompt names integer weights `w = round(100 · v)` of a unit vector
  `v = (cos θ, sin θ)` over (helpfulness, verbosity).

Where the text goes (`condition_prompt`): a string prompt becomes `text + "\\n\\n" + prompt`; a message
list gets `text` as a system message (put in front of an existing system message's content) or, with
`nosys` (models without a system role: the `_nosys` variant of the reference code), in front of the first
user message. Rows without a `prompt` (implicit-prompt pairs) have `chosen` and `rejected` conditioned.
Bad rows are reported together in one DataError naming the file/line (a Record's `where`) and field.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from alignkit.data.errors import DataError
from alignkit.data.records import Record
from alignkit.data.rows import RowProblem, collect, kind, number, required

log = logging.getLogger(__name__)

SEPARATOR = "\n\n"
GOAL_TEMPLATE = ("You are an assistant that generates responses for the instruction while implicitly achieving the "
                 "following target scores (on a scale of 1-{scale_max}, where 1 is lowest and {scale_max} is "
                 "highest):\nOverall score: {g}.")
DPA_TEMPLATE = ("You are a helpful, respectful, and honest assistant who always responds to the user in a harmless "
                "way. Your response should maximize weighted rating = {rating}")
QUALITY_TOKEN = "<q_{level}>"
QUALITY_SYSTEM = "Write a response of quality level {level} on a scale from 0 (lowest) to {top} (highest)."

Row = Mapping[str, Any] | Record


def _records(rows: Iterable[Row]) -> list[Record]:
    """Each row as a Record holding a deep copy of its fields (changed in place by a transform); plain dicts
    are named "row N" (from 1)."""
    return [Record(copy.deepcopy(row.data), row.where) if isinstance(row, Record)
            else Record(copy.deepcopy(dict(row)), f"row {i}") for i, row in enumerate(rows, start=1)]


def _apply(rows: Iterable[Row], change) -> list[dict]:
    """`change(data)` (edits the copy in place, or raises RowProblem) for every row; problems together."""
    return collect(_records(rows), lambda record: change(record.data) or record.data)


def _number(data: Mapping, field: str) -> float:
    """A finite number from `data[field]` (numeric strings, as CSV cells are, are accepted)."""
    return number(data.get(field), field)


def _fmt(value: float) -> int | float:
    """Integral values print without a decimal point (8.0 -> 8), as the reference code does."""
    return int(value) if float(value).is_integer() else value


def condition_prompt(prompt: Any, text: str, *, field: str = "prompt", nosys: bool = False,
                     separator: str = SEPARATOR) -> str | list[dict]:
    """`prompt` conditioned on `text` (see the module docstring); the input is not modified."""
    if kind(prompt, field) == "text":
        if not prompt:
            raise RowProblem(field, "empty prompt")
        return text + separator + prompt
    messages = [dict(message) for message in prompt]
    if not messages:
        raise RowProblem(field, "empty prompt (no messages)")
    if nosys:
        user = next((m for m in messages if m["role"] == "user"), None)
        if user is None:
            raise RowProblem(field, "no user message to put the conditioning text in front of")
        user["content"] = text + separator + user["content"]
        return messages
    if messages[0]["role"] == "system":
        messages[0]["content"] = text + SEPARATOR + messages[0]["content"]
        return messages
    return [{"role": "system", "content": text}] + messages


def _prompt_fields(data: Mapping) -> list[str]:
    """`prompt` when the row has one, else `chosen` and `rejected` (implicit prompts, as in UltraFeedback)."""
    return ["prompt"] if data.get("prompt") is not None else ["chosen", "rejected"]


# --------------------------------------------------------------------------------- reward-augmented data

def goal_text(goal: float, template: str = GOAL_TEMPLATE, scale_max: float = 10) -> str:
    """The goal instruction: `template` with `{g}` = goal and `{scale_max}` (integers print as integers)."""
    if "{g}" not in template:
        raise ValueError("the goal template must contain '{g}' (the target score)")
    return template.format(g=_fmt(goal), scale_max=_fmt(scale_max))


def _goal(data: Mapping, field: str, scale_max: float) -> float:
    score = _number(data, field)
    if score > scale_max:
        raise RowProblem(field, f"score {_fmt(score)} is above the scale maximum {_fmt(scale_max)} "
                                 "(set scale_max / --scale-max)")
    return score


def reward_augment(rows: Iterable[Row], score_chosen_field: str = "score_chosen",
                   score_rejected_field: str = "score_rejected", *, template: str = GOAL_TEMPLATE,
                   scale_max: float = 10, nosys: bool = False,
                   keep_if_ordered: tuple[str, str] | None = None) -> list[dict]:
    """Goal-conditioned copies of preference pairs: all positive-goal copies, then all negative-goal copies.

    positive: goal g = score(chosen); chosen, rejected unchanged. negative: g = score(rejected); chosen and
    rejected swapped (and so are the two score fields, which keep describing `chosen` / `rejected`). Each
    copy gets the goal text in its prompt and a `goal` field. `keep_if_ordered=(a, b)` first drops rows
    with a < b (the reference code keeps `avg_fine_score_chosen >= avg_fine_score_rejected`).
    """
    goal_text(0, template, scale_max)  # validates the template before any row

    def copies(record: Record) -> list[dict]:
        data = record.data
        if keep_if_ordered and _number(data, keep_if_ordered[0]) < _number(data, keep_if_ordered[1]):
            return []
        required(data, "chosen"), required(data, "rejected")
        out = []
        for score_field, swap in ((score_chosen_field, False), (score_rejected_field, True)):
            goal = _goal(data, score_field, scale_max)
            row = copy.deepcopy(data)
            for field in _prompt_fields(data):
                row[field] = condition_prompt(data[field], goal_text(goal, template, scale_max), field=field,
                                              nosys=nosys)
            if swap:
                row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
                row[score_chosen_field] = data[score_rejected_field]
                row[score_rejected_field] = data[score_chosen_field]
            row["goal"] = _fmt(goal)
            out.append(row)
        return out

    kept = [both for both in collect(_records(rows), copies) if both]  # (positive, negative) copies of each row
    return [positive for positive, _ in kept] + [negative for _, negative in kept]


def goal_condition(rows: Iterable[Row], inference_goal: float | None = None, *, scale_max: float = 10,
                   template: str = GOAL_TEMPLATE, nosys: bool = False, field: str = "prompt") -> list[dict]:
    """Prompts conditioned on one goal for inference: `inference_goal`, by default the scale maximum."""
    text = goal_text(scale_max if inference_goal is None else inference_goal, template, scale_max)

    def change(data: dict) -> None:
        data[field] = condition_prompt(required(data, field), text, field=field, nosys=nosys)
    return _apply(rows, change)


# ------------------------------------------------------------------------------ quality buckets (NoC)

def bucket_edges(scores: Sequence[float], k: int, strategy: Literal["uniform", "quantile"] = "uniform") -> list[float]:
    """The k + 1 bin edges. uniform: `linspace(min, max, k + 1)` (sklearn KBinsDiscretizer
    strategy="uniform"); quantile: the `linspace(0, 100, k + 1)` percentiles (numpy linear interpolation)."""
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    values = np.asarray(scores, dtype=np.float64)
    if strategy == "uniform":
        return np.linspace(values.min(), values.max(), k + 1).tolist()
    if strategy == "quantile":
        return np.percentile(values, np.linspace(0, 100, k + 1)).tolist()
    raise ValueError(f"strategy must be 'uniform' or 'quantile', got {strategy!r}")


def bucket_levels(scores: Sequence[float], edges: Sequence[float]) -> list[int]:
    """Level 0..k-1 of each score: `searchsorted(inner edges, score, side="right")`, i.e. NoC's
    `torch.bucketize(score, edges[1:-1], right=True)`; a score on an inner edge goes to the upper bin and
    scores outside [edges[0], edges[-1]] go to level 0 or k-1."""
    return np.searchsorted(np.asarray(edges[1:-1], dtype=np.float64), np.asarray(scores, dtype=np.float64),
                           side="right").tolist()


def quality_text(level: int, k: int, style: Literal["token", "system"] = "token", template: str | None = None) -> str:
    """The control text of one level: `<q_{level}>` (style "token") or a sentence (style "system")."""
    if style not in ("token", "system"):
        raise ValueError(f"style must be 'token' or 'system', got {style!r}")
    if not 0 <= level < k:
        raise ValueError(f"level {level} is outside 0..{k - 1}")
    default = QUALITY_TOKEN if style == "token" else QUALITY_SYSTEM
    return (template or default).format(level=level, top=k - 1)


def _put_level(data: dict, level: int, k: int, style: str, template: str | None, nosys: bool, field: str) -> None:
    text = quality_text(level, k, style, template)
    token = style == "token"  # a control token goes straight in front of the first user turn, no separator
    data[field] = condition_prompt(required(data, field), text, field=field, nosys=nosys or token,
                                   separator="" if token else SEPARATOR)
    data["quality_level"] = level


def quality_buckets(rows: Iterable[Row], score_field: str = "score", k: int = 8,
                    strategy: Literal["uniform", "quantile"] = "uniform",
                    style: Literal["token", "system"] = "token", *, edges: Sequence[float] | None = None,
                    template: str | None = None, nosys: bool = False,
                    field: str = "prompt") -> tuple[list[dict], list[float]]:
    """Rows conditioned on the quality level of `score_field`, and the k + 1 bin edges used.

    Edges are fitted on these rows (`bucket_edges`) unless `edges` (from an earlier fit; k = len - 1) is
    given. Each row gets its level's control text in `field` and a `quality_level` field.
    """
    records = _records(rows)
    scores = collect(records, lambda record: _number(record.data, score_field))
    if not scores:
        raise DataError("no rows to bucket")
    if edges is None:
        if min(scores) == max(scores):
            raise DataError(f"field '{score_field}': all {len(scores)} scores equal {_fmt(scores[0])}; "
                            "nothing to bucket")
        edges = bucket_edges(scores, k, strategy)
    edges = [float(edge) for edge in edges]
    k = len(edges) - 1
    if k < 2 or any(a > b for a, b in zip(edges, edges[1:])):
        raise ValueError(f"edges must be k + 1 >= 3 non-decreasing numbers, got {edges}")
    levels = bucket_levels(scores, edges)
    empty = sorted(set(range(k)) - set(levels))
    if empty:
        log.warning("quality levels %s have no rows (%s bins)", empty, strategy)
    row_levels = iter(levels)  # collect reads every record once, in order

    def put(record: Record) -> dict:
        _put_level(record.data, next(row_levels), k, style, template, nosys, field)
        return record.data
    return collect(records, put), edges


def bucket_document(edges: Sequence[float], score_field: str, strategy: str, style: str) -> dict:
    """What `alignkit data buckets` saves next to its output: the edges, how a level is found, and the
    inference level with its control text (the top level)."""
    k = len(edges) - 1
    return {"score_field": score_field, "k": k, "strategy": strategy, "style": style, "edges": list(edges),
            "inference_level": k - 1, "inference_text": quality_text(k - 1, k, style),
            "level": "searchsorted(edges[1:-1], score, side='right')"}


def quality_condition(rows: Iterable[Row], k: int, level: int | None = None,
                      style: Literal["token", "system"] = "token", *, template: str | None = None,
                      nosys: bool = False, field: str = "prompt") -> list[dict]:
    """Prompts conditioned on one quality level for inference: by default the top level, k - 1."""
    chosen = k - 1 if level is None else level
    quality_text(chosen, k, style, template)  # validates before any row
    return _apply(rows, lambda data: _put_level(data, chosen, k, style, template, nosys, field))


# ---------------------------------------------------------------------------- direction conditioning (DPA)

def direction_weights(angle_degrees: float | None = None, weights: Sequence[float] | None = None,
                      dimensions: int = 2) -> list[int]:
    """Integer weights `round(100 · v)` of a unit vector v: `(cos θ, sin θ)` for an angle (two attributes),
    or `weights / ||weights||`. Rounding is Python's round-half-to-even, as numpy's `np.round` in DPA."""
    if (angle_degrees is None) == (weights is None):
        raise ValueError("give exactly one of an angle or weights")
    if angle_degrees is not None:
        if dimensions != 2:
            raise ValueError(f"an angle defines two weights, but there are {dimensions} attributes; give weights")
        theta = math.radians(float(angle_degrees))
        vector = [math.cos(theta), math.sin(theta)]
    else:
        values = [float(w) for w in weights]
        norm = math.sqrt(sum(w * w for w in values))
        if len(values) != dimensions or not math.isfinite(norm) or norm == 0:
            raise ValueError(f"need {dimensions} finite weights, not all zero (one per attribute), got {list(weights)}")
        vector = [w / norm for w in values]
    return [int(round(100 * component)) for component in vector]


def direction_text(weights: Sequence[int], attributes: Sequence[str] = ("helpfulness", "verbosity"),
                   template: str = DPA_TEMPLATE) -> str:
    """DPA's system prompt: `... weighted rating = helpfulness*{w_h} + verbosity*{w_v}`."""
    return template.format(rating=" + ".join(f"{name}*{w}" for name, w in zip(attributes, weights)))


def direction_condition(rows: Iterable[Row], angle_degrees: float | None = None, *,
                        weights: Sequence[float] | None = None, angle_field: str | None = None,
                        attributes: Sequence[str] = ("helpfulness", "verbosity"), template: str = DPA_TEMPLATE,
                        nosys: bool = False, field: str = "prompt") -> list[dict]:
    """Prompts conditioned on a preference direction: one angle (degrees) or weight vector for all rows, or
    each row's angle from `angle_field`. Rows get the integer weights in a `direction` field."""
    if sum(x is not None for x in (angle_degrees, weights, angle_field)) != 1:
        raise ValueError("give exactly one of angle_degrees, weights or angle_field")
    fixed = None if angle_field else direction_weights(angle_degrees, weights, len(attributes))
    if angle_field and len(attributes) != 2:
        raise ValueError("per-row angles define two weights; give two attributes")

    def change(data: dict) -> None:
        ws = fixed if fixed is not None else direction_weights(_number(data, angle_field))
        data[field] = condition_prompt(required(data, field), direction_text(ws, attributes, template),
                                       field=field, nosys=nosys)
        data["direction"] = ws
    return _apply(rows, change)
