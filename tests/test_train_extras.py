"""What TRL users reach for around training: an eval split, trackers, lean checkpoints, and warnings about runs
that would not do what their configuration says."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from conftest import write_pairs
from safetensors.torch import load_file

from alignkit.train import Trainer, load_config, train
from alignkit.train.setup import warn_if_one_of_several


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def overrides(tmp_path, tiny_chat_model_dir):
    return [f"model.name_or_path={tiny_chat_model_dir}", f"data.train={write_pairs(tmp_path / 'prefs.jsonl')}",
            "optim.lr=1e-3", "progress=false", "report_to=none", "batch_size=2", "seed=3"]


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# ---------------------------------------------------------------------------------------------------- eval

def test_eval_split_is_scored_every_eval_every_steps_and_at_the_end(tmp_path, overrides):
    held_out = write_pairs(tmp_path / "held_out.jsonl", n=3)
    run = tmp_path / "run"
    train(load_config(None, overrides + [f"data.eval={held_out}", "eval_every=2", "max_steps=5", f"output_dir={run}"]))
    lines = metrics(run)
    assert [m["step"] for m in lines] == [1, 2, 3, 4, 5]
    assert [("eval/loss" in m) for m in lines] == [False, True, False, True, True]
    first = lines[1]
    assert {"eval/rewards/margins", "eval/rewards/accuracies"} <= first.keys() and "eval/tokens_in_step" not in first
    assert math.isfinite(first["eval/loss"]) and first["eval/loss"] != first["loss"]


def test_eval_loss_equals_the_objective_on_the_held_out_rows(tmp_path, overrides):
    """At the reference (before any update moves the policy) every DPO loss is ln 2: an eval after a step with
    lr 0 must read exactly that, over all held-out rows (an odd count, two per batch)."""
    held_out = write_pairs(tmp_path / "held_out.jsonl", n=5)
    trainer = Trainer.prepare(load_config(None, overrides + [f"data.eval={held_out}", "optim.lr=1e-30",
                                                             "max_steps=1", f"output_dir={tmp_path / 'run'}"]))
    result = trainer.evaluate()
    trainer.close()
    assert result["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert result["eval/rewards/margins"] == pytest.approx(0.0, abs=1e-6)


def test_eval_fraction_holds_out_rows_and_caches_their_reference(tmp_path, overrides):
    run = tmp_path / "run"
    trainer = Trainer.prepare(load_config(None, overrides + ["data.eval_fraction=0.25", "max_steps=2",
                                                             f"output_dir={run}"]))
    assert len(trainer.eval_set.examples) == 2 and len(trainer.source.examples) == 6
    held = {example.where for example in trainer.eval_set.examples}
    assert held.isdisjoint(example.where for example in trainer.source.examples)
    trainer.close()
    assert len(list((tmp_path / "cache" / "reference_logps").glob("*.safetensors"))) == 2  # train and eval


def test_evaluation_does_not_change_a_stateful_objective(tmp_path, tiny_chat_model_dir):
    rows = [{"prompt": f"Q{i}", "completion": f" A{i}", "label": bool(i % 2)} for i in range(8)]
    data = tmp_path / "u.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    trainer = Trainer.prepare(load_config(None, [
        f"model.name_or_path={tiny_chat_model_dir}", f"data.train={data}", "objective.name=bco",
        "data.eval_fraction=0.25", "max_steps=2", "progress=false", "report_to=none", "batch_size=2",
        f"output_dir={tmp_path / 'run'}"]))
    trainer.step()
    before = trainer.params["state"].state_dict()
    trainer.evaluate()
    assert trainer.params["state"].state_dict() == before
    trainer.close()


# ------------------------------------------------------------------------------------------------ trackers

def test_wandb_offline_and_mlflow_file_store(tmp_path, overrides, monkeypatch):
    pytest.importorskip("wandb")
    pytest.importorskip("mlflow")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps the local file store behind a flag
    run = tmp_path / "run"
    train(load_config(None, overrides + ["report_to=[wandb,mlflow,tensorboard]", "max_steps=2", f"output_dir={run}"]))
    assert list((run / "wandb").glob("offline-run-*"))
    import mlflow

    (experiment,) = [e for e in mlflow.search_experiments() if e.name == "alignkit"]
    (found,) = mlflow.search_runs([experiment.experiment_id], output_format="list")
    history = mlflow.MlflowClient().get_metric_history(found.info.run_id, "train/loss")
    assert [point.step for point in history] == [1, 2]
    assert history[0].value == pytest.approx(metrics(run)[0]["loss"])
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))


def test_a_tracker_that_is_not_installed_is_named_before_training(tmp_path, overrides, monkeypatch):
    import importlib.util

    from alignkit.train.config import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"report_to=\['wandb'\].*pip install 'alignkit\[wandb\]'"):
        load_config(None, overrides + ["report_to=[wandb]"])


# ------------------------------------------------------------------------------------------------ lean runs

def folder_bytes(folder) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def test_lean_checkpoints_and_final_only(tmp_path, overrides, caplog):
    full = train(load_config(None, overrides + ["max_steps=2", f"output_dir={tmp_path / 'full'}"]))
    lean = train(load_config(None, overrides + ["max_steps=2", "save_optimizer=false", f"output_dir={tmp_path / 'lean'}"]))
    final_only = train(load_config(None, overrides + ["max_steps=2", "save_final_only=true",
                                                      f"output_dir={tmp_path / 'final'}"]))
    full_ck, lean_ck = (r.output_dir / "checkpoints" / "step-000002" for r in (full, lean))
    assert (full_ck / "optimizer.pt").exists() and not (lean_ck / "optimizer.pt").exists()
    assert json.loads((lean_ck / "state.json").read_text())["optimizer_saved"] is False
    assert json.loads((full_ck / "state.json").read_text())["optimizer_saved"] is True
    assert folder_bytes(lean_ck) < folder_bytes(full_ck) - (full_ck / "optimizer.pt").stat().st_size * 0.99
    assert not (final_only.output_dir / "checkpoints").exists() or not list(
        (final_only.output_dir / "checkpoints").iterdir())
    assert (final_only.final_dir / "model.safetensors").exists()
    a, b = (load_file(r.final_dir / "model.safetensors") for r in (full, lean))
    assert all(torch.equal(a[k], b[k]) for k in a)  # what is saved does not change what is trained
    with caplog.at_level(logging.WARNING):
        train(load_config(None, overrides + ["max_steps=3", "save_optimizer=false",
                                             f"output_dir={tmp_path / 'lean'}"]), resume=True)
    assert "holds no optimizer state" in caplog.text


# --------------------------------------------------------------------------------------------------- warnings

def test_a_dataset_smaller_than_one_step_is_warned_about(tmp_path, overrides, caplog):
    with caplog.at_level(logging.WARNING):
        train(load_config(None, overrides + ["batch_size=4", "grad_accum=4", "max_steps=1",
                                             f"output_dir={tmp_path / 'run'}"]))
    assert "data.train has 8 examples, fewer than one optimizer step takes" in caplog.text


def test_accelerate_launch_asking_for_several_processes_is_warned_about(caplog):
    with caplog.at_level(logging.WARNING):
        warn_if_one_of_several(2)
    assert "accelerate launch asked for 2 processes but this run has 1" in caplog.text and "torchrun" in caplog.text
