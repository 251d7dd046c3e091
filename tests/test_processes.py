"""Several processes (torchrun, gloo on the CPU) give the single-process result with the same global batch, for
ragged tails too: a last micro-batch with fewer examples than processes leaves some processes without any, and
they still take part in the gradient synchronisation without adding to it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_pairs
from safetensors.torch import load_file

from alignkit.train import load_config, train


# (processes, batch per process, accumulation): 5 rows, so every layout ends in a ragged tail
GRID = [(2, 2, 1), (2, 1, 2), (3, 1, 1), (3, 2, 2)]


@pytest.mark.parametrize("processes, batch_size, grad_accum", GRID, ids=lambda v: str(v))
def test_ragged_tails_on_several_processes_equal_one_process(tmp_path, tiny_chat_model_dir, monkeypatch, processes,
                                                             batch_size, grad_accum):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    data = write_pairs(tmp_path / "prefs.jsonl", 5)
    common = [f"model.name_or_path={tiny_chat_model_dir}", f"data.train={data}", "optim.lr=1e-3", "epochs=2",
              "progress=false", "report_to=none", f"grad_accum={grad_accum}", "seed=1"]
    single = train(load_config(None, common + [f"batch_size={batch_size * processes}",
                                               f"output_dir={tmp_path / 'one'}"]))
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node", str(processes), "-m", "alignkit.cli.main", "train", *common,
               f"batch_size={batch_size}", f"output_dir={tmp_path / 'many'}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    many = load_file(tmp_path / "many" / "final" / "model.safetensors")
    ones = load_file(single.final_dir / "model.safetensors")
    worst = max((many[k] - ones[k]).abs().max().item() for k in ones)
    assert worst <= 1e-5, worst
    initial = load_file(next(tiny_chat_model_dir.glob("*.safetensors")))
    assert max((ones[k] - initial[k]).abs().max().item() for k in initial) > 1e-4  # training moved the weights
    logged = [json.loads(line) for line in (tmp_path / "many" / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(line) for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == [m["step"] for m in expected]
    assert torch.allclose(torch.tensor([m["loss"] for m in logged]), torch.tensor([m["loss"] for m in expected]),
                          atol=1e-5)
