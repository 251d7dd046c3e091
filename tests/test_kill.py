"""A training process killed with SIGKILL — while it precomputes reference log-probs, while it writes a
checkpoint, and at a random moment of a step — resumes (`--resume`) to exactly the parameters of a run that was
never interrupted, and leaves nothing half-written behind."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from conftest import write_pairs
from safetensors.torch import load_file


def launch(arguments: list[str], cache: Path) -> tuple[subprocess.Popen, list[str]]:
    """The CLI in a new process; its stderr lines are collected as they come."""
    process = subprocess.Popen([sys.executable, "-m", "alignkit.cli.main", "train", *arguments],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "ALIGNKIT_CACHE": str(cache), "OMP_NUM_THREADS": "1"})
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    return process, lines


def kill_when(process: subprocess.Popen, moment, timeout: float = 300) -> bool:
    """SIGKILL `process` as soon as `moment()` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if moment():
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.001)
    return False


def test_sigkill_at_any_moment_then_resume_equals_the_uninterrupted_run(tmp_path, tiny_chat_model_dir):
    data = write_pairs(tmp_path / "prefs.jsonl")
    common = [f"model.name_or_path={tiny_chat_model_dir}", f"data.train={data}", "optim.lr=1e-3", "batch_size=2",
              "max_steps=6", "save_every=1", "keep_checkpoints=2", "progress=false", "report_to=none", "seed=5"]
    straight, _ = launch(common + [f"output_dir={tmp_path / 'straight'}"], tmp_path / "cache-straight")
    assert straight.wait(timeout=300) == 0

    run, cache = tmp_path / "killed", tmp_path / "cache-killed"
    rng = random.Random(0)
    moments = {
        "reference precompute": lambda lines: any("reference log-probs: computing" in line for line in lines),
        "checkpoint writing": lambda lines: any((run / "checkpoints").glob(".tmp-*")),
        "a step": lambda lines: (run / "metrics.jsonl").exists()
        and len((run / "metrics.jsonl").read_text().splitlines()) >= 4 and rng.random() < 0.01,
    }
    landed = {}
    for number, (name, moment) in enumerate(moments.items()):
        process, lines = launch(common + [f"output_dir={run}"] + (["--resume"] if number else []), cache)
        landed[name] = kill_when(process, lambda: moment(lines))
    assert all(landed.values()), landed  # every kill happened before the process could finish
    for _ in range(3):  # resume until done (a later kill may have landed before the next checkpoint)
        process, lines = launch(common + [f"output_dir={run}", "--resume"], cache)
        if process.wait(timeout=300) == 0:
            break
    assert process.returncode == 0, "".join(lines)[-3000:]

    expected = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    got = load_file(run / "final" / "model.safetensors")
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)
    assert [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()] == list(range(1, 7))
    assert not list((run / "checkpoints").glob(".tmp-*")) and not list(run.glob(".final.*"))
