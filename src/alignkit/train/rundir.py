"""The output folder of a run: only an alignkit run folder (or an empty one) is written into, one training at a
time, and only alignkit's own files are ever deleted.

A run folder holds `.alignkit-run` (the marker), `config.yaml`, `metrics.jsonl`, `tensorboard/`,
`checkpoints/` and `final/`. While a training runs it holds an exclusive lock on `.alignkit-lock`
(`fcntl.flock`: released by the kernel when the process ends, even when it is killed).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path
from typing import IO

from alignkit.train.checkpoint import clean_temporary, has_checkpoint, remove_checkpoints
from alignkit.train.config import ConfigError, TrainConfig

MARKER = ".alignkit-run"
LOCK = ".alignkit-lock"
RUN_FILES = ("config.yaml", "metrics.jsonl", "tensorboard", "checkpoints", "final")  # what alignkit writes


def is_run_folder(folder: Path) -> bool:
    return (folder / MARKER).is_file()


def _check(folder: Path, config: TrainConfig, resume: bool) -> None:
    """Refuse a non-empty folder that is not an alignkit run (unless `overwrite`), and a new run over an old one
    (unless `overwrite` or `--resume`)."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output_dir {folder} is a file, not a folder")
    if folder.is_dir() and any(folder.iterdir()) and not is_run_folder(folder) and not config.overwrite:
        raise ConfigError(f"output_dir {folder} is not empty and is not an alignkit run (it has no {MARKER}); "
                          f"choose a new or empty folder, or pass overwrite=true to write alignkit's files "
                          f"({', '.join(RUN_FILES)}) into it")
    if not resume and not config.overwrite and has_checkpoint(folder):
        raise ConfigError(f"output_dir {folder} already holds a run; pass --resume to continue it, "
                          "overwrite=true to start again there, or another output_dir")


def _lock(folder: Path) -> IO:
    handle = (folder / LOCK).open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise ConfigError(f"output_dir {folder} is in use by another training ({holder}); wait for it to end "
                          "or choose another output_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()}")
    handle.flush()
    return handle


def claim(config: TrainConfig, resume: bool) -> IO:
    """Check the output folder, lock it for this run, and prepare it: leftovers of killed writes removed, and
    for a fresh start the previous run's checkpoints, metrics and TensorBoard logs (alignkit's files only).
    Returns the open lock, held until it is closed (or the process ends)."""
    folder = Path(config.output_dir)
    _check(folder, config, resume)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"tool": "alignkit"}) + "\n")
    lock = _lock(folder)
    clean_temporary(folder)
    if not resume:
        remove_checkpoints(folder)
        (folder / "metrics.jsonl").unlink(missing_ok=True)
        shutil.rmtree(folder / "tensorboard", ignore_errors=True)
    return lock
