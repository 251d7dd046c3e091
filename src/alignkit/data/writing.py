"""Write derived datasets: always a new `.jsonl` file, written atomically, never over its input.

Every `alignkit sample / score / data ...` verb reads one dataset and writes another. `check_output` is
called before any expensive work (so a bad `--out` fails in a second, not after an hour of sampling);
`write_jsonl` and `write_json` write to a temporary file in the destination folder and `os.replace` it
into place, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from alignkit.data.records import SPLIT_SEPARATOR


class OutputPathError(FileExistsError):
    """`--out` names an input, or an existing file without `--overwrite`."""


def _input_path(source: str | os.PathLike) -> Path:
    """The file or folder an input source names (`folder::split` names `folder`)."""
    return Path(os.fspath(source).partition(SPLIT_SEPARATOR)[0]).expanduser().resolve()


def check_output(out: str | os.PathLike, inputs: Sequence[str | os.PathLike] = (), *, overwrite: bool = False,
                 suffix: str | None = ".jsonl") -> Path:
    """Validate an output path and return it.

    Refuses (OutputPathError) an output that is one of `inputs` (even with `overwrite`: a verb never
    replaces its input), and an existing output unless `overwrite`. With `suffix`, the name must end in it
    (so the result is readable by `load_records`). The parent folder is created.
    """
    path = Path(out).expanduser()
    if suffix and path.suffix.lower() != suffix:
        raise OutputPathError(f"{path}: the output must be a {suffix} file (got {path.suffix or 'no suffix'!r})")
    resolved = path.resolve()
    for source in inputs:
        if resolved == _input_path(source):
            raise OutputPathError(f"{path}: is an input of this command; write the result to a new file "
                                  "(inputs are never overwritten)")
    if path.exists() and not overwrite:
        raise OutputPathError(f"{path}: already exists; choose a new name or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write(path: Path, chunks: Iterable[str]) -> Path:
    """Write `chunks` (UTF-8) to a temporary file next to `path`, fsync, then `os.replace` it to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_jsonl(rows: Iterable[dict], out: str | os.PathLike, *, inputs: Sequence[str | os.PathLike] = (),
                overwrite: bool = False) -> Path:
    """Write one JSON object per line to `out` atomically (after `check_output`); returns the path."""
    path = check_output(out, inputs, overwrite=overwrite)
    return _atomic_write(path, (json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def sidecar_path(out: str | os.PathLike, name: str) -> Path:
    """A file stored next to a dataset: `sidecar_path("x/train.jsonl", "buckets")` is `x/train.buckets.json`."""
    path = Path(out)
    return path.with_name(f"{path.stem}.{name}.json")


def write_json(document: Any, path: str | os.PathLike) -> Path:
    """Write one JSON document (indented) atomically."""
    return _atomic_write(Path(path), [json.dumps(document, ensure_ascii=False, indent=2) + "\n"])


def write_text(text: str, path: str | os.PathLike) -> Path:
    """Write a text file (UTF-8) atomically."""
    return _atomic_write(Path(path), [text])
