"""`alignkit export`: LoRA merging, the adapter's base name, the model card, pushing to the hub (offline:
HfApi's methods are replaced), and clear errors for what cannot be exported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import tiny_llama, write_pairs

from alignkit.cli.main import main
from alignkit.models.export import (ADAPTER_CONFIG, ExportError, export_run, final_metrics, last_checkpoint_state,
                                    model_card, read_run, set_adapter_base)
from alignkit.train.config import load_config
from alignkit.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")
IDS = torch.tensor([[1, 17, 250, 3000, 42, 9, 4097, 12]])


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A home folder holding the tiny base model, so that the base can be named `~/tiny-chat`: a path that is
    not the folder the weights are read from (as a built-in name is not its cache folder)."""
    folder = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(folder))
        patch.setenv("ALIGNKIT_CACHE", str(folder / "cache"))
        yield folder


@pytest.fixture(scope="module")
def base_dir(home, smol_tokenizer_dir) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    model = tiny_llama(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    model.save_pretrained(home / "tiny-chat")
    tokenizer.save_pretrained(home / "tiny-chat")
    return home / "tiny-chat"


def _train(home: Path, name: str, extra: list[str]) -> Path:
    data = write_pairs(home / f"{name}.jsonl")
    settings = ["model.name_or_path=~/tiny-chat", f"data.train={data}", "optim.lr=1e-3", "progress=false",
                "report_to=none", "seed=3", "batch_size=2", "max_steps=2", "objective.params.beta=0.2",
                f"output_dir={home / name}"]
    return train(load_config(None, settings + extra)).output_dir


@pytest.fixture(scope="module")
def lora_run(home, base_dir) -> Path:
    return _train(home, "lora-run", ["model.lora.r=4", "model.lora.alpha=8"])


@pytest.fixture(scope="module")
def full_run(home, base_dir) -> Path:
    return _train(home, "full-run", [])


def logits(model, ids: torch.Tensor = IDS) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=ids).logits


def test_merge_lora_writes_a_plain_model_with_the_adapted_logits(lora_run, base_dir, capsys):
    from peft import PeftModel

    assert main(["export", str(lora_run), "--merge-lora"]) == 0
    merged_dir = lora_run / "merged"
    assert str(merged_dir) in capsys.readouterr().out
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), lora_run / "final")
    expected = logits(adapted)
    assert (logits(merged) - expected).abs().max().item() <= 1e-5
    assert (logits(AutoModelForCausalLM.from_pretrained(base_dir)) - expected).abs().max().item() > 1e-4  # trained
    assert not (merged_dir / ADAPTER_CONFIG).exists()
    assert AutoTokenizer.from_pretrained(merged_dir).chat_template
    assert (merged_dir / "README.md").exists()
    assert not [p for p in lora_run.iterdir() if p.name.startswith(".merged")]  # no staging folder left


def test_merge_refuses_an_existing_folder_unless_overwrite(lora_run, tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(lora_run), "--merge-lora", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert main(["export", str(lora_run), "--merge-lora", "--out", str(out), "--overwrite"]) == 0
    assert (out / "config.json").exists() and not (out / "keep.txt").exists()


def test_export_never_writes_over_the_run_itself(lora_run, capsys):
    for out in (lora_run, lora_run / "final", lora_run.parent):
        assert main(["export", str(lora_run), "--merge-lora", "--out", str(out), "--overwrite"]) == 2
        assert "would overwrite the run" in capsys.readouterr().err
    assert (lora_run / "final" / ADAPTER_CONFIG).exists()


def test_merge_lora_of_a_full_fine_tune_says_there_is_no_adapter(full_run, capsys):
    assert main(["export", str(full_run), "--merge-lora"]) == 2
    err = capsys.readouterr().err
    assert "no LoRA adapter" in err and "Traceback" not in err
    assert not (full_run / "merged").exists()


def test_adapter_names_its_base_as_the_user_did(lora_run, base_dir):
    from peft import PeftModel

    export_run(read_run(lora_run))  # in place: final/
    settings = json.loads((lora_run / "final" / ADAPTER_CONFIG).read_text())
    assert settings["base_model_name_or_path"] == "~/tiny-chat"
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), lora_run / "final")  # still loads
    copy = export_run(read_run(lora_run), out=lora_run.parent / "adapter-copy")
    assert json.loads((copy / ADAPTER_CONFIG).read_text())["base_model_name_or_path"] == "~/tiny-chat"


def test_set_adapter_base_rewrites_only_the_base_name(tmp_path):
    settings = {"base_model_name_or_path": "/root/.cache/alignkit/models/smollm2-135m-instruct", "r": 4}
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps(settings))
    set_adapter_base(tmp_path, "smollm2-135m-instruct")
    assert json.loads((tmp_path / ADAPTER_CONFIG).read_text()) == {**settings,
                                                                   "base_model_name_or_path": "smollm2-135m-instruct"}
    assert [p.name for p in tmp_path.iterdir()] == [ADAPTER_CONFIG]


@pytest.fixture()
def hub(monkeypatch):
    """HfApi.create_repo and upload_folder replaced: what they were called with, and the uploaded files."""
    from huggingface_hub import HfApi

    calls: dict = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create_repo"] = {"repo_id": repo_id, **kwargs}
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        calls["upload_folder"] = {"repo_id": repo_id, "folder": folder, **kwargs,
                                  "files": sorted(p.name for p in folder.iterdir()),
                                  "card": (folder / "README.md").read_text()}

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_the_folder_with_its_model_card(lora_run, hub, capsys):
    assert main(["export", str(lora_run), "--push-to-hub", "me/tiny-dpo", "--private"]) == 0
    assert hub["create_repo"]["repo_id"] == "me/tiny-dpo"
    assert hub["create_repo"]["private"] is True and hub["create_repo"]["exist_ok"] is True
    upload = hub["upload_folder"]
    assert upload["repo_id"] == "me/tiny-dpo" and upload["folder"] == lora_run / "final"
    assert {"README.md", ADAPTER_CONFIG, "adapter_model.safetensors", "tokenizer.json"} <= set(upload["files"])
    card = upload["card"]
    assert card == (lora_run / "final" / "README.md").read_text()  # the card is in the exported folder too
    fingerprint = last_checkpoint_state(lora_run)["data_fingerprint"]
    last = final_metrics(lora_run)
    assert fingerprint and fingerprint in card
    assert "Base model: `~/tiny-chat`" in card
    assert "Objective: `dpo`; parameters: beta=0.2, label_smoothing=0.0" in card
    assert str(lora_run.parent / "lora-run.jsonl") in card
    assert f"| step | {last['step']} |" in card and f"| loss | {last['loss']:.6g} |" in card
    assert (lora_run / "config.yaml").read_text().rstrip("\n") in card
    assert "Trained with [alignkit]" in card and "library_name: peft" in card
    assert "pushed" in capsys.readouterr().out


def test_push_of_a_merged_model_uploads_the_merged_folder(lora_run, hub, tmp_path):
    out = tmp_path / "merged-push"
    assert main(["export", str(lora_run), "--merge-lora", "--out", str(out), "--push-to-hub", "me/merged"]) == 0
    assert hub["upload_folder"]["folder"] == out
    assert "model.safetensors" in hub["upload_folder"]["files"]
    assert "library_name: transformers" in hub["upload_folder"]["card"]
    assert hub["create_repo"]["private"] is False


def test_an_unreachable_hub_is_a_clear_error(lora_run, monkeypatch, capsys):
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HTTPError

    assert main(["export", str(lora_run), "--push-to-hub", "me/offline"]) == 2  # HF_HUB_OFFLINE=1 (conftest)
    err = capsys.readouterr().err
    assert "Hugging Face hub could not take the upload" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1

    def refused(self, repo_id, **kwargs):
        raise HTTPError("[Errno 111] Connection refused")

    monkeypatch.setattr(HfApi, "create_repo", refused)
    assert main(["export", str(lora_run), "--push-to-hub", "me/offline"]) == 2
    err = capsys.readouterr().err
    assert "Connection refused" in err and "Traceback" not in err


def test_card_of_a_full_fine_tune(full_run):
    card = model_card(read_run(full_run))
    assert "full fine-tuned model" in card and "library_name: transformers" in card
    assert "base_model:" not in card  # a local path is no hub id


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "config.yaml").write_text("model: {}\n")
    with pytest.raises(ExportError, match="not an alignkit run folder: no final .*did not finish"):
        read_run(tmp_path)
    for folder in (tmp_path / "empty", tmp_path / "missing"):
        if folder.name == "empty":
            folder.mkdir()
        assert main(["export", str(folder)]) == 2
        err = capsys.readouterr().err
        assert "alignkit export: error:" in err and "alignkit train" in err and "Traceback" not in err
    assert main(["export", str(tmp_path), "--private"]) == 2
    assert "--push-to-hub" in capsys.readouterr().err
