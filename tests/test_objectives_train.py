"""Every registered objective through the real trainer on a tiny model: its loss goes down and the
weights change (the same 4 rows every step, so the loss is comparable across steps)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import alignkit.objectives as objectives
from alignkit.train import load_config, train


def _say(text):
    return [{"role": "assistant", "content": text}]


def _ask(text):
    return [{"role": "user", "content": text}]


def rows_for(data_format: str) -> list[dict]:
    """Four rows of `data_format` with answers of different lengths."""
    rows = []
    for i in range(4):
        prompt, good, bad = _ask(f"Describe {i} briefly."), _say(f"{i} is a number." + " Yes." * i), _say("No" + "!" * i)
        rows.append({
            "preference": {"prompt": prompt, "chosen": good, "rejected": bad},
            "joint": {"prompt_chosen": prompt, "chosen": good, "prompt_rejected": _ask(f"Insult {i}."),
                      "rejected": bad},
            "unpaired": {"prompt": prompt, "completion": good if i % 2 else bad, "label": bool(i % 2),
                         "scores": [0.5 + i]},
            "negative": {"prompt": prompt, "rejected": bad},
            "list": {"prompt": prompt, "chosen": good, "rejected": [bad, _say("Maybe" + "?" * i)]},
            "ranked": {"prompt": prompt, "completions": [good, _say("Maybe" + "?" * i), bad]},
            "samples": {"prompt": prompt, "samples": [good, _say(f"It is {i}.")], "rejected": bad},
            "sft": {"prompt": prompt, "completion": good, "scores": [-2.0 - i]},
        }[data_format])
    return rows


def metrics(output_dir) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", [objective.name for objective in objectives.available()])
def test_objective_trains_through_the_trainer(name, tmp_path, tiny_chat_model_dir, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    objective = objectives.get(name)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows_for(objective.data_format)))
    result = train(load_config(None, [
        f"model.name_or_path={tiny_chat_model_dir}", f"data.train={data}", f"objective.name={name}",
        "batch_size=4", "max_steps=4", "optim.lr=1e-3", "optim.schedule=constant", "progress=false",
        "tensorboard=false", f"output_dir={tmp_path / 'run'}", "reference.cache=false"]))
    losses = [row["loss"] for row in metrics(result.output_dir)]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], f"{name}: loss did not go down: {losses}"
    before = load_file(next(tiny_chat_model_dir.glob("*.safetensors")))
    after = load_file(result.final_dir / "model.safetensors")
    assert max((after[k] - before[k]).abs().max().item() for k in before) > 1e-4
