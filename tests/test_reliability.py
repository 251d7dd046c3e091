"""Nothing silently wrong: the non-finite guard, honest resumes, recovery from damaged checkpoints and caches,
and output folders that only alignkit's own files are written into."""

from __future__ import annotations

import fcntl
import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from conftest import write_pairs

from alignkit.cli.main import main, parse
from alignkit.train import Trainer, load_config, train
from alignkit.train.checkpoint import MANIFEST, latest_checkpoint
from alignkit.train.config import ConfigError
from alignkit.train.guard import NonFiniteError
from alignkit.train.rundir import LOCK, MARKER


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def overrides(tmp_path, tiny_chat_model_dir):
    return [f"model.name_or_path={tiny_chat_model_dir}", f"data.train={write_pairs(tmp_path / 'prefs.jsonl')}",
            "optim.lr=1e-3", "progress=false", "report_to=none", "batch_size=2", "seed=3"]


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def nan_loss_at(monkeypatch, bad_steps: set[int]) -> None:
    """Make the objective's losses NaN during the given optimizer steps (1-based)."""
    original = Trainer.loss

    def loss(self, batch):
        losses, metrics = original(self, batch)
        if self.state.step + 1 in bad_steps:
            losses = losses * float("nan")
        return losses, metrics
    monkeypatch.setattr(Trainer, "loss", loss)


# ----------------------------------------------------------------------------------------------- non-finite

def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, overrides, monkeypatch):
    nan_loss_at(monkeypatch, {3})
    config = load_config(None, overrides + ["max_steps=5", "save_every=1", "keep_checkpoints=1",
                                            f"output_dir={tmp_path / 'run'}"])
    with pytest.raises(NonFiniteError, match=r"step 3: non-finite loss .*The last checkpoint is .*step-000002, intact"):
        train(config)
    assert latest_checkpoint(tmp_path / "run").name == "step-000002"
    assert not (tmp_path / "run" / "final").exists()
    assert [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2]


def test_nan_gradient_and_nan_parameters_stop_the_run(tmp_path, overrides):
    trainer = Trainer.prepare(load_config(None, overrides + ["max_steps=3", f"output_dir={tmp_path / 'g'}"]))
    parameter = next(p for p in trainer.model.parameters() if p.requires_grad)
    handle = parameter.register_hook(lambda grad: grad * float("nan"))
    with pytest.raises(NonFiniteError, match="step 1: non-finite gradients"):
        trainer.step()
    handle.remove()
    trainer.close()

    trainer = Trainer.prepare(load_config(None, overrides + ["max_steps=3", f"output_dir={tmp_path / 'p'}"]))
    step = trainer.optimizer.step

    def poisoned_step(*args, **kwargs):
        step(*args, **kwargs)
        with torch.no_grad():
            parameter.fill_(float("inf"))
    parameter = next(p for p in trainer.model.parameters() if p.requires_grad)
    trainer.optimizer.step = poisoned_step
    with pytest.raises(NonFiniteError, match="step 1: non-finite parameters after the update"):
        trainer.step()
    trainer.close()


def test_skip_leaves_the_parameters_as_before_the_step_and_counts_it(tmp_path, overrides, monkeypatch):
    nan_loss_at(monkeypatch, {3})
    result = train(load_config(None, overrides + ["max_steps=4", "save_every=1", "keep_checkpoints=5",
                                                  "on_nonfinite=skip", f"output_dir={tmp_path / 'run'}"]))
    checkpoints = tmp_path / "run" / "checkpoints"
    assert same(weights(checkpoints / "step-000002"), weights(checkpoints / "step-000003"))
    assert not same(weights(checkpoints / "step-000003"), weights(checkpoints / "step-000004"))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["nonfinite_skipped"] for m in metrics] == [0, 0, 1, 1]
    assert result.steps == 4


def test_skip_undoes_an_update_that_makes_the_parameters_non_finite(tmp_path, overrides):
    trainer = Trainer.prepare(load_config(None, overrides + ["max_steps=3", "on_nonfinite=skip",
                                                             f"output_dir={tmp_path / 'p'}"]))
    trainer.step()
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    moments = {k: {n: t.clone() for n, t in s.items()} for k, s in trainer.optimizer.optimizer.state.items()}
    step, parameter = trainer.optimizer.step, next(p for p in trainer.model.parameters() if p.requires_grad)

    def poisoned_step(*args, **kwargs):
        step(*args, **kwargs)
        with torch.no_grad():
            parameter.fill_(float("nan"))
    trainer.optimizer.step = poisoned_step
    metrics = trainer.step()
    assert metrics["nonfinite_skipped"] == 1
    assert same(before, trainer.model.state_dict())
    for p, state in trainer.optimizer.optimizer.state.items():
        assert all(torch.equal(state[n], moments[p][n]) for n in state)
    trainer.close()


def test_cli_exits_non_zero_and_saves_no_model_when_the_run_diverges(tmp_path, overrides, capsys):
    code = main(["train", *overrides, "optim.lr=1e30", "max_steps=4", "save_every=1", f"output_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err
    assert code == 3 and "stopped: step" in err and "non-finite" in err
    assert not (tmp_path / "r" / "final").exists()


def test_nan_scores_are_a_data_error_naming_file_line_and_field(tmp_path, tiny_chat_model_dir, capsys):
    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "a", "completion": "b", "scores": [-1.0]}\n'
                    '{"prompt": "a", "completion": "b", "scores": [NaN]}\n')
    code = main(["train", f"model.name_or_path={tiny_chat_model_dir}", f"data.train={data}", "objective.name=poft",
                 f"output_dir={tmp_path / 'r'}"])
    assert code == 2 and "sft.jsonl, line 2, field 'scores[1]': expected a finite number" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- resume

def run_then_resume(tmp_path, overrides, changes, steps=2, total=4):
    first = overrides + [f"max_steps={total}", "save_every=1", f"output_dir={tmp_path / 'run'}"]
    trainer = Trainer.prepare(load_config(None, first))
    for _ in range(steps):
        trainer.step()
    trainer.close()  # as if the process had died here: checkpoints of steps 1..steps
    return load_config(None, first + changes)


def test_resume_applies_a_changed_learning_rate_and_records_it(tmp_path, overrides):
    straight = train(load_config(None, overrides + ["max_steps=4", f"output_dir={tmp_path / 'straight'}"]))
    config = run_then_resume(tmp_path, overrides, ["optim.lr=1e-2"])
    resumed = train(config, resume=True)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[1]["lr"] == pytest.approx(1e-3 * 2 / 4) and metrics[2]["lr"] == pytest.approx(1e-2 * 1 / 4)
    assert not same(weights(straight.final_dir), weights(resumed.final_dir))
    text = (tmp_path / "run" / "config.yaml").read_text()
    assert "lr: 0.01" in text
    history = [line for line in text.splitlines() if line.startswith("# 2")]
    assert len(history) == 2 and "started at step 0" in history[0]
    assert "resumed at step 2 from step-000002; changed: optim.lr 0.001 -> 0.01 (applied" in history[1]
    assert load_config(tmp_path / "run" / "config.yaml").optim.lr == 1e-2  # still a recipe


def test_resume_takes_compatible_changes(tmp_path, overrides):
    config = run_then_resume(tmp_path, overrides, ["max_steps=6", "log_every=2"])
    assert train(config, resume=True).steps == 6
    assert "max_steps 4 -> 6" in (tmp_path / "run" / "config.yaml").read_text()


@pytest.mark.parametrize("change, named", [
    ("objective.params.beta=0.5", "objective.params.beta"), ("batch_size=4", "batch_size: 2 -> 4"),
    ("seed=4", "seed: 3 -> 4"), ("objective.name=ipo", "objective.name"), ("data.max_length=600", "data.max_length")])
def test_resume_refuses_incompatible_changes_before_loading_anything(tmp_path, overrides, change, named,
                                                                     monkeypatch):
    config = run_then_resume(tmp_path, overrides, [change])
    monkeypatch.setattr("alignkit.train.loop.load_training_data", lambda *a: pytest.fail("data was loaded"))
    with pytest.raises(ConfigError, match="cannot change on resume") as caught:
        Trainer.prepare(config, resume=True)
    assert named in str(caught.value)


def test_resume_refuses_other_data_under_the_same_path(tmp_path, overrides):
    config = run_then_resume(tmp_path, overrides, [])
    write_pairs(tmp_path / "prefs.jsonl", n=9)
    with pytest.raises(ConfigError, match="training data"):
        Trainer.prepare(config, resume=True)


def test_resume_overrides_may_follow_the_flag(tmp_path):
    args = parse(["train", "--config", "recipe.yaml", "output_dir=o", "--resume", "max_steps=30"])
    assert args.resume and args.overrides == ["output_dir=o", "max_steps=30"]
    with pytest.raises(SystemExit):
        parse(["objectives", "max_steps=30"])


# ------------------------------------------------------------------------------------------------- corruption

@pytest.mark.parametrize("damage", ["truncate model", "remove optimizer", "truncate state", "remove manifest"])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tmp_path, overrides, damage, caplog):
    straight = train(load_config(None, overrides + ["max_steps=4", f"output_dir={tmp_path / 'straight'}"]))
    config = run_then_resume(tmp_path, overrides, [], steps=3)
    latest = tmp_path / "run" / "checkpoints" / "step-000003"
    target = {"truncate model": "model.safetensors", "remove optimizer": "optimizer.pt",
              "truncate state": "state.json", "remove manifest": MANIFEST}[damage]
    if damage.startswith("truncate"):
        (latest / target).write_bytes((latest / target).read_bytes()[:10])
    else:
        (latest / target).unlink()
    with caplog.at_level(logging.WARNING):
        resumed = train(config, resume=True)
    assert "skipping checkpoint" in caplog.text and "step-000003" in caplog.text
    assert same(weights(straight.final_dir), weights(resumed.final_dir))


def test_a_damaged_reference_cache_is_named_and_recomputed(tmp_path, overrides, caplog):
    first = train(load_config(None, overrides + ["max_steps=1", f"output_dir={tmp_path / 'a'}"]))
    (cached,) = (tmp_path / "cache" / "reference_logps").glob("*.safetensors")
    cached.write_bytes(cached.read_bytes()[:40])
    with caplog.at_level(logging.WARNING):
        second = train(load_config(None, overrides + ["max_steps=1", f"output_dir={tmp_path / 'b'}"]))
    assert f"reference log-probs cache {cached} is damaged" in caplog.text
    assert second.metrics["loss"] == first.metrics["loss"] and load_file(cached)["sums"].numel() > 0


def test_leftovers_of_killed_writes_are_removed_at_the_next_start(tmp_path, overrides):
    config = run_then_resume(tmp_path, overrides, [])
    run = tmp_path / "run"
    leftovers = [run / "checkpoints" / ".tmp-abc", run / ".final.xyz", run / ".final.old"]
    for folder in leftovers:
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"partial")
    train(config, resume=True)
    assert not any(path.exists() for path in leftovers)


# ------------------------------------------------------------------------------------------- output folders

def test_a_folder_that_is_not_a_run_is_refused_and_left_untouched(tmp_path, overrides):
    folder = tmp_path / "mine"
    (folder / "final").mkdir(parents=True)
    (folder / "config.yaml").write_text("my: settings\n")
    (folder / "final" / "weights.bin").write_bytes(b"precious")
    with pytest.raises(ConfigError, match="not an alignkit run"):
        train(load_config(None, overrides + ["max_steps=1", f"output_dir={folder}"]))
    assert sorted(p.name for p in folder.rglob("*")) == ["config.yaml", "final", "weights.bin"]
    assert (folder / "config.yaml").read_text() == "my: settings\n"


def test_overwrite_deletes_only_alignkits_files(tmp_path, overrides):
    folder = tmp_path / "run"
    train(load_config(None, overrides + ["max_steps=1", f"output_dir={folder}"]))
    (folder / "checkpoints" / "notes.txt").write_text("mine")
    (folder / "README.txt").write_text("mine too")
    train(load_config(None, overrides + ["max_steps=2", "overwrite=true", f"output_dir={folder}"]))
    assert (folder / "checkpoints" / "notes.txt").read_text() == "mine" and (folder / "README.txt").exists()
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["notes.txt", "step-000002"]
    assert (folder / MARKER).exists()


def test_two_trainings_into_one_folder_at_once_are_refused(tmp_path, overrides):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / MARKER).write_text("{}\n")
    with (folder / LOCK).open("a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # another training holds the folder
        with pytest.raises(ConfigError, match="in use by another training"):
            train(load_config(None, overrides + ["max_steps=1", f"output_dir={folder}"]))
    assert train(load_config(None, overrides + ["max_steps=1", f"output_dir={folder}"])).steps == 1
