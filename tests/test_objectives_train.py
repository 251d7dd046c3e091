"""Every registered objective through the real trainer on a tiny model: the first step's loss and metrics equal
the objective applied to log-probs (or rewards) computed independently, one sequence at a time from full
logits; then the loss goes down and the weights change (the same 4 rows every step)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

import alignkit.objectives as objectives
from alignkit.objectives.registry import FORMATS
from alignkit.train import Trainer, load_config


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
            "context": {"prompt": prompt, "context": f"Note: {i} is a number.", "distractor_context": "Cats purr.",
                        "chosen": good, "rejected": bad},
        }[data_format])
    return rows


@torch.no_grad()
def naive_scores(model, prompt: tuple, completion: tuple, head: str) -> tuple[float, float]:
    """(value, tokens) of one completion scored alone: its summed log-prob from a full-logits forward, or the
    reward head at its last token."""
    ids = torch.tensor([list(prompt) + list(completion)])
    if head == "reward":
        hidden = model.model(input_ids=ids).last_hidden_state[0, -1]
        return model.score(hidden).double(), float(len(completion))
    logps = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
    targets = ids[0, len(prompt):]
    return logps[len(prompt) - 1:].gather(1, targets[:, None]).sum(), float(len(completion))


def expected_first_step(objective, model, examples) -> tuple[float, dict[str, float]]:
    """The objective on inputs built by hand from `naive_scores` (the reference is the initial model itself)."""
    kinds = dict(FORMATS[objective.data_format])
    per_slot: dict[str, list] = {}
    for example in examples:
        scored = [naive_scores(model, prompt, completion, objective.head)
                  for prompt, completions in example.groups for completion in completions]
        start = 0
        for slot, size in example.slots:
            per_slot.setdefault(slot, []).append(scored[start:start + size])
            start += size
    values = {}
    for slot, rows in per_slot.items():
        value = torch.stack([torch.stack([torch.as_tensor(v) for v, _ in row]) for row in rows])  # [B, M, ...]
        tokens = torch.tensor([[n for _, n in row] for row in rows], dtype=torch.float64)
        if kinds[slot] == "one":
            value, tokens = value[:, 0], tokens[:, 0]
        if objective.head == "reward":
            values[f"{slot}_rewards"] = value.squeeze(-1) if value.size(-1) == 1 else value
            continue
        logps = value if objective.logps == "sum" else value / tokens
        values.update({f"policy_{slot}_logps": logps, f"ref_{slot}_logps": logps, f"{slot}_lengths": tokens})
    if examples[0].label is not None:
        values["labels"] = torch.tensor([e.label for e in examples], dtype=torch.float64)
    if examples[0].scores:
        values["scores"] = torch.tensor([e.scores for e in examples], dtype=torch.float64)
    state = {"state": objective.state()} if objective.state else {}
    losses, metrics = objective.fn(**{name: values[name] for name in objective.inputs if name in values},
                                   **objective.defaults, **state)  # optional inputs the rows lack are left out
    return losses.mean().item(), {key: value.double().mean().item() for key, value in metrics.items()}


@pytest.mark.parametrize("name", [objective.name for objective in objectives.available()
                                  if objective.data_format != "prompts"])  # online ones: tests/test_online_train.py
def test_objective_trains_through_the_trainer(name, tmp_path, tiny_chat_model_dir, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    objective = objectives.get(name)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows_for(objective.data_format)))
    trainer = Trainer.prepare(load_config(None, [
        f"model.name_or_path={tiny_chat_model_dir}", f"data.train={data}", f"objective.name={name}",
        "batch_size=4", "max_steps=4", "optim.lr=1e-3", "optim.schedule=constant", "progress=false",
        "report_to=none", f"output_dir={tmp_path / 'run'}", "reference.cache=false"]))
    initial = copy.deepcopy(trainer.model).double().eval()
    steps = [trainer.step() for _ in range(4)]
    trainer.finish(steps[-1])

    loss, metrics = expected_first_step(objective, initial, trainer.source.examples)
    assert steps[0]["loss"] == pytest.approx(loss, abs=2e-5, rel=1e-5), name
    for key, value in metrics.items():
        assert steps[0][key] == pytest.approx(value, abs=2e-5, rel=1e-5), (name, key)
    losses = [step["loss"] for step in steps]
    assert losses[-1] < losses[0], f"{name}: loss did not go down: {losses}"
    trained = trainer.model.state_dict()
    assert max((trained[k].double() - v).abs().max().item() for k, v in initial.state_dict().items()) > 1e-4
