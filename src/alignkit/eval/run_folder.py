"""Reading a training run's folder, as `alignkit train` writes it: `config.yaml` (the configuration, after
comment lines `# <UTC time> started at step 0` / `# <UTC time> resumed at step N ...`), `metrics.jsonl` (one
JSON object per logged step: `step`, `loss`, the objective's metrics such as `rewards/margins`, `grad_norm`,
`lr`, `tokens_in_step`, `tokens_per_s`, `tokens_seen`, and `eval/...` keys on the steps the eval split was
scored), `checkpoints/step-NNNNNN/` (complete once its `manifest.json` is written) and `final/` (renamed into
place complete, with `training_state.json`).

Everything is checked before any output is written: a folder that is not a run, a missing or empty
`metrics.jsonl`, or a damaged line (named by file and line) raise ValueError / FileNotFoundError.
"""

from __future__ import annotations

import calendar
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from alignkit.data import DataError

MARKER = ".alignkit-run"  # the layout alignkit.train writes (train/rundir.py, train/checkpoint.py)
CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
FINAL = "final"
FINAL_STATE = "training_state.json"
CHECKPOINTS = "checkpoints"
CHECKPOINT_PREFIX = "step-"
CHECKPOINT_MANIFEST = "manifest.json"
STAMP = "%Y-%m-%dT%H:%M:%SZ"


@dataclass(frozen=True)
class RunStatus:
    """Whether the run finished (`final/` written) and, if not, its newest complete checkpoint."""

    finished: bool
    steps: int  # optimizer steps done: final/training_state.json's, else the last logged step
    checkpoint: str | None  # e.g. "checkpoints/step-000025" (newest with its manifest), None if none

    def describe(self) -> str:
        if self.finished:
            return f"finished: `{FINAL}/` written after step {self.steps}"
        where = f"last complete checkpoint `{self.checkpoint}/`" if self.checkpoint else "no complete checkpoint"
        return f"stopped (no `{FINAL}/`): last logged step {self.steps}, {where}"


@dataclass(frozen=True)
class Run:
    """One run folder, read and checked."""

    folder: Path
    config: dict[str, Any]  # config.yaml as a mapping
    history: list[str]  # its start and resume lines, e.g. "2026-12-02T10:23:26Z started at step 0"
    rows: list[dict[str, float]]  # metrics.jsonl, in step order, `step` included
    status: RunStatus
    metrics_written: float  # metrics.jsonl's modification time (epoch seconds): when its last line was written

    def keys(self) -> list[str]:
        """The logged metric names (not `step`), in order of first appearance."""
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.update((key, None) for key in row if key != "step")
        return list(seen)

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of the lines that logged `key`."""
        pairs = [(int(row["step"]), float(row[key])) for row in self.rows if key in row]
        return [s for s, _ in pairs], [v for _, v in pairs]

    def started(self) -> float | None:
        """Epoch seconds of the first start line of config.yaml (None if it has none)."""
        if not self.history:
            return None
        return float(calendar.timegm(time.strptime(self.history[0].split(" ", 1)[0], STAMP)))


def read_run(folder: str | Path) -> Run:
    """The run in `folder`, checked: ValueError/FileNotFoundError naming the folder, file and line."""
    folder = Path(folder)
    if not folder.exists():
        raise FileNotFoundError(f"{folder}: no such run folder")
    if not folder.is_dir():
        raise ValueError(f"{folder}: is a file, not a training run folder")
    if not (folder / MARKER).is_file() and not (folder / CONFIG).is_file():
        raise ValueError(f"{folder}: not an alignkit training run (it has neither {MARKER} nor {CONFIG}); "
                         "name the output_dir of `alignkit train`")
    config_text = _required(folder, CONFIG, "the run's configuration").read_text(encoding="utf-8")
    rows = read_metrics(_required(folder, METRICS, "the logged steps; the run has not logged a step yet"))
    return Run(folder=folder, config=_parse_config(folder / CONFIG, config_text), history=config_history(config_text),
               rows=rows, status=run_status(folder, rows[-1]["step"]),
               metrics_written=(folder / METRICS).stat().st_mtime)


def _required(folder: Path, name: str, what: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {name} ({what})")
    return path


def _parse_config(path: Path, text: str) -> dict[str, Any]:
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a mapping of configuration keys")
    return config


def config_history(text: str) -> list[str]:
    """The start/resume comment lines of a config.yaml, without the leading '# '."""
    return [line[2:] for line in text.splitlines() if line.startswith("# 2")]


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Every line of a metrics.jsonl: a JSON object with an integer `step` (increasing) and numbers.
    DataError naming the file and line for the first bad one."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if not lines:
        raise DataError(f"{path}: empty (no step logged yet)")
    rows: list[dict[str, float]] = []
    for number, line in enumerate(lines, start=1):
        where = f"{path}, line {number}"
        if number == len(lines) and not text.endswith("\n"):
            where += " (the last line, unterminated: a write cut short?)"
        row = _metrics_row(line, where)
        if rows and row["step"] <= rows[-1]["step"]:
            raise DataError(f"{where}: step {row['step']} follows step {rows[-1]['step']}; the lines must be "
                            "in increasing step order")
        rows.append(row)
    return rows


def _metrics_row(line: str, where: str) -> dict[str, float]:
    if not line.strip():
        raise DataError(f"{where}: empty line")
    try:
        row = json.loads(line)
    except ValueError as err:
        raise DataError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: not a JSON object")
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise DataError(f"{where}: no non-negative integer 'step' (got {step!r})")
    for key, value in row.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(f"{where}: '{key}' is not a number (got {value!r})")
    return row


def run_status(folder: Path, last_step: int) -> RunStatus:
    """Finished when `final/` holds its `training_state.json` (its step count is the run's); otherwise the
    newest checkpoint with a manifest (presence only: `alignkit train --resume` verifies the hashes)."""
    state = folder / FINAL / FINAL_STATE
    if state.is_file():
        try:
            steps = int(json.loads(state.read_text())["step"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{state}: unreadable ({err})") from None
        return RunStatus(finished=True, steps=steps, checkpoint=None)
    complete = sorted(p for p in (folder / CHECKPOINTS).glob(f"{CHECKPOINT_PREFIX}*")
                      if p.name[len(CHECKPOINT_PREFIX):].isdigit() and (p / CHECKPOINT_MANIFEST).is_file())
    newest = f"{CHECKPOINTS}/{complete[-1].name}" if complete else None
    return RunStatus(finished=False, steps=last_step, checkpoint=newest)


def step_seconds(run: Run) -> tuple[float, int] | None:
    """Σ tokens_in_step / tokens_per_s over the logged lines (each optimizer step's own duration, as the trainer
    measured it: without loading, reference scoring, evaluation and checkpoints) and how many lines counted."""
    durations = [row["tokens_in_step"] / row["tokens_per_s"] for row in run.rows
                 if row.get("tokens_per_s", 0) > 0 and math.isfinite(row.get("tokens_in_step", math.nan))]
    return (sum(durations), len(durations)) if durations else None


def wall_seconds(run: Run) -> float | None:
    """From the first start (config.yaml) to the last metrics line (metrics.jsonl's modification time): loading,
    reference scoring, evaluation, checkpoints and any pause before a resume included. None without a start line."""
    started = run.started()
    return None if started is None else run.metrics_written - started
