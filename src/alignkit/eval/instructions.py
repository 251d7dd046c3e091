"""Instruction-following evaluation: greedy completions scored by programmatic verifiers.

Rows are dicts `{"prompt": [messages] | str, "check": spec, "topic": str (optional)}` (the format of
the shipped `data/demo/heldout.jsonl`); specs are those understood by `alignkit.models.verifiers.check`.
With a topic, each answer is also checked for substance (`verifiers.substantive`: no refusal, mentions
the topic, does not loop), so a model cannot look better by answering every instruction with an empty
sentence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data import Record, collect, load_records
from alignkit.data.prompts import ChatTemplate
from alignkit.data.rows import RowProblem, prompt_field
from alignkit.decode.sampling import draw_samples
from alignkit.models.verifiers import CHECK_TYPES, check, family, substantive

TOTAL = "total"
SUBSTANTIVE = "substantive answer"
PASSED_SUBSTANTIVE = "passed and substantive"


@dataclass(frozen=True)
class RowResult:
    """One evaluated prompt: its check family, the greedy completion, whether it passed, and whether it
    is a substantive answer (None when the row names no topic)."""

    family: str
    passed: bool
    completion: str
    substantive: bool | None = None


@dataclass(frozen=True)
class InstructionReport:
    """Per-row results plus pass counts per check family and in total."""

    rows: tuple[RowResult, ...]

    def counts(self) -> dict[str, tuple[int, int]]:
        """`{family: (passed, total)}` sorted by family name, with the overall count last under "total"."""
        counts: dict[str, tuple[int, int]] = {}
        for row in self.rows:
            passed, total = counts.get(row.family, (0, 0))
            counts[row.family] = (passed + row.passed, total + 1)
        result = dict(sorted(counts.items()))
        result[TOTAL] = (self.passed, len(self.rows))
        return result

    def substance_counts(self) -> dict[str, tuple[int, int]]:
        """`{SUBSTANTIVE: (n, total), PASSED_SUBSTANTIVE: (n, total)}` over rows that name a topic; {} if none do."""
        rows = [row for row in self.rows if row.substantive is not None]
        if not rows:
            return {}
        return {SUBSTANTIVE: (sum(row.substantive for row in rows), len(rows)),
                PASSED_SUBSTANTIVE: (sum(row.substantive and row.passed for row in rows), len(rows))}

    @property
    def passed(self) -> int:
        """How many rows passed their check."""
        return sum(row.passed for row in self.rows)

    @property
    def pass_rate(self) -> float:
        """Fraction of rows that passed (0.0 for an empty report)."""
        return self.passed / len(self.rows) if self.rows else 0.0


def default_heldout_path() -> Path:
    """The held-out prompts shipped with the package."""
    return Path(str(resources.files("alignkit").joinpath("data", "demo", "heldout.jsonl")))


def load_heldout(path: str | Path | None = None) -> list[dict]:
    """Held-out rows from `path` (any source `load_records` reads), or the shipped file by default. Each row
    needs a non-empty `prompt` and a `check` of a known type; every bad row is reported at once (file, line,
    field), before any model runs."""
    def read(record: Record) -> dict:
        prompt_field(record.data)
        if record.data.get("check") is None:
            raise RowProblem("check", 'missing; held-out rows are {"prompt": ..., "check": {"type": ..., ...}} '
                                      f'(types: {", ".join(CHECK_TYPES)}), like alignkit\'s demo set')
        spec = record.data["check"]
        if not isinstance(spec, dict) or spec.get("type") not in CHECK_TYPES:
            raise RowProblem("check", f"expected an object whose type is one of {', '.join(CHECK_TYPES)}, "
                                      f"got {spec!r}")
        return record.data
    return collect(load_records(path if path is not None else default_heldout_path()), read)


def evaluate_instructions(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, rows: Sequence[dict], *,
                          max_new_tokens: int = 96, batch_size: int = 16,
                          chat_template: ChatTemplate = True) -> InstructionReport:
    """Greedily complete every row's prompt and score it with the row's check. Prompts, strings and message
    lists alike, go through the tokenizer's chat template (`chat_template`: "chatml", "zephyr" or a Jinja file
    for a model without one; False feeds the prompt text as is), as `alignkit.data.prompts.render_prompt`."""
    texts, _, _ = draw_samples(model, tokenizer, [row["prompt"] for row in rows], n=1, temperature=0,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, chat_template=chat_template)
    return score_instructions(rows, [outs[0] for outs in texts])


def score_instructions(rows: Sequence[dict], completions: Sequence[str]) -> InstructionReport:
    """Score given completions (one per row, e.g. from a decoding method) with each row's check."""
    return InstructionReport(tuple(
        RowResult(family(row["check"]), check(row["check"], text), text,
                  substantive(text, row["topic"]) if "topic" in row else None)
        for row, text in zip(rows, completions, strict=True)
    ))


def _cell(passed: int, total: int) -> str:
    pct = 100.0 * passed / total if total else 0.0
    return f"{passed}/{total} ({pct:.0f}%)"


def _change(before: tuple[int, int], after: tuple[int, int]) -> str:
    if not before[1] or not after[1]:
        return "n/a"
    points = 100.0 * (after[0] / after[1] - before[0] / before[1])
    return f"{after[0] - before[0]:+d} ({points:+.0f} pp)"


def format_comparison(before: InstructionReport, after: InstructionReport) -> str:
    """A plain-text table: per family and in total, `passed/total (pct)` before and after, and the change;
    then, when rows name topics, how many answers were substantive, and how many passed and were."""
    before_counts = before.counts() | before.substance_counts()
    after_counts = after.counts() | after.substance_counts()
    extra = [name for name in (SUBSTANTIVE, PASSED_SUBSTANTIVE) if name in before_counts or name in after_counts]
    families = sorted((set(before_counts) | set(after_counts)) - {TOTAL, *extra}) + [TOTAL] + extra
    header = ("check", "before", "after", "change")
    lines = [header]
    for name in families:
        b, a = before_counts.get(name, (0, 0)), after_counts.get(name, (0, 0))
        lines.append((name, _cell(*b), _cell(*a), _change(b, a)))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def render(line: tuple[str, ...]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()

    rule = "  ".join("-" * width for width in widths)
    body, total, guards = lines[1:-1 - len(extra)], lines[-1 - len(extra)], lines[len(lines) - len(extra):]
    sections = [render(lines[0]), rule, *map(render, body), rule, render(total)]
    return "\n".join(sections + ([rule, *map(render, guards)] if guards else []))
