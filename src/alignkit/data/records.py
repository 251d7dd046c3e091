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
* a Hugging Face Hub dataset ``org/name[@config][::split]`` that is not an existing local path, read from
  the local HF cache or, when the hub is reachable, downloaded (see `alignkit.data.hub`); splits as for a
  saved DatasetDict; ``"org/name::train, row N"``.
* an in-memory ``datasets.Dataset`` or a list of dicts; ``"dataset, row N"``.

`load_prompt_records` also reads prompts from a ``.txt`` file or stdin, one per line.

`read_records` returns the readable rows and the problems of the unreadable ones (so that a caller
validating the rows can report both together, in file order); `load_records` raises the problems.

Lines and rows are numbered from 1. Text files must be UTF-8 (a leading byte-order mark is allowed).
Every row is checked as it is read: a JSON object naming a key twice, an integer too long to convert, a
lone surrogate in a string or key (not valid Unicode), or values nested more than `MAX_DEPTH` levels deep
is an error naming file, line or row, and field (see `alignkit.data.values`); so is a CSV header
naming a column twice.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from alignkit.data.builtin import resolve_source
from alignkit.data.errors import DataError, raise_if_any
from alignkit.data.hub import CONFIG_SEPARATOR, load_hub_dataset, parse_hub_id
from alignkit.data.values import TOO_DEEP, DuplicateKeys, first_repeated, parse_json, row_problem, too_deep_line

if TYPE_CHECKING:
    from datasets import Dataset

SPLIT_SEPARATOR = "::"
SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
JSON_WHITESPACE = " \t\r\n"  # a JSON line of nothing else is blank

Source = Union[str, os.PathLike, "Dataset", list]


@dataclass(frozen=True)
class Record:
    """One row as read, and where it came from (e.g. ``"prefs.jsonl, line 7"``)."""

    data: dict
    where: str


class ReadProblem(NamedTuple):
    """An unreadable line or row: its message (naming file and line or row) and its place among the readable
    records (`before` of them come before it in the source)."""

    before: int
    message: str


class Reading(NamedTuple):
    """What `read_records` got from a source: the readable records, the problems of the unreadable lines or
    rows in source order, and what a problem is about (``"lines"`` or ``"rows"``, for the error message)."""

    records: list[Record]
    problems: list[ReadProblem]
    unit: str = "rows"


def load_records(source: Source) -> list[Record]:
    """Read every row of ``source`` (see the module docstring for the formats).

    Raises DataError naming the file and line/row for unreadable input: invalid UTF-8, malformed JSON,
    a row that is not an object, an unknown file type or a missing path. All bad lines of a file are
    reported in one error. `builtin:<path>` names a file shipped in the package (`alignkit.data.builtin`).
    """
    return _checked(read_records(source))


def _checked(reading: Reading) -> list[Record]:
    """The records of `reading`; its problems, if any, raised as one DataError."""
    raise_if_any([problem.message for problem in reading.problems], reading.unit)
    return reading.records


def read_records(source: Source) -> Reading:
    """The readable rows of ``source`` and the problems of its unreadable lines or rows (`load_records`
    raises those). A source that cannot be read at all (a missing path, an unknown file type, a JSON
    document or CSV file that does not parse, a file not valid UTF-8 other than JSONL) raises DataError."""
    source = resolve_source(source)
    if isinstance(source, list):
        return _from_rows(source, "dataset")
    if not isinstance(source, (str, os.PathLike)):
        return _from_dataset(source, "dataset")
    text, _, split = os.fspath(source).partition(SPLIT_SEPARATOR)
    path = Path(text)
    if path.is_dir():
        return _from_saved_dataset(path, split or None)
    hub_id = None if path.exists() or path.is_symlink() else parse_hub_id(text)
    if hub_id is not None:
        return _from_hub(*hub_id, split or None)
    if split:
        raise DataError(f"{path.name}: '{SPLIT_SEPARATOR}split' only applies to a saved dataset folder or a hub "
                        "dataset (org/name)")
    if not path.is_file():
        raise _not_a_file(path)
    suffix = path.suffix.lower()
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".parquet": _read_parquet, ".csv": _read_csv}
    if suffix not in readers:
        raise DataError(f"{path.name}: unsupported file type {suffix!r}; use one of {', '.join(SUFFIXES)} "
                        "or a folder written by datasets' save_to_disk")
    return readers[suffix](path)


def _not_a_file(path: Path) -> DataError:
    """Why `path`, neither a file nor a folder, cannot be read: missing, a symlink loop, a dangling link."""
    try:
        path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            return DataError(f"{path}: a symlink loop (following its links leads back to a link already followed)")
        if path.is_symlink():
            return DataError(f"{path}: a symlink to a missing target")
        return DataError(f"{path}: no such file or folder")
    return DataError(f"{path}: not a regular file or folder")


def _from_rows(rows: Iterable[Any], name: str) -> Reading:
    """Records for already-parsed rows, numbered from 1; a row that is not a mapping is a problem."""
    records: list[Record] = []
    problems: list[ReadProblem] = []
    for number, row in enumerate(rows, start=1):
        where = f"{name}, row {number}"
        if not isinstance(row, Mapping):
            problems.append(ReadProblem(len(records), f"{where}: expected an object with named fields, "
                                                      f"got {type(row).__name__}"))
        elif (problem := row_problem(row)) is not None:
            problems.append(ReadProblem(len(records), f"{where}{problem}"))
        else:
            records.append(Record(dict(row), where))
    return Reading(records, problems)


def _from_dataset(dataset: Any, name: str) -> Reading:
    """Records for an in-memory ``datasets.Dataset``; a DatasetDict must be narrowed to a split first."""
    from datasets import Dataset, DatasetDict

    if isinstance(dataset, DatasetDict):
        raise DataError(f"{name}: a DatasetDict with splits {sorted(dataset)}; pass one split, e.g. dataset['train']")
    if not isinstance(dataset, Dataset):
        raise DataError(f"unsupported data source of type {type(dataset).__name__}; pass a path, "
                        "a datasets.Dataset or a list of dicts")
    return _from_rows(iter(dataset), name)


def _from_saved_dataset(folder: Path, split: str | None) -> Reading:
    """Records from a ``save_to_disk`` folder; ``split`` picks a DatasetDict split (optional if only one)."""
    from datasets import DatasetDict, load_from_disk

    try:
        loaded = load_from_disk(str(folder))
    except (FileNotFoundError, ValueError) as error:
        raise DataError(f"{folder.name}: not a folder written by datasets' save_to_disk ({error})") from error
    if isinstance(loaded, DatasetDict):
        return _from_split(loaded, split, folder.name, str(folder))
    if split is not None:
        raise DataError(f"{folder.name}: holds a single Dataset without splits; drop '{SPLIT_SEPARATOR}{split}'")
    return _from_rows(iter(loaded), folder.name)


def _from_hub(repo_id: str, config: str | None, split: str | None) -> Reading:
    """Records from hub dataset `repo_id` (config `config`); ``split`` as for a saved DatasetDict."""
    name = repo_id if config is None else f"{repo_id}{CONFIG_SEPARATOR}{config}"
    return _from_split(load_hub_dataset(repo_id, config), split, name, name)


def _from_split(splits: Mapping[str, Any], split: str | None, name: str, origin: str) -> Reading:
    """Records of split `split` of a DatasetDict (optional when it holds only one), named
    ``"name::split, row N"``; `origin` is the source as the user writes it, for the hint."""
    names = sorted(splits)
    if split is None and len(names) == 1:
        split = names[0]
    if split is None:
        raise DataError(f"{name}: holds splits {names}; choose one as '{origin}{SPLIT_SEPARATOR}<split>'")
    if split not in splits:
        raise DataError(f"{name}: no split {split!r}; it holds {names}")
    return _from_rows(iter(splits[split]), f"{name}{SPLIT_SEPARATOR}{split}")


def _read_bytes(path: Path) -> bytes:
    """The file's bytes; an unreadable file is a DataError."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from error


def _decode_lines(raw: bytes, name: str) -> tuple[list[str | None], dict[int, str]]:
    """The lines of `raw` (newline characters kept) decoded strictly as UTF-8 (None for a line that is
    not valid UTF-8), and the problem of each such line by line number. Lines end at ``\\n``, ``\\r\\n``
    or ``\\r``."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines: list[str | None] = []
    undecodable: dict[int, str] = {}
    for number, line in enumerate(raw.splitlines(keepends=True), start=1):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError as error:
            undecodable[number] = f"{name}, line {number}: invalid UTF-8 (byte {error.start + 1} of the line)"
            lines.append(None)
    return lines, undecodable


def _file_lines(path: Path) -> tuple[list[str | None], dict[int, str]]:
    """`_decode_lines` of the file at `path`."""
    return _decode_lines(_read_bytes(path), path.name)


def _read_jsonl(path: Path) -> Reading:
    """One JSON object per line; blank lines skipped; every bad line is a problem."""
    lines, undecodable = _file_lines(path)
    return _json_lines(lines, path.name, undecodable)


def _json_lines(lines: list[str | None], name: str, undecodable: dict[int, str]) -> Reading:
    """A record per JSON line (skipping blank ones); a problem per undecodable line (its message from
    `undecodable`) and per line that is not a valid JSON object."""
    records: list[Record] = []
    problems: list[ReadProblem] = []
    for number, line in enumerate(lines, start=1):
        if line is None:
            problems.append(ReadProblem(len(records), undecodable[number]))
            continue
        if not line.strip(JSON_WHITESPACE):
            continue
        read = _json_line(line, f"{name}, line {number}")
        if isinstance(read, str):
            problems.append(ReadProblem(len(records), read))
        else:
            records.append(read)
    return Reading(records, problems, "lines")


def _json_line(line: str, where: str) -> Record | str:
    """The record of one JSON line, or the problem (a message) of a line that is not a valid JSON object."""
    try:
        row = parse_json(line)
    except json.JSONDecodeError as error:
        return f"{where}: malformed JSON ({error.msg} at column {error.colno})"
    except RecursionError:
        return f"{where}: {TOO_DEEP}"
    if not isinstance(row, dict):
        return f"{where}: expected a JSON object, got {type(row).__name__}"
    if (problem := row_problem(row)) is not None:
        return f"{where}{problem}"
    return Record(dict(row), where)


def _read_json(path: Path) -> Reading:
    """A JSON list of objects, or an object whose single value is that list."""
    lines, undecodable = _file_lines(path)
    raise_if_any(list(undecodable.values()), "lines")
    text = "".join(lines)
    try:
        document = parse_json(text)
    except json.JSONDecodeError as error:
        raise DataError(f"{path.name}, line {error.lineno}: malformed JSON ({error.msg} at column {error.colno})")
    except RecursionError:
        raise DataError(f"{path.name}, line {too_deep_line(text)}: {TOO_DEEP}")
    if (isinstance(document, dict) and not isinstance(document, DuplicateKeys) and len(document) == 1
            and isinstance(next(iter(document.values())), list)):
        document = next(iter(document.values()))
    if not isinstance(document, list):
        raise DataError(f"{path.name}: expected a JSON list of objects (or an object holding one list)")
    return _from_rows(document, path.name)


def _read_parquet(path: Path) -> Reading:
    """Every row of a Parquet file, read with pyarrow."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as error:
        raise DataError(f"{path.name}: cannot read as Parquet ({error})") from error
    return _from_rows(rows, path.name)


def _read_csv(path: Path) -> Reading:
    """A header line, then records parsed strictly by the csv module; every cell stays a string.

    A header naming a column twice, a malformed quote (a quoted cell never closed, or text after its
    closing quote) and a record with more cells than the header are errors; a record with fewer simply
    lacks the trailing fields. Blank lines are skipped.
    """
    lines, undecodable = _file_lines(path)
    raise_if_any(list(undecodable.values()), "lines")
    reader = csv.reader(io.StringIO("".join(lines), newline=""), strict=True)
    header: list[str] | None = None
    records: list[Record] = []
    problems: list[ReadProblem] = []
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
        where = f"{path.name}, line {start}"
        if header is None:
            header = _csv_header(row, where)
            continue
        if len(row) > len(header):
            problems.append(ReadProblem(len(records), f"{where}: {len(row)} cells but the header names "
                                                      f"{len(header)} columns"))
            continue
        records.append(Record(dict(zip(header, row)), where))
    return Reading(records, problems, "lines")


def _csv_header(row: list[str], where: str) -> list[str]:
    """The column names of a CSV header; a name given twice is an error (its cells would overwrite each
    other's). Unnamed columns (empty header cells) may repeat."""
    repeated = first_repeated([name for name in row if name])
    if repeated is not None:
        raise DataError(f"{where}: the header names column '{repeated}' twice")
    return row


def load_prompt_records(source: str, field: str = "prompt") -> list[Record]:
    """Rows holding prompts: any source of `load_records`, a ``.txt`` file (one prompt per line, as
    ``{field: line}``; ``"name.txt, line N"``) or ``-`` for stdin (JSON lines, ``"stdin, line N"``, if
    the first line that is not blank starts with "{"; else one prompt per line, ``"stdin line N"``).
    Blank lines are skipped."""
    if source == "-":
        import sys

        text = sys.stdin.read()
        if text.lstrip().startswith("{"):
            lines, undecodable = _decode_lines(text.encode("utf-8", "surrogatepass"), "stdin")
            return _checked(_json_lines(lines, "stdin", undecodable))
        lines = [line for line in text.splitlines() if line.strip()]
        return [Record({field: line}, f"stdin line {i}") for i, line in enumerate(lines, 1)]
    if str(source).endswith(".txt"):
        lines, undecodable = _file_lines(Path(source))
        raise_if_any(list(undecodable.values()), "lines")
        return [Record({field: line.rstrip("\r\n")}, f"{Path(source).name}, line {i}")
                for i, line in enumerate(lines, 1) if line.strip()]
    return load_records(source)
