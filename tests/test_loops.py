"""`alignkit loop` on a tiny model: rounds write reusable data with provenance, a killed loop resumes to the same
data and parameters, and a config missing a preset's part fails before the first round."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from alignkit.loops.config import load_loop_config
from alignkit.loops.driver import run_loop
from alignkit.train.config import ConfigError, load_config
from alignkit.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCES = ["say a word", "say a word please", "say a word now", "please say a word now"]


def loop_yaml(tmp_path: Path, model_dir: Path, **changes) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": s}) + "\n" for s in SENTENCES))
    config = {"preset": "rsf_dpa", "model": str(model_dir), "data": str(prompts), "rounds": 2,
              "output_dir": str(tmp_path / "loop"), "seed": 1,
              "sample": {"k": 3, "max_new_tokens": 3},
              "train": {"overrides": ["max_steps=2", "batch_size=2", "save_every=1", "keep_checkpoints=10",
                                      "optim.lr=0.01", "optim.warmup_steps=0", "progress=false"]},
              "eval": {"kind": "none"},
              "params": {"attributes": {"helpfulness": {"reward": "verifier:regex=w1", "scale": 100},
                                        "verbosity": {"reward": "verifier:words", "scale": 10}}}}
    config.update(changes)
    path = tmp_path / "loop.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_rounds_write_data_with_provenance_that_plain_train_reads(tmp_path, word_model_dir, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    result = run_loop(load_loop_config(loop_yaml(tmp_path, word_model_dir)))
    out = tmp_path / "loop"
    for round_ in (1, 2):
        provenance = json.loads((out / f"round-{round_}" / "provenance.json").read_text())
        assert provenance["round"] == round_ and provenance["preset"] == "rsf_dpa"
        assert provenance["model"] == (str(word_model_dir) if round_ == 1 else str(out / "round-1/train/final"))
        assert provenance["sampling"]["k"] == 3 and provenance["rows"] == len(SENTENCES)
        rows = [json.loads(line) for line in (out / f"round-{round_}" / "data.jsonl").read_text().splitlines()]
        for row in rows:  # the direction is in the system prompt; the kept answer's attributes are its own
            weights, values, text = row["direction"], row["attributes"], row["completion"][0]["content"]
            assert row["prompt"][0]["role"] == "system" and f"helpfulness*{weights[0]}" in row["prompt"][0]["content"]
            assert values == {"helpfulness": 100.0 * ("w1" in text), "verbosity": 10.0 * len(text.split())}
    assert result.final_model == out / "round-2" / "train" / "final"
    # a round's data trains as it is, with plain `alignkit train`
    again = train(load_config("sft_smollm2", [f"model.name_or_path={word_model_dir}", "max_steps=1", "batch_size=2",
                                              f"data.train={out / 'round-1' / 'data.jsonl'}", "report_to=none",
                                              f"output_dir={tmp_path / 'plain'}", "progress=false"]))
    assert again.steps == 1


def test_a_killed_loop_resumes_to_identical_data_and_parameters(tmp_path, word_model_dir):
    def launch(config: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "alignkit.cli.main", "loop", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "ALIGNKIT_CACHE": str(tmp_path / "c")})
    straight = loop_yaml(tmp_path / "a", word_model_dir) if (tmp_path / "a").mkdir() is None else None
    assert launch(straight).wait(timeout=600) == 0
    killed = loop_yaml(tmp_path / "b", word_model_dir) if (tmp_path / "b").mkdir() is None else None
    process = launch(killed)
    checkpoint = tmp_path / "b" / "loop" / "round-2" / "train" / "checkpoints" / "step-000001" / "manifest.json"
    deadline = time.monotonic() + 600
    while process.poll() is None and time.monotonic() < deadline:  # kill inside round 2's training
        if checkpoint.exists():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    assert process.wait() == -signal.SIGKILL
    assert not (tmp_path / "b" / "loop" / "round-2" / "train" / "final").exists()
    assert launch(killed).wait(timeout=600) == 0
    for round_ in (1, 2):
        name = f"round-{round_}/data.jsonl"
        assert (tmp_path / "a" / "loop" / name).read_bytes() == (tmp_path / "b" / "loop" / name).read_bytes()
    expected = load_file(tmp_path / "a" / "loop" / "round-2/train/final/model.safetensors")
    got = load_file(tmp_path / "b" / "loop" / "round-2/train/final/model.safetensors")
    assert expected.keys() == got.keys() and all((expected[k] == got[k]).all() for k in expected)


@pytest.mark.parametrize(("preset", "params", "key"), [
    ("rsf_dpa", {}, "params.attributes"),
    ("spa", {}, "params.seed_data"),
    ("cyclealign", {}, "params.ranker"),
    ("rsf_dpa", {"attributes": {"a": {"reward": "verifier:words"}, "b": {"reward": "nonsense"}}}, "unknown reward spec"),
    ("spa", {"seed_data": "x.jsonl", "temperature": 2}, "params.temperature"),
])
def test_a_missing_or_bad_preset_part_fails_before_the_first_round(tmp_path, word_model_dir, preset, params, key):
    config = loop_yaml(tmp_path, word_model_dir, preset=preset, params=params)
    with pytest.raises((ConfigError, ValueError), match=key.replace(".", r"\.")) as caught:
        run_loop(load_loop_config(config))
    assert str(config) in str(caught.value) or "from" in str(caught.value)
    assert not (tmp_path / "loop").exists()  # nothing was started


def test_an_unknown_preset_and_a_bad_key_name_the_key(tmp_path, word_model_dir):
    with pytest.raises(ConfigError, match=r"preset \(from .*loop.yaml\): 'nope' is not a preset"):
        load_loop_config(loop_yaml(tmp_path, word_model_dir, preset="nope"))
    with pytest.raises(ConfigError, match=r"rounds"):
        load_loop_config(loop_yaml(tmp_path, word_model_dir), ["rounds=0"])
    with pytest.raises(ConfigError, match=r"samples"):
        load_loop_config(loop_yaml(tmp_path, word_model_dir), ["samples.k=2"])


@pytest.mark.parametrize("recipe", sorted(Path("recipes/loops").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_loop_config_loads_and_names_its_preset(recipe):
    from alignkit.loops.presets import PRESETS

    config = load_loop_config(recipe)
    assert config.preset in PRESETS and recipe.stem == f"{config.preset}_smollm2"


def test_every_preset_has_a_shipped_loop_config():
    from alignkit.loops.presets import PRESETS

    shipped = {load_loop_config(path).preset for path in Path("recipes/loops").glob("*.yaml")}
    assert shipped == set(PRESETS)


def test_loop_help_names_every_preset():
    from alignkit.cli.loop_verb import EPILOG
    from alignkit.loops.presets import PRESETS

    listed = EPILOG.split("preset:", 1)[1].split("(alignkit loop --list", 1)[0]
    assert {name.strip() for name in listed.split("|")} == set(PRESETS)
