"""One DPO step on the real default model (SmolLM2-135M-Instruct, fp32): the path `make demo` takes."""

from __future__ import annotations

import json
import math

import pytest
from safetensors.torch import load_file

from alignkit.models import DEFAULT_MODEL, load
from alignkit.train.config import load_config
from alignkit.train.loop import train

pytestmark = pytest.mark.slow

PAIRS = [
    ("Name a colour. Answer in at most 3 words.", "Blue.", "A colour that I like a lot is the colour blue, really."),
    ("What is 2 + 2? Answer in lowercase.", "four.", "The Answer Is Four."),
]


def test_one_dpo_step_on_the_default_model(tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({
        "prompt": [{"role": "user", "content": p}],
        "chosen": [{"role": "assistant", "content": c}],
        "rejected": [{"role": "assistant", "content": r}],
    }) + "\n" for p, c, r in PAIRS))
    result = train(load_config(None, [
        f"model.name_or_path={DEFAULT_MODEL}", f"data.train={data}", f"output_dir={tmp_path / 'run'}",
        "batch_size=2", "max_steps=1", "optim.lr=1e-5", "progress=false", "report_to=none",
        "save_final_only=true",  # final/ only: a resumable checkpoint adds 1.6 GB of weights and Adam state
    ]))
    metrics = json.loads((result.output_dir / "metrics.jsonl").read_text())
    assert metrics["loss"] == pytest.approx(math.log(2), abs=1e-5)  # policy == reference before the step
    assert math.isfinite(metrics["grad_norm"]) and metrics["grad_norm"] > 0
    trained = load_file(result.final_dir / "model.safetensors")
    original = load(DEFAULT_MODEL).model.state_dict()
    moved = max((trained[k] - original[k]).abs().max().item() for k in trained)
    assert 0 < moved < 1e-3  # one Adam step of lr 1e-5 moves weights by about lr
