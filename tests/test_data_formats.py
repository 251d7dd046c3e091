"""Loading preference data: every format gives the same examples; bad rows give precise DataErrors."""

from __future__ import annotations

import csv
import json
import re

import pytest
from datasets import Dataset, DatasetDict

from alignkit.data import DataError, Example, load_examples, load_records

STANDARD = [
    {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "id": 1},
    {"prompt": "2 + 2 =", "chosen": " 4", "rejected": " 5, ünïcode ✓", "id": 2},
]
CONVERSATIONAL = [
    {
        "prompt": [{"role": "user", "content": "What colour is the sky?"}],
        "chosen": [{"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "assistant", "content": "Green."}],
    },
    {
        "prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    },
]
IMPLICIT_STANDARD = [
    {"chosen": "Q: sky colour? A: blue", "rejected": "Q: sky colour? A: green"},
    {"chosen": "Translate 'chat': cat", "rejected": "Translate 'chat': dog"},
    {"chosen": "Sum 1 1 2", "rejected": "Sum 1 1 3"},
]
IMPLICIT_CONVERSATIONAL = [
    {
        "chosen": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Blue."}],
        "rejected": [{"role": "user", "content": "Sky?"}, {"role": "assistant", "content": "Green."}],
    },
    {
        "chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "user", "content": "c"}, {"role": "assistant", "content": "good"}],
        "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                     {"role": "user", "content": "c"}, {"role": "assistant", "content": "bad"}],
    },
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_all_formats(tmp_path, rows, csv_ok: bool) -> list:
    """The same rows as every supported source."""
    sources = [write_jsonl(tmp_path / "p.jsonl", rows), rows, Dataset.from_list(rows)]
    (tmp_path / "p.json").write_text(json.dumps(rows), encoding="utf-8")
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows}), encoding="utf-8")
    sources += [tmp_path / "p.json", tmp_path / "wrapped.json"]
    Dataset.from_list(rows).to_parquet(str(tmp_path / "p.parquet"))
    sources.append(tmp_path / "p.parquet")
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    DatasetDict({"train": Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "one_split"))
    DatasetDict({"train": Dataset.from_list(rows), "test": Dataset.from_list(rows[:1])}).save_to_disk(
        str(tmp_path / "two_splits"))
    sources += [tmp_path / "saved", tmp_path / "one_split", f"{tmp_path / 'two_splits'}::train"]
    if csv_ok:
        with open(tmp_path / "p.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows([{key: str(value) for key, value in row.items()} for row in rows])
        sources.append(tmp_path / "p.csv")
    return sources


def contents(examples: list[Example]) -> list[tuple]:
    return [(example.prompt, *example.slot("chosen"), *example.slot("rejected")) for example in examples]


@pytest.mark.parametrize("rows,csv_ok", [(STANDARD, True), (CONVERSATIONAL, False),
                                         (IMPLICIT_STANDARD, True), (IMPLICIT_CONVERSATIONAL, False)])
def test_every_format_loads_the_same_examples(tmp_path, rows, csv_ok):
    sources = write_all_formats(tmp_path, rows, csv_ok)
    expected = contents(load_examples(rows, "preference"))
    assert len(expected) == len(rows)
    for source in sources:
        assert contents(load_examples(source, "preference")) == expected, source
    if "prompt" in rows[0]:
        assert expected == [(row["prompt"], row["chosen"], row["rejected"]) for row in rows]


def test_where_names_file_and_line_or_row(tmp_path):
    write_all_formats(tmp_path, STANDARD, csv_ok=True)
    assert [e.where for e in load_examples(tmp_path / "p.jsonl", "preference")] == ["p.jsonl, line 1", "p.jsonl, line 2"]
    assert load_examples(tmp_path / "p.parquet", "preference")[1].where == "p.parquet, row 2"
    assert load_examples(tmp_path / "p.csv", "preference")[1].where == "p.csv, line 3"
    assert load_examples(STANDARD, "preference")[0].where == "dataset, row 1"
    assert load_examples(f"{tmp_path / 'two_splits'}::test", "preference")[0].where == "two_splits::test, row 1"


def test_conversational_flag():
    assert not load_examples(STANDARD, "preference")[0].conversational
    assert load_examples(CONVERSATIONAL, "preference")[0].conversational


def test_jsonl_blank_lines_skipped_and_extra_fields_kept_in_records(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n" + json.dumps(STANDARD[0]) + "\n\n  \n" + json.dumps(STANDARD[1]) + "\n")
    records = load_records(path)
    assert [r.where for r in records] == ["p.jsonl, line 2", "p.jsonl, line 5"]
    assert records[0].data["id"] == 1


def test_csv_multiline_cell_reports_start_line(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text('prompt,chosen,rejected\n"two\nlines",a,b\nx,y,\n', encoding="utf-8")
    with pytest.raises(DataError) as caught:
        load_examples(path, "preference")
    assert str(caught.value) == "p.csv, line 4, field 'rejected': empty completion"


@pytest.mark.parametrize("extract", ["standard", "conversational"])
def test_implicit_extraction_matches_trl(extract):
    from trl.data_utils import extract_prompt

    rows = IMPLICIT_STANDARD if extract == "standard" else IMPLICIT_CONVERSATIONAL
    ours = contents(load_examples(rows, "preference"))
    theirs = [extract_prompt(row) for row in rows]
    assert ours == [(t["prompt"], t["chosen"], t["rejected"]) for t in theirs]
    if extract == "standard":  # the shared trailing space went to the completions
        assert ours[0] == ("Q: sky colour? A:", " blue", " green")


def test_datasetdict_with_several_splits_needs_a_split(tmp_path):
    write_all_formats(tmp_path, STANDARD, csv_ok=False)
    with pytest.raises(DataError, match=r"two_splits.*'test', 'train'.*::<split>"):
        load_examples(tmp_path / "two_splits", "preference")
    with pytest.raises(DataError, match="no split 'dev'"):
        load_examples(f"{tmp_path / 'two_splits'}::dev", "preference")


GOOD = {"prompt": "p", "chosen": "good", "rejected": "bad"}
MESSAGES = [{"role": "assistant", "content": "x"}]
BAD_ROWS = [
    ({"prompt": "p", "rejected": "bad"}, "chosen", "missing"),
    ({"prompt": "p", "chosen": 3, "rejected": "bad"}, "chosen", "expected a string or a list of messages"),
    ({"prompt": "p", "chosen": "a", "rejected": [{"role": "assistant"}]}, "rejected", "message 1 has no 'content'"),
    ({"prompt": "p", "chosen": "a", "rejected": MESSAGES}, "rejected", "must be all strings or all message lists"),
    ({"prompt": MESSAGES, "chosen": "a", "rejected": "b"}, "prompt", "must be all strings or all message lists"),
    ({"prompt": "p", "chosen": "   ", "rejected": "bad"}, "chosen", "empty completion"),
    ({"prompt": "p", "chosen": "ok", "rejected": ""}, "rejected", "empty completion"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": [], "rejected": MESSAGES}, "chosen", "empty completion"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": MESSAGES,
      "rejected": [{"role": "assistant", "content": " "}]}, "rejected", "empty completion"),
    ({"chosen": "abc", "rejected": "xyz"}, "prompt", "share no leading text"),
    ({"chosen": " abc", "rejected": " xyz"}, "prompt", "share no leading text"),
    ({"chosen": "same start", "rejected": "same start and more"}, "chosen", "empty completion"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
      "rejected": [{"role": "user", "content": "z"}, {"role": "assistant", "content": "b"}]},
     "prompt", "share no leading messages"),
    ({"chosen": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
      "rejected": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}]},
     "chosen", "must go on with an assistant message"),
    ({"prompt": "p", "chosen": "same", "rejected": "same"}, "rejected", "identical to 'chosen'"),
    ({"prompt": [{"role": "user", "content": "q"}], "chosen": MESSAGES, "rejected": MESSAGES},
     "rejected", "identical to 'chosen'"),
    ({"prompt": [{"role": "wizard", "content": "q"}], "chosen": MESSAGES,
      "rejected": [{"role": "assistant", "content": "y"}]}, "prompt", "message 1 has an unknown role 'wizard'"),
    ({"prompt": "p\ud800", "chosen": "a", "rejected": "b"}, "prompt", "lone surrogate"),
]


@pytest.mark.parametrize("bad,field,reason", BAD_ROWS)
def test_bad_row_names_file_line_and_field(tmp_path, bad, field, reason):
    path = write_jsonl(tmp_path / "prefs.jsonl", [GOOD, GOOD, bad, GOOD])
    with pytest.raises(DataError) as caught:
        load_examples(path, "preference")
    message = str(caught.value)
    assert message.startswith(f"prefs.jsonl, line 3, field '{field}': "), message
    assert reason in message
    assert "\n" not in message


def test_invalid_utf8_and_malformed_json_in_jsonl(tmp_path):
    path = tmp_path / "prefs.jsonl"
    lines = [json.dumps(GOOD).encode(), b'{"prompt": "p", "chosen": "\xff\xfe", "rejected": "b"}',
             json.dumps(GOOD).encode(), b'{"prompt": "p", "chosen": ', json.dumps(GOOD).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    with pytest.raises(DataError) as caught:
        load_examples(path, "preference")
    assert caught.value.problems[0].startswith("prefs.jsonl, line 2: invalid UTF-8")
    assert caught.value.problems[1].startswith("prefs.jsonl, line 4: malformed JSON")
    assert len(caught.value.problems) == 2


def test_invalid_utf8_in_csv_names_the_line(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_bytes(b"prompt,chosen,rejected\np,a,b\np,\xc3\x28,b\n")
    with pytest.raises(DataError, match=r"^prefs\.csv, line 3: invalid UTF-8"):
        load_examples(path, "preference")


def test_invalid_utf8_in_json_names_the_line(tmp_path):
    path = tmp_path / "prefs.json"
    path.write_bytes(b'[\n{"prompt": "p", "chosen": "a", "rejected": "b"},\n{"prompt": "\xff"}\n]')
    with pytest.raises(DataError, match=r"^prefs\.json, line 3: invalid UTF-8"):
        load_examples(path, "preference")


def test_several_bad_rows_give_one_error_listing_all(tmp_path):
    rows = [GOOD, {"prompt": "p", "rejected": "b"}, GOOD, {"prompt": "p", "chosen": "a", "rejected": 7}]
    with pytest.raises(DataError) as caught:
        load_examples(write_jsonl(tmp_path / "prefs.jsonl", rows), "preference")
    message = str(caught.value)
    assert "prefs.jsonl, line 2, field 'chosen': missing" in message
    assert "prefs.jsonl, line 4, field 'rejected': expected a string" in message
    assert message.startswith("2 bad rows")


def test_long_listing_is_capped(tmp_path):
    rows = [{"prompt": "p", "chosen": "", "rejected": "b"}] * 25
    with pytest.raises(DataError) as caught:
        load_examples(write_jsonl(tmp_path / "prefs.jsonl", rows), "preference")
    message = str(caught.value)
    assert "line 20, field 'chosen'" in message and "line 21," not in message
    assert message.endswith("... and 5 more")
    assert len(caught.value.problems) == 25


def test_other_source_errors(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="unsupported file type '.txt'"):
        load_records(tmp_path / "x.txt")
    with pytest.raises(DataError, match="no such file"):
        load_records(tmp_path / "missing.jsonl")
    (tmp_path / "list.jsonl").write_text('["a"]\n')
    with pytest.raises(DataError, match=re.escape("list.jsonl, line 1: expected a JSON object, got list")):
        load_records(tmp_path / "list.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load_examples(tmp_path / "empty.jsonl", "preference")


def write_lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD_LINE = json.dumps(GOOD)


def test_too_long_integer_names_file_line_and_field(tmp_path):
    digits = "1" * 5000
    path = write_lines(tmp_path / "big.jsonl", GOOD_LINE, GOOD_LINE[:-1] + f', "id": {digits}}}')
    with pytest.raises(DataError, match=r"^big\.jsonl, line 2, field 'id': an integer of 5000 digits"):
        load_records(path)
    path = write_lines(tmp_path / "big.json", "[", GOOD_LINE + ",", GOOD_LINE[:-1] + f', "id": [{digits}]}}', "]")
    with pytest.raises(DataError, match=r"^big\.json, row 2, field 'id\[1\]': an integer of 5000 digits"):
        load_records(path)


def test_deep_nesting_names_file_and_line(tmp_path):
    deep = "[" * 100_000 + "]" * 100_000
    path = write_lines(tmp_path / "deep.jsonl", GOOD_LINE, f'{{"x": {deep}}}', GOOD_LINE[:-1] + ', "x": [[[1]]]}')
    with pytest.raises(DataError, match=r"^deep\.jsonl, line 2: nested more than 100 levels deep$"):
        load_records(path)
    path = write_lines(tmp_path / "deep.json", "[", GOOD_LINE + ",", f'{{"x": {deep}}}', "]")
    with pytest.raises(DataError, match=r"^deep\.json, line 3: nested more than 100 levels deep$"):
        load_records(path)
    nested: list = []
    for _ in range(150):
        nested = [nested]
    with pytest.raises(DataError, match=r"^dataset, row 2, field 'x': nested more than 100 levels deep$"):
        load_records([GOOD, {**GOOD, "x": nested}])


def test_lone_surrogate_names_file_line_and_field(tmp_path):
    path = write_lines(tmp_path / "s.jsonl", GOOD_LINE, '{"prompt": "p", "chosen": "a\\udfff", "rejected": "b"}')
    with pytest.raises(DataError, match=r"^s\.jsonl, line 2, field 'chosen': lone surrogate '\\udfff'"):
        load_examples(path, "preference")
    chat = {"prompt": [{"role": "user", "content": "q\ud800"}], "chosen": MESSAGES,
            "rejected": [{"role": "assistant", "content": "y"}]}
    with pytest.raises(DataError, match=r"^dataset, row 1, field 'prompt\[1\]\.content': lone surrogate"):
        load_examples([chat], "preference")
    with pytest.raises(DataError, match=r"^dataset, row 1, field '\\ud800': lone surrogate"):
        load_records([{"\ud800": "key"}])


def test_unterminated_csv_quote_names_the_line_where_the_record_starts(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('prompt,chosen,rejected\np,a,b\np,a,"b\np2,a2,b2\np3,a3,b3\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"^q\.csv, line 3: malformed CSV \(unexpected end of data"):
        load_records(path)
    path.write_text('prompt,chosen,rejected\np,"a"b,c\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"^q\.csv, line 2: malformed CSV"):
        load_records(path)


def test_duplicate_csv_column_names_the_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,chosen,prompt,rejected\np,a,q,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"^d\.csv, line 1: the header names column 'prompt' twice"):
        load_records(path)


def test_duplicate_json_keys_name_file_line_and_key(tmp_path):
    line = '{"prompt": "p", "chosen": "a", "chosen": "c", "rejected": "b"}'
    path = write_lines(tmp_path / "d.jsonl", GOOD_LINE, line)
    with pytest.raises(DataError, match=r"^d\.jsonl, line 2: duplicate key 'chosen'"):
        load_records(path)
    path = write_lines(tmp_path / "d.json", "[", GOOD_LINE + ",", line, "]")
    with pytest.raises(DataError, match=r"^d\.json, row 2: duplicate key 'chosen'"):
        load_records(path)
    nested = '{"prompt": [{"role": "user", "role": "system", "content": "q"}], "chosen": "a", "rejected": "b"}'
    with pytest.raises(DataError, match=r"^d\.jsonl, line 1, field 'prompt\[1\]': duplicate key 'role'"):
        load_records(write_lines(tmp_path / "d.jsonl", nested))
    path = write_lines(tmp_path / "wrapped.json", '{"data": [' + GOOD_LINE + '], "data": []}')
    with pytest.raises(DataError, match=r"^wrapped\.json: expected a JSON list of objects"):
        load_records(path)


def test_symlink_loop_is_reported_as_such(tmp_path):
    loop = tmp_path / "loop.jsonl"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match=r"loop\.jsonl: a symlink loop"):
        load_records(loop)
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "gone.jsonl")
    with pytest.raises(DataError, match=r"dangling\.jsonl: a symlink to a missing target"):
        load_records(dangling)


def test_malformed_json_on_stdin_names_the_line(monkeypatch):
    import io

    from alignkit.data.records import load_prompt_records

    monkeypatch.setattr("sys.stdin", io.StringIO('{"prompt": "a"}\n\n{"prompt": \n'))
    with pytest.raises(DataError, match=r"^stdin, line 3: malformed JSON"):
        load_prompt_records("-")


def test_empty_path_source_names_the_file(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows$"):
        load_examples(tmp_path / "empty.jsonl", "preference")


MISSING_CHOSEN_LINE = json.dumps({"prompt": "p", "rejected": "b"})


def test_malformed_line_does_not_hide_the_bad_rows(tmp_path):
    path = write_lines(tmp_path / "prefs.jsonl", GOOD_LINE, '{"prompt": "p", "chosen": ', GOOD_LINE,
                       MISSING_CHOSEN_LINE, GOOD_LINE)
    with pytest.raises(DataError) as caught:
        load_examples(path, "preference")
    problems = caught.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("prefs.jsonl, line 2: malformed JSON")
    assert problems[1] == "prefs.jsonl, line 4, field 'chosen': missing"
    message = str(caught.value)
    assert message.startswith("2 bad lines") and message.index("line 2:") < message.index("line 4,")
    with pytest.raises(DataError, match=r"^prefs\.jsonl, line 2: malformed JSON"):  # only the unreadable line
        load_records(path)


def test_unreadable_lines_and_bad_rows_merge_in_line_order(tmp_path):
    from alignkit.data.records import read_records

    path = tmp_path / "prefs.jsonl"
    lines = [GOOD_LINE, GOOD_LINE, MISSING_CHOSEN_LINE] + [GOOD_LINE] * 5 + [
        '{"prompt": ', b'{"prompt": "\xff"}', MISSING_CHOSEN_LINE, "[1]", GOOD_LINE]
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    reading = read_records(path)
    assert len(reading.records) == 10 and [problem.before for problem in reading.problems] == [8, 8, 9]
    with pytest.raises(DataError) as caught:
        load_examples(path, "preference")
    assert [problem.split(":")[0].split(",")[1].strip() for problem in caught.value.problems] == [
        "line 3", "line 9", "line 10", "line 11", "line 12"]
    assert "line 10: invalid UTF-8" in caught.value.problems[2]
    assert "line 12: expected a JSON object" in caught.value.problems[4]


# ------------------------------------------------------------------ the context format (Re-Align's rDPO)

CONTEXT_ROW = {"prompt": "Who wrote it?", "context": "The memo was written by Ada.",
               "distractor_context": "The memo was printed on Monday.", "chosen": "Ada.", "rejected": "Bob."}


def test_context_rows_pair_the_answers_under_the_context_and_chosen_again_under_the_distractor(tmp_path):
    chat = dict(CONTEXT_ROW, prompt=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who?"}],
                chosen=[{"role": "assistant", "content": "Ada."}], rejected=[{"role": "assistant", "content": "Bob."}])
    (text, messages) = load_examples(write_jsonl(tmp_path / "ctx.jsonl", [CONTEXT_ROW, CONTEXT_ROW]), "context")[:1] + \
        load_examples(write_jsonl(tmp_path / "chat.jsonl", [chat]), "context")
    assert text.groups == (("The memo was written by Ada.\n\nWho wrote it?", ("Ada.", "Bob.")),
                           ("The memo was printed on Monday.\n\nWho wrote it?", ("Ada.",)))
    assert (text.slot("chosen"), text.slot("rejected"), text.slot("distractor")) == (("Ada.",), ("Bob.",), ("Ada.",))
    (right, _), (distractor, (again,)) = messages.groups
    assert right[0] == {"role": "system", "content": "Be brief."}
    assert right[1]["content"] == "The memo was written by Ada.\n\nWho?"
    assert distractor[1]["content"] == "The memo was printed on Monday.\n\nWho?" and again == chat["chosen"]
    assert chat["prompt"][1]["content"] == "Who?"  # the row itself is not modified


@pytest.mark.parametrize("bad,field,reason", [
    ({k: v for k, v in CONTEXT_ROW.items() if k != "distractor_context"}, "distractor_context", "missing"),
    (dict(CONTEXT_ROW, context="  "), "context", "non-blank string"),
    (dict(CONTEXT_ROW, context=["a"]), "context", "non-blank string"),
    (dict(CONTEXT_ROW, distractor_context=CONTEXT_ROW["context"]), "distractor_context", "identical to 'context'"),
    (dict(CONTEXT_ROW, rejected="Ada."), "rejected", "identical to 'chosen'"),
    (dict(CONTEXT_ROW, prompt=[{"role": "system", "content": "x"}], chosen=MESSAGES,
          rejected=[{"role": "assistant", "content": "y"}]), "prompt", "needs a user message"),
])
def test_bad_context_row_names_file_line_and_field(tmp_path, bad, field, reason):
    path = write_jsonl(tmp_path / "ctx.jsonl", [CONTEXT_ROW, bad])
    with pytest.raises(DataError) as caught:
        load_examples(path, "context")
    assert str(caught.value).startswith(f"ctx.jsonl, line 2, field '{field}': ") and reason in str(caught.value)
