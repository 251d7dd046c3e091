"""Read rows (dicts) from files, folders and in-memory datasets, remembering where each row came from.

Supported sources:

* ``.jsonl`` -- one JSON object per line; blank lines are skipped; ``where`` is ``"name.jsonl, line N"``.
* ``.json`` -- a list of objects, or an object whose single value is such a list; ``"name.json, row N"``.
* ``.parquet`` -- read with pyarrow; ``"name.parquet, row N"``.
* ``.csv`` -- a header line, then one row per record (quoted cells may span lines); every cell is a
  string and is never parsed further, so conversational data (message lists) needs JSONL, JSON,
  Parquet or a saved dataset; ``"name.csv, line N"`` (the line on which the record starts).
* a folder written by ``datasets.Dataset.save_to_disk`` or ``DatasetDict.save_to_disk``;
  ``"folder, row N"``. A DatasetDict with one split uses it; with several, pick one with
  ``"folder::split"`` (``"folder::train, row N"``).
* an in-memory ``datasets.Dataset`` or a list of dicts; ``"dataset, row N"``.

`load_prompt_records` also reads prompts from a ``.txt`` file or stdin, one per line.

Lines and rows are numbered from 1. Text files must be UTF-8 (a leading byte-order mark is allowed).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from alignkit.data.errors import DataError, raise_if_any

if TYPE_CHECKING:
    from datasets import Dataset

SPLIT_SEPARATOR = "::"
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")

Source = Union[str, os.PathLike, "Dataset", list]


@dataclass(frozen=True)
class Record:
    """One row as read, and where it came from (e.g. ``"prefs.jsonl, line 7"``)."""

    data: dict
    where: str


def load_records(source: Source) -> list[Record]:
    """Read every row of ``source`` (see the module docstring for the formats).

    Raises DataError naming the file and line/row for unreadable input: invalid UTF-8, malformed JSON,
    a row that is not an object, an unknown file type or a missing path. All bad lines of a file are
    reported in one error.
    """
    if isinstance(source, list):
        return _from_rows(source, "dataset")
    if not isinstance(source, (str, os.PathLike)):
        return _from_dataset(source, "dataset")
    text = os.fspath(source)
    path, _, split = text.partition(SPLIT_SEPARATOR)
    path = Path(path)
    if path.is_dir():
        return _from_saved_dataset(path, split or None)
    if split:
        raise DataError(f"{path.name}: '{SPLIT_SEPARATOR}split' only applies to a saved dataset folder")
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
    if suffix not in readers:
        raise DataError(f"{path.name}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)} "
                        "or a folder written by datasets' save_to_disk")
    return readers[suffix](path)


def _from_rows(rows: Iterable[Any], name: str) -> list[Record]:
    """Records for already-parsed rows, numbered from 1; a row that is not a mapping is an error."""
    records, problems = [], []
    for number, row in enumerate(rows, start=1):
        where = f"{name}, row {number}"
        if isinstance(row, Mapping):
            records.append(Record(dict(row), where))
        else:
            problems.append(f"{where}: expected an object with named fields, got {type(row).__name__}")
    raise_if_any(problems)
    return records


def _from_dataset(dataset: Any, name: str) -> list[Record]:
    """Records for an in-memory ``datasets.Dataset``; a DatasetDict must be narrowed to a split first."""
    from datasets import Dataset, DatasetDict

    if isinstance(dataset, DatasetDict):
        raise DataError(f"{name}: a DatasetDict with splits {sorted(dataset)}; pass one split, e.g. dataset['train']")
    if not isinstance(dataset, Dataset):
        raise DataError(f"unsupported data source of type {type(dataset).__name__}; pass a path, "
                        "a datasets.Dataset or a list of dicts")
    return _from_rows(iter(dataset), name)


def _from_saved_dataset(folder: Path, split: str | None) -> list[Record]:
    """Records from a ``save_to_disk`` folder; ``split`` picks a DatasetDict split (optional if only one)."""
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(folder))
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"{folder.name}: not a folder written by datasets' save_to_disk ({error})") from error
    name = folder.name
    if isinstance(loaded, DatasetDict):
        splits = sorted(loaded)
        if split is None and len(splits) == 1:
            split = splits[0]
        if split is None:
            raise DataError(f"{name}: holds splits {splits}; choose one as '{folder}{SPLIT_SEPARATOR}<split>'")
        if split not in loaded:
            raise DataError(f"{name}: no split {split!r}; it holds {splits}")
        return _from_rows(iter(loaded[split]), f"{name}{SPLIT_SEPARATOR}{split}")
    if split is not None:
        raise DataError(f"{name}: holds a single Dataset without splits; drop '{SPLIT_SEPARATOR}{split}'")
    return _from_rows(iter(loaded), name)


def _decode_lines(path: Path) -> tuple[list[str | None], list[str]]:
    """The file's lines (newline characters kept) decoded strictly as UTF-8 (None for a line that is
    not valid UTF-8), and one problem per such line. Lines end at ``\\n``, ``\\r\\n`` or ``\\r``."""
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines, problems = [], []
    for number, line in enumerate(raw.splitlines(keepends=True), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            problems.append(f"{path.name}, line {number}: invalid UTF-8 (byte {error.start + 1} of the line)")
            lines.append(None)
    return lines, problems


def _read_jsonl(path: Path) -> list[Record]:
    """One JSON object per line; blank lines skipped; all bad lines reported together."""
    lines, problems = _decode_lines(path)
    records = []
    for number, line in enumerate(lines, start=1):
        if line is None or not line.strip():
            continue
        where = f"{path.name}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"{where}: malformed JSON ({error.msg} at column {error.colno})")
            continue
        if isinstance(row, dict):
            records.append(Record(row, where))
        else:
            problems.append(f"{where}: expected a JSON object, got {type(row).__name__}")
    raise_if_any(problems, "lines")
    return records


def _read_json(path: Path) -> list[Record]:
    """A JSON list of objects, or an object whose single value is that list."""
    lines, problems = _decode_lines(path)
    raise_if_any(problems, "lines")
    try:
        document = json.loads("".join(lines))
    except json.JSONDecodeError as error:
        raise DataError(f"{path.name}, line {error.lineno}: malformed JSON ({error.msg} at column {error.colno})")
    if isinstance(document, dict) and len(document) == 1 and isinstance(next(iter(document.values())), list):
        document = next(iter(document.values()))
    if not isinstance(document, list):
        raise DataError(f"{path.name}: expected a JSON list of objects (or an object holding one list)")
    return _from_rows(document, path.name)


def _read_parquet(path: Path) -> list[Record]:
    """Every row of a Parquet file, read with pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path.name}: cannot read as Parquet ({error})") from error
    return _from_rows(table.to_pylist(), path.name)


def _read_csv(path: Path) -> list[Record]:
    """A header line, then records parsed by the csv module; every cell stays a string.

    A record with more cells than the header is an error; a record with fewer simply lacks the
    trailing fields. Blank lines are skipped.
    """
    lines, problems = _decode_lines(path)
    raise_if_any(problems, "lines")
    reader = csv.reader(io.StringIO("".join(lines), newline=""))
    header: list[str] | None = None
    records = []
    previous_line = 0
    while True:
        try:
            row = next(reader, None)
        except csv.Error as error:
            raise DataError(f"{path.name}, line {previous_line + 1}: malformed CSV ({error})") from error
        if row is None:
            break
        start, previous_line = previous_line + 1, reader.line_num
        if not row:
            continue
        if header is None:
            header = row
            continue
        where = f"{path.name}, line {start}"
        if len(row) > len(header):
            problems.append(f"{where}: {len(row)} cells but the header names {len(header)} columns")
            continue
        records.append(Record(dict(zip(header, row)), where))
    raise_if_any(problems, "lines")
    return records


def load_prompt_records(source: str, field: str = "prompt") -> list[Record]:
    """Rows holding prompts: any source of `load_records`, a ``.txt`` file (one prompt per line, as
    ``{field: line}``; ``"name.txt, line N"``) or ``-`` for stdin (JSON lines if the first line starts with
    "{", else one prompt per line; ``"stdin line N"``). Blank lines are skipped."""
    if source == "-":
        import sys

        lines = [line for line in sys.stdin.read().splitlines() if line.strip()]
        if lines and lines[0].lstrip().startswith("{"):
            return _from_rows([json.loads(line) for line in lines], "stdin")
        return [Record({field: line}, f"stdin line {i}") for i, line in enumerate(lines, 1)]
    if str(source).endswith(".txt"):
        lines, problems = _decode_lines(Path(source))
        raise_if_any(problems, "lines")
        return [Record({field: line.rstrip("\r\n")}, f"{Path(source).name}, line {i}")
                for i, line in enumerate(lines, 1) if line.strip()]
    return load_records(source)
