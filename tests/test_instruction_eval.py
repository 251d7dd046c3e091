"""Instruction evaluation: consistent counts on a tiny random model, and the before/after table."""

from __future__ import annotations

import json

import pytest

from alignkit.data import DataError
from alignkit.eval.instructions import (InstructionReport, RowResult, default_heldout_path, evaluate_instructions,
                                        format_comparison, load_heldout)
from alignkit.models.verifiers import check
from conftest import tiny_llama

ROWS = [
    {"prompt": [{"role": "user", "content": "Describe the moon. Answer in at most 5 words."}],
     "check": {"type": "max_words", "n": 5}},
    {"prompt": [{"role": "user", "content": "Describe a cat in lowercase."}], "check": {"type": "lowercase"}},
    {"prompt": [{"role": "user", "content": "Say hi without commas, please, thank you."}],
     "check": {"type": "no_commas"}},
    {"prompt": "Raw text prompt:", "check": {"type": "max_words", "n": 1000}},
]


@pytest.fixture()
def tiny_model(smol_tokenizer):
    return tiny_llama(vocab_size=len(smol_tokenizer), pad_token_id=smol_tokenizer.pad_token_id,
                      eos_token_id=smol_tokenizer.eos_token_id)


def test_evaluate_counts_are_consistent(tiny_model, smol_tokenizer):
    report = evaluate_instructions(tiny_model, smol_tokenizer, ROWS, max_new_tokens=6, batch_size=3)
    assert len(report.rows) == len(ROWS)
    for row, result in zip(ROWS, report.rows):
        assert result.passed == check(row["check"], result.completion)
    counts = report.counts()
    assert counts["max_words"][1] == 2 and counts["lowercase"][1] == 1 and counts["no_commas"][1] == 1
    assert counts["total"] == (report.passed, len(ROWS))
    assert sum(p for name, (p, _) in counts.items() if name != "total") == report.passed
    assert list(counts)[-1] == "total"
    assert smol_tokenizer.padding_side == "right"  # restored after left-padded generation


def test_evaluate_keeps_row_order(tiny_model, smol_tokenizer):
    forward = evaluate_instructions(tiny_model, smol_tokenizer, ROWS, max_new_tokens=6)
    backward = evaluate_instructions(tiny_model, smol_tokenizer, ROWS[::-1], max_new_tokens=6)
    assert [r.completion for r in forward.rows] == [r.completion for r in backward.rows][::-1]


def _report(spec: dict[str, tuple[int, int]]) -> InstructionReport:
    rows = [RowResult(name, i < passed, "") for name, (passed, total) in spec.items() for i in range(total)]
    return InstructionReport(tuple(rows))


def test_format_comparison_numbers():
    before = _report({"max_words": (2, 10), "lowercase": (1, 4)})
    after = _report({"max_words": (7, 10), "lowercase": (1, 4)})
    table = format_comparison(before, after)
    lines = table.splitlines()
    assert lines[0].split() == ["check", "before", "after", "change"]
    max_words = next(line for line in lines if line.startswith("max_words"))
    assert "2/10 (20%)" in max_words and "7/10 (70%)" in max_words and "+5 (+50 pp)" in max_words
    lowercase = next(line for line in lines if line.startswith("lowercase"))
    assert "1/4 (25%)" in lowercase and "+0 (+0 pp)" in lowercase
    total = lines[-1]
    assert total.startswith("total") and "3/14 (21%)" in total and "8/14 (57%)" in total and "+5 (+36 pp)" in total


def test_format_comparison_missing_family():
    table = format_comparison(_report({"lowercase": (1, 2)}), _report({"no_commas": (2, 2)}))
    assert "0/0 (0%)" in table and "n/a" in table


def test_load_heldout_reads_jsonl(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in ROWS) + "\n\n", encoding="utf-8")
    assert load_heldout(path) == ROWS
    assert default_heldout_path().name == "heldout.jsonl"
    assert len(load_heldout()) == 64


def test_load_heldout_names_every_bad_row_before_any_model_runs(tmp_path):
    path = tmp_path / "rows.jsonl"
    bad = [ROWS[0], {"prompt": "", "check": {"type": "lowercase"}}, {"prompt": "Hi"},
           {"prompt": "Hi", "check": {"type": "max_wordz", "n": 3}}]
    path.write_text("\n".join(json.dumps(row) for row in bad) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_heldout(path)
    assert caught.value.problems == ("rows.jsonl, line 2, field 'prompt': empty prompt",
                                     caught.value.problems[1], caught.value.problems[2])
    assert caught.value.problems[1].startswith("rows.jsonl, line 3, field 'check': missing; held-out rows are")
    assert caught.value.problems[2].startswith("rows.jsonl, line 4, field 'check': expected an object whose type")


def test_substance_rows_catch_empty_compliance():
    """A model that passes checks by saying nothing shows up in the on-topic rows."""
    before = InstructionReport((RowResult("no_commas", False, "Knit slowly, daily.", True),
                                RowResult("no_commas", True, "Use thick yarn first", True)))
    after = InstructionReport((RowResult("no_commas", True, "I'm not a knitting machine.", False),
                               RowResult("no_commas", True, "I'm sorry.", False)))
    assert after.substance_counts() == {"substantive answer": (0, 2), "passed and substantive": (0, 2)}
    table = format_comparison(before, after)
    lines = table.splitlines()
    topic_line = next(line for line in lines if line.startswith("substantive answer"))
    assert "2/2 (100%)" in topic_line and "0/2 (0%)" in topic_line and "-2 (-100 pp)" in topic_line
    passed_line = next(line for line in lines if line.startswith("passed and substantive"))
    assert "1/2 (50%)" in passed_line and "0/2 (0%)" in passed_line and "-1 (-50 pp)" in passed_line
    assert InstructionReport((RowResult("x", True, "a"),)).substance_counts() == {}
