"""`alignkit` on the command line, end to end on a tiny model."""

from __future__ import annotations

import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignkit.cli.main import main
from alignkit.objectives import available

RECIPE = """\
model:
  name_or_path: {model}
data:
  train: {data}
  max_length: 128
  max_prompt_length: 64
objective:
  name: dpo
  params:
    beta: 0.5
optim:
  lr: 3.0e-3
batch_size: 2
epochs: 1
output_dir: {out}
progress: false
"""


def write_rows(path):
    rows = [{"prompt": f"Question {i}: is {i} even?", "chosen": " Yes." if i % 2 == 0 else " No.",
             "rejected": " I do not know, sorry."} for i in range(8)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_train_from_recipe_with_overrides(tmp_path, tiny_chat_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE.format(model=tiny_chat_model_dir, data=write_rows(tmp_path / "p.jsonl"),
                                    out=tmp_path / "run"))
    assert main(["train", "--config", str(recipe), "epochs=3", "objective.params.beta=0.2"]) == 0
    assert "trained 12 steps" in capsys.readouterr().out  # 8 pairs / 2 per step × 3 epochs: the override won
    run = tmp_path / "run"
    assert "beta: 0.2" in (run / "config.yaml").read_text()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert {"loss", "rewards/margins", "rewards/accuracies", "tokens_per_s", "lr"} <= metrics[0].keys()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # accelerate's TensorBoard tracker: the scalars in tensorboard/alignkit, the hyper-parameters in a folder below
    scalars = EventAccumulator(str(run / "tensorboard" / "alignkit")).Reload().Tags()["scalars"]
    assert {"train/loss", "train/rewards/margins"} <= set(scalars)
    model = AutoModelForCausalLM.from_pretrained(run / "final")  # plain transformers, no alignkit
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert tokenizer.chat_template and model.config.vocab_size == len(tokenizer)


def test_bad_input_exits_2_with_file_line_and_field(tmp_path, tiny_chat_model_dir, capsys, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "", "rejected": "c"}\n')
    code = main(["train", f"model.name_or_path={tiny_chat_model_dir}", f"data.train={bad}",
                 f"output_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "bad.jsonl, line 2" in err and "'chosen'" in err


def test_unknown_key_exits_2(capsys):
    assert main(["train", "optim.learning_rate=1"]) == 2
    assert "learning_rate" in capsys.readouterr().err


def test_print_config_and_objectives(capsys):
    assert main(["train", "--print-config", "batch_size=7"]) == 0
    assert "batch_size: 7" in capsys.readouterr().out
    assert main(["objectives"]) == 0
    listing = capsys.readouterr().out
    assert "\ndpo " in listing and "2305.18290" in listing
    assert all(f"{objective.name} " in listing for objective in available())


def test_help_lists_verbs(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert all(verb in usage for verb in ("train", "evaluate", "objectives"))


@pytest.mark.parametrize("verb", [["objectives"], ["recipes"], ["train", "--print-config"], ["--version"],
                                  ["generate", "--list"], ["generate", "--help"],
                                  ["loop", "--list"], ["loop", "--help"], ["represent", "--help"],
                                  ["represent", "force-align", "--help"]])
def test_listing_verbs_do_not_import_torch_or_transformers(verb):
    """What makes them answer in a fraction of a second: no torch (about 1 s to import), no transformers models."""
    import subprocess
    import sys

    code = ("import sys; from alignkit.cli.main import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'transformers.modeling_utils' in sys.modules)") % (verb,)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "False False", done.stdout[-500:] + done.stderr[-500:]
