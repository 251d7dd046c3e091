"""The output folder of an evaluation: `<name>.json` (every number), `report.md`, `plots/*.png` and the
transcripts (`samples.jsonl`), checked before any model loads and written atomically file by file."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from alignkit.data.writing import OutputPathError, write_json, write_text

PLOTS = "plots"


def prepare_output(out: str | os.PathLike, *, overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> Path:
    """The output folder, created; an existing non-empty folder without `overwrite`, a file, or a folder that
    holds one of `inputs` raise OutputPathError (before any expensive work)."""
    folder = Path(out).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputPathError(f"{folder}: exists and is not a folder; --out names the folder the results go to")
    resolved = folder.resolve()
    for source in inputs:
        path = Path(os.fspath(source)).expanduser().resolve()
        if path == resolved or resolved in path.parents:
            raise OutputPathError(f"{folder}: holds the input {source}; write the results to another folder")
    if folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise OutputPathError(f"{folder}: already holds files; choose a new folder or pass --overwrite")
    (folder / PLOTS).mkdir(parents=True, exist_ok=True)
    return folder


def write_results(folder: Path, name: str, results: dict[str, Any], report: str) -> tuple[Path, Path]:
    """`folder/<name>.json` and `folder/report.md`."""
    return write_json(results, folder / f"{name}.json"), write_text(report, folder / "report.md")


def plot_path(folder: Path, name: str) -> Path:
    """Where plot `name` (without suffix) of an evaluation goes."""
    return folder / PLOTS / f"{name}.png"


def markdown_table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats with 3 decimals."""
    def cell(value: Any) -> str:
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    head = [cell(h) for h in header]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
