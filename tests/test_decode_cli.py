"""`alignkit generate` and the method registry: prompts from files or stdin, JSONL out, clear errors."""

from __future__ import annotations

import io
import json

import pytest

from alignkit.cli.main import main
from alignkit.decode.methods import METHODS, run_method
from alignkit.models import load

PRESETS = ("best_of_n", "worst_of_n", "urial", "nudging", "deal", "transfer_q", "genarm", "steering")


def test_every_preset_is_registered_with_a_callable_and_keyword_defaults():
    assert set(PRESETS) <= set(METHODS)
    for method in METHODS.values():
        assert callable(method.function)
        parameters = method.parameters()
        assert "max_new_tokens" in parameters and "seed" in parameters, method.name
        assert all(need in parameters for need in method.needs), method.name


def test_generate_best_of_n_from_a_text_file_writes_rows_with_diagnostics(tmp_path, tiny_chat_model_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Say hi.\n\nName a colour.\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = main(["generate", "--method", "best_of_n", "--model", str(tiny_chat_model_dir), "--prompts", str(prompts),
                 "--out", str(out), "--reward", "verifier:max_words=3", "--param", "n=3", "--max-new-tokens", "4"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["prompt"] for row in rows] == ["Say hi.", "Name a colour."]  # blank line skipped, order kept
    for row in rows:
        assert row["method"] == "best_of_n" and isinstance(row["completion"], str)
        assert row["reward_calls"] == 3 and 1 <= row["tokens"] <= 4
    # the same call through the Python API gives the same completions
    model, tokenizer, _ = load(tiny_chat_model_dir)
    from alignkit.models.rewards.spec import reward_from_spec

    api = run_method("best_of_n", model, tokenizer, ["Say hi.", "Name a colour."],
                     reward=reward_from_spec("verifier:max_words=3"), n=3, max_new_tokens=4)
    assert [c.text for c in api] == [row["completion"] for row in rows]


def test_generate_reads_jsonl_from_stdin_and_writes_stdout(tiny_chat_model_dir, monkeypatch, capsys):
    lines = [json.dumps({"prompt": [{"role": "user", "content": "Hi"}], "id": 7}),
             json.dumps({"prompt": "Plain text prompt", "id": 8})]
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    code = main(["generate", "--method", "steering", "--model", str(tiny_chat_model_dir), "--prompts", "-",
                 "--out", "-", "--contrast", _contrast(tiny_chat_model_dir),
                 "--param", "coefficient=0", "--max-new-tokens", "3"])
    assert code == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["id"] for row in rows] == [7, 8] and all(row["method"] == "steering" for row in rows)


def _contrast(folder) -> str:
    path = folder.parent / "contrast.jsonl"
    rows = [{"positive": "I am glad to help.", "negative": "I refuse to help."},
            {"positive": "Sure, here it is.", "negative": "No, go away."}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("arguments, message", [
    (["--method", "best_of_n"], "--reward"),
    (["--method", "best_of_n", "--reward", "verifier:json", "--param", "nn=3"], "has no parameter nn"),
    (["--method", "urial", "--reward", "verifier:json"], "does not take --reward"),
    (["--method", "nope"], "unknown decoding method"),
    (["--method", "best_of_n", "--reward", "verifier:json", "--param", "n"], "expected KEY=VALUE"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, tiny_chat_model_dir, capsys, arguments, message):
    prompts = tmp_path / "p.txt"
    prompts.write_text("Hi\n", encoding="utf-8")
    code = main(["generate", "--model", str(tiny_chat_model_dir), "--prompts", str(prompts),
                 "--out", str(tmp_path / "o.jsonl"), *arguments])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_prompt_row_names_file_line_and_field(tmp_path, tiny_chat_model_dir, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"question": "x"}) + "\n", encoding="utf-8")
    code = main(["generate", "--method", "urial", "--model", str(tiny_chat_model_dir), "--prompts", str(data),
                 "--out", str(tmp_path / "o.jsonl")])
    assert code == 2
    err = capsys.readouterr().err
    assert "p.jsonl" in err and "line 2" in err and "prompt" in err


def test_list_shows_every_method_with_its_source(capsys):
    assert main(["generate", "--list"]) == 0
    out = capsys.readouterr().out
    for name in PRESETS:
        assert name in out
    assert "gamma=0.4" in out and "arXiv 2410.09300" in out
