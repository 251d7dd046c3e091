"""Fuzzing every loader and every data format: whatever the input, `load_examples` returns valid examples
or raises a DataError each of whose problems names the file and the line or row; never another exception.

Rows of every format are generated, then spoiled: wrong types, huge strings and numbers, deep nesting,
control characters, lone surrogates, unknown roles, mixed kinds; and their files too: truncated lines,
invalid UTF-8, duplicate keys, unclosed quotes, empty files and another format's text.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

from alignkit.data import FORMAT_FIELDS, DataError, Example, load_examples

FUZZ = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FORMATS = st.sampled_from(list(FORMAT_FIELDS))
WHOLE_FILE = ("no rows", "expected a JSON list of objects", "cannot read as Parquet")

# ------------------------------------------------------------------------------------------------ values

SPECIAL = ["\ud800", "\udfff", "\x00", "\x1b", "\x7f", "\u2028", "\x85", "\ufeff", "\r", "\n", "\t", '"', ",",
           "\\", " "]
TEXT = st.text(st.characters() | st.sampled_from(SPECIAL), min_size=1, max_size=8)
CLEAN_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cc", "Zs", "Zl", "Zp"]), min_size=1,
                     max_size=8)
ROLES = st.sampled_from(["system", "user", "assistant", "tool", "wizard", "", "User"])


def nested(depth: int) -> list:
    """A list nested `depth` deep."""
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | TEXT
           | st.integers(300, 400).map(lambda digits: 10 ** digits)  # too large for a float
           | st.sampled_from([20_000, 140_000]).map(lambda size: "x" * size))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(TEXT, inner, max_size=3), max_leaves=6)
WILD = (JSON_VALUES | st.sampled_from([90, 101, 500]).map(nested) | st.sampled_from(["true", "FALSE", "1", "nan"])
        | st.lists(st.fixed_dictionaries({"role": ROLES, "content": TEXT}), max_size=3))


def messages(role: str, text: st.SearchStrategy) -> st.SearchStrategy:
    """One or two messages of `role` with contents from `text`."""
    return st.lists(st.fixed_dictionaries({"role": st.just(role), "content": text}), min_size=1, max_size=2)


def contents(kind: str, text: st.SearchStrategy) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    """Prompts and completions of one kind ("text" or "messages")."""
    if kind == "text":
        return text, text
    return messages("user", text), messages("assistant", text)


@st.composite
def valid_rows(draw, data_format: str, kind: str, width: int, text: st.SearchStrategy = CLEAN_TEXT) -> dict:
    """A row of `data_format` (usually valid); list slots hold `width` completions."""
    prompts, completions = contents(kind, text)
    prompt = draw(prompts)
    some = st.lists(completions, min_size=width, max_size=width)
    fields = {
        "preference": lambda: {"prompt": prompt, "chosen": draw(completions), "rejected": draw(completions)},
        "joint": lambda: {"prompt_chosen": prompt, "chosen": draw(completions), "prompt_rejected": draw(prompts),
                          "rejected": draw(completions)},
        "unpaired": lambda: {"prompt": prompt, "completion": draw(completions), "label": draw(st.booleans()),
                             "scores": draw(st.floats(-5, 5))},
        "negative": lambda: {"prompt": prompt, "rejected": draw(completions)},
        "list": lambda: {"prompt": prompt, "chosen": draw(completions), "rejected": draw(some)},
        "ranked": lambda: {"prompt": prompt, "completions": draw(some)},
        "samples": lambda: {"prompt": prompt, "samples": draw(some), "rejected": draw(completions)},
        "sft": lambda: {"prompt": prompt, "completion": draw(completions)},
        "context": lambda: {"prompt": prompt, "context": draw(text), "distractor_context": draw(text),
                            "chosen": draw(completions), "rejected": draw(completions)},
    }
    return fields[data_format]()


@st.composite
def spoiled_rows(draw, data_format: str, kind: str, width: int, wild: st.SearchStrategy = WILD) -> dict:
    """A row, sometimes with a field dropped, replaced by a wild value, or added, or of the other kind."""
    if draw(st.integers(0, 9)) == 0:
        kind = "messages" if kind == "text" else "text"
    row = draw(valid_rows(data_format, kind, width, draw(st.sampled_from([CLEAN_TEXT, CLEAN_TEXT, TEXT]))))
    action = draw(st.sampled_from(["keep", "keep", "keep", "drop", "replace", "add"]))
    field = draw(st.sampled_from(sorted(row)))
    if action == "drop":
        del row[field]
    elif action == "replace":
        row[field] = draw(wild)
    elif action == "add":
        row[draw(TEXT)] = draw(wild)
    return row


@st.composite
def files_of_rows(draw, wild: st.SearchStrategy = WILD) -> tuple[str, list]:
    """A data format and the rows of one file (all of one kind, mostly)."""
    data_format, kind, width = draw(FORMATS), draw(st.sampled_from(["text", "messages"])), draw(st.integers(1, 3))
    return data_format, draw(st.lists(spoiled_rows(data_format, kind, width, wild), max_size=4))


# -------------------------------------------------------------------------------------- spoiling the text

def json_text(value, ascii_only: bool, indent: int | None = None) -> bytes:
    """`value` as JSON; without `ascii_only` a lone surrogate becomes invalid UTF-8 (as some tools write it)."""
    return json.dumps(value, ensure_ascii=ascii_only, indent=indent).encode("utf-8", "surrogatepass")


@st.composite
def spoiled_text(draw, text: bytes) -> bytes:
    """`text` as written, or cut short, with a duplicate key, a long integer or deep nesting put into its
    first object, replaced by random bytes or by another format's text."""
    action = draw(st.sampled_from(["keep", "keep", "keep", "cut", "duplicate", "digits", "deep", "bytes", "other"]))
    start = text.find(b"{") + 1
    head, tail = text[:start], text[start:]
    if action == "cut":
        return text[:draw(st.integers(0, max(len(text) - 1, 0)))]
    if action == "duplicate" and start and tail.startswith(b'"'):
        return head + tail[:tail.index(b'"', 1) + 1] + b": 1, " + tail
    if action == "digits" and start:
        return head + b'"n": ' + b"7" * draw(st.sampled_from([400, 4301, 5000])) + b", " + tail
    if action == "deep" and start:
        depth = draw(st.sampled_from([150, 3000, 100_000]))
        return head + b'"deep": ' + b"[" * depth + b"]" * depth + b", " + tail
    if action == "bytes":
        return draw(st.binary(max_size=12))
    if action == "other":
        return draw(st.sampled_from([b"prompt,chosen,rejected", b'[{"prompt": "p"}]', b'{"a": 1}{"b": 2}',
                                     b"\xef\xbb\xbf", b"PAR1", b"null", b'"text"', b"{}"]))
    return text


# ----------------------------------------------------------------------------------------------- checking

def check_outcome(source, data_format: str, name: str, with_kl: bool = False) -> None:
    """Loading ends in valid examples, or in a DataError whose problems all name `name` and a line or row."""
    located = re.compile(rf"^(?:.*[/\\])?{re.escape(name)}(?:, (?:line|row) \d+[:,] |: (?:{'|'.join(WHOLE_FILE)}))")
    try:
        examples = load_examples(source, data_format, with_kl=with_kl)
    except DataError as error:
        event("DataError")
        str(error).encode("utf-8")  # printable
        for problem in error.problems:
            assert located.match(problem), problem
        return
    event("loaded")
    assert_valid(examples, name)


def assert_valid(examples: list[Example], name: str) -> None:
    """Every example comes from `name`, holds encodable non-empty completions, one kind, one shape."""
    first = examples[0]
    for example in examples:
        assert example.where.startswith(f"{name}, ")
        assert example.conversational == first.conversational and example.slots == first.slots
        json.dumps([example.groups, example.label, example.scores], allow_nan=False).encode("utf-8")
        for _, completions in example.groups:
            assert all(completions)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


# -------------------------------------------------------------------------------------------------- tests

@FUZZ
@given(files_of_rows(), st.data())
def test_jsonl_lines(folder, rows_of_format, data):
    data_format, rows = rows_of_format
    ascii_only = data.draw(st.booleans())
    lines = [data.draw(spoiled_text(json_text(row, ascii_only))) for row in rows]
    ending = data.draw(st.sampled_from([b"\n", b"\r\n", b"\n\n"]))
    path = folder / "rows.jsonl"
    path.write_bytes(ending.join(lines) + data.draw(st.sampled_from([b"", ending])))
    check_outcome(path, data_format, path.name, with_kl=data_format == "unpaired" and data.draw(st.booleans()))


@FUZZ
@given(files_of_rows(), st.booleans(), st.booleans(), st.data())
def test_json_document(folder, rows_of_format, wrapped, ascii_only, data):
    data_format, rows = rows_of_format
    document = {"data": rows} if wrapped else rows
    path = folder / "rows.json"
    text = json_text(document, ascii_only, data.draw(st.sampled_from([None, 1])))
    path.write_bytes(data.draw(spoiled_text(text)))
    check_outcome(path, data_format, path.name)


@st.composite
def spoiled_csv(draw, text: str) -> str:
    """CSV text as written, cut short, with a stray quote put in, or a header column named twice."""
    action = draw(st.sampled_from(["keep", "keep", "cut", "quote", "header"]))
    if action == "cut":
        return text[:draw(st.integers(0, len(text)))]
    if action == "quote":
        at = draw(st.integers(0, len(text)))
        return text[:at] + '"' + text[at:]
    if action == "header" and "," in text:
        first = text.split(",", 1)[0]
        return f"{first},{text}"
    return text


def csv_cell(value) -> str:
    """How a value lands in a CSV cell: strings as they are, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@FUZZ
@given(files_of_rows(), st.data())
def test_csv(folder, rows_of_format, data):
    data_format, rows = rows_of_format
    header = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, quoting=data.draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])))
    writer.writerows([header] + [[csv_cell(row.get(key, "")) for key in header] for row in rows])
    text = data.draw(spoiled_csv(buffer.getvalue()))
    path = folder / "rows.csv"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    check_outcome(path, data_format, path.name)


PARQUET_WILD = st.none() | st.integers(-5, 5) | st.just("") | st.just(" ")


@FUZZ
@given(files_of_rows(PARQUET_WILD), st.data())
def test_parquet(folder, rows_of_format, data):
    data_format, rows = rows_of_format
    rows = [{key: value for key, value in row.items() if isinstance(key, str) and key.isidentifier()}
            for row in rows]
    try:
        table = pa.Table.from_pylist(rows)
        sink = io.BytesIO()
        pq.write_table(table, sink)
    except (pa.ArrowException, UnicodeEncodeError, OverflowError):  # rows that pyarrow cannot store
        reject()
    raw = sink.getvalue()
    path = folder / "rows.parquet"
    path.write_bytes(raw[:data.draw(st.integers(0, len(raw)))] if data.draw(st.integers(0, 4)) == 0 else raw)
    check_outcome(path, data_format, path.name)


PYTHON_WILD = (WILD | st.integers(4301, 6000).map(lambda digits: 10 ** digits) | st.sampled_from([100_000]).map(nested)
               | st.tuples(TEXT) | st.binary(max_size=3))


@FUZZ
@given(files_of_rows(PYTHON_WILD), st.lists(st.none() | st.integers() | TEXT | st.lists(TEXT), max_size=1))
def test_list_of_dicts(rows_of_format, not_rows):
    data_format, rows = rows_of_format
    check_outcome(rows + not_rows, data_format, "dataset")
