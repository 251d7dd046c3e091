"""The trainer end to end on a tiny model: loss scaling, resume, reference handling, LoRA, outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import write_pairs

from alignkit.train import loop as train_loop
from alignkit.train.config import ConfigError, load_config
from alignkit.train.loop import train


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def base_overrides(tmp_path, tiny_chat_model_dir):
    data = write_pairs(tmp_path / "prefs.jsonl")
    return [f"model.name_or_path={tiny_chat_model_dir}", f"data.train={data}", "optim.lr=1e-3",
            "optim.warmup_steps=1", "progress=false", "report_to=none", "seed=3"]


def final_params(result) -> dict[str, torch.Tensor]:
    return load_file(result.final_dir / "model.safetensors")


def assert_same_params(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst <= atol, f"max parameter difference {worst}"


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_gradient_accumulation_matches_one_big_batch(tmp_path, base_overrides, tiny_chat_model_dir):
    big = train(load_config(None, base_overrides + ["batch_size=4", "grad_accum=1", "max_steps=2",
                                                    f"output_dir={tmp_path / 'big'}"]))
    accumulated = train(load_config(None, base_overrides + ["batch_size=1", "grad_accum=4", "max_steps=2",
                                                            f"output_dir={tmp_path / 'acc'}"]))
    initial = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir).state_dict()
    changed = max((final_params(big)[k] - initial[k]).abs().max().item() for k in final_params(big))
    assert changed > 1e-4  # training moved the weights, so equality below is not vacuous
    assert_same_params(final_params(big), final_params(accumulated), atol=1e-6)
    losses_big = [m["loss"] for m in read_metrics(big.output_dir)]
    losses_acc = [m["loss"] for m in read_metrics(accumulated.output_dir)]
    assert losses_big == pytest.approx(losses_acc, abs=1e-6)


def test_ragged_last_step_averages_over_its_own_pairs(tmp_path, base_overrides):
    # 8 pairs, 3 per micro-batch, 2 micro-batches a step: step 2 has only 2 pairs (3 + 3, then 2).
    result = train(load_config(None, base_overrides + ["batch_size=3", "grad_accum=2", "epochs=1",
                                                       f"output_dir={tmp_path / 'r'}"]))
    assert result.steps == 2
    first = read_metrics(result.output_dir)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at the first step


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, base_overrides, monkeypatch):
    settings = base_overrides + ["batch_size=2", "grad_accum=2", "max_steps=4", "save_every=2"]
    straight = train(load_config(None, settings + [f"output_dir={tmp_path / 'straight'}"]))

    interrupted_dir = tmp_path / "interrupted"
    original_log = train_loop.MetricsLog.log

    def crash_at_step_3(self, step, metrics):
        if step == 3:
            raise KeyboardInterrupt("simulated crash")
        original_log(self, step, metrics)

    monkeypatch.setattr(train_loop.MetricsLog, "log", crash_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(load_config(None, settings + [f"output_dir={interrupted_dir}"]))
    monkeypatch.setattr(train_loop.MetricsLog, "log", original_log)
    assert sorted(p.name for p in (interrupted_dir / "checkpoints").iterdir()) == ["step-000002"]

    with pytest.raises(ConfigError, match="--resume"):
        train(load_config(None, settings + [f"output_dir={interrupted_dir}"]))
    resumed = train(load_config(None, settings + [f"output_dir={interrupted_dir}"]), resume=True)
    assert resumed.steps == 4
    assert_same_params(final_params(straight), final_params(resumed), atol=0.0)
    assert [m["step"] for m in read_metrics(interrupted_dir)] == [1, 2, 3, 4]
    assert [m["loss"] for m in read_metrics(interrupted_dir)] == [m["loss"] for m in read_metrics(straight.output_dir)]


def test_online_reference_equals_precomputed(tmp_path, base_overrides):
    settings = base_overrides + ["batch_size=2", "max_steps=3"]
    cached = train(load_config(None, settings + [f"output_dir={tmp_path / 'a'}"]))
    online = train(load_config(None, settings + ["reference.precompute=false", f"output_dir={tmp_path / 'b'}"]))
    for a, b in zip(read_metrics(cached.output_dir), read_metrics(online.output_dir)):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
        assert a["rewards/margins"] == pytest.approx(b["rewards/margins"], abs=1e-6)
    assert_same_params(final_params(cached), final_params(online), atol=1e-6)


def test_separate_reference_model_is_not_loaded_when_cached(tmp_path, base_overrides, smol_tokenizer, monkeypatch):
    """reference.model: fingerprinted from its files; on a cache hit it is never loaded (no memory for it)."""
    from conftest import tiny_llama

    from alignkit.train import references

    reference_dir = tmp_path / "reference"
    tiny_llama(vocab_size=len(smol_tokenizer), seed=7).save_pretrained(reference_dir)
    smol_tokenizer.save_pretrained(reference_dir)
    settings = base_overrides + ["batch_size=4", "max_steps=1", f"reference.model={reference_dir}"]
    loaded: list[str] = []
    real_load = references.load
    monkeypatch.setattr(references, "load", lambda name: loaded.append(str(name)) or real_load(name))

    first = train(load_config(None, settings + [f"output_dir={tmp_path / 'one'}"]))
    assert loaded == [str(reference_dir)]
    second = train(load_config(None, settings + [f"output_dir={tmp_path / 'two'}"]))
    assert loaded == [str(reference_dir)]  # the second run read the cache and never loaded the reference
    assert second.metrics["loss"] == first.metrics["loss"]
    online = train(load_config(None, settings + ["reference.precompute=false", f"output_dir={tmp_path / 'three'}"]))
    assert online.metrics["loss"] == pytest.approx(first.metrics["loss"], abs=1e-6)
    assert first.metrics["loss"] != pytest.approx(math.log(2), abs=1e-3)  # a reference other than the policy

    # Other reference weights in the same folder: other files, other fingerprint, recomputed.
    tiny_llama(vocab_size=len(smol_tokenizer), seed=8).save_pretrained(reference_dir)
    changed = train(load_config(None, settings + [f"output_dir={tmp_path / 'four'}"]))
    assert loaded[-1] == str(reference_dir) and len(loaded) == 3
    assert changed.metrics["loss"] != pytest.approx(first.metrics["loss"], abs=1e-6)


def test_reference_cache_is_reused_and_invalidated(tmp_path, base_overrides, monkeypatch):
    settings = base_overrides + ["batch_size=4", "max_steps=1"]
    train(load_config(None, settings + [f"output_dir={tmp_path / 'one'}"]))
    cache_dir = tmp_path / "cache" / "reference_logps"
    assert len(list(cache_dir.glob("*.safetensors"))) == 1

    def must_not_score(*args, **kwargs):
        raise AssertionError("reference log-probs recomputed although cached")

    monkeypatch.setattr("alignkit.train.references.score_examples", must_not_score)
    train(load_config(None, settings + [f"output_dir={tmp_path / 'two'}"]))
    monkeypatch.undo()
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    # Another truncation setting changes the fingerprint: recomputed, stored beside the first.
    train(load_config(None, settings + ["data.max_length=24", "data.max_prompt_length=12",
                                        f"output_dir={tmp_path / 'three'}"]))
    assert len(list(cache_dir.glob("*.safetensors"))) == 2


def test_lora_uses_disabled_adapters_as_reference_and_saves_an_adapter(tmp_path, base_overrides, tiny_chat_model_dir):
    from peft import PeftModel

    settings = base_overrides + ["model.lora.r=4", "model.lora.alpha=8", "batch_size=2", "max_steps=2"]
    precomputed = train(load_config(None, settings + [f"output_dir={tmp_path / 'lora'}"]))
    online = train(load_config(None, settings + ["reference.precompute=false", f"output_dir={tmp_path / 'lora2'}"]))
    first = read_metrics(precomputed.output_dir)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    for a, b in zip(read_metrics(precomputed.output_dir), read_metrics(online.output_dir)):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6)
    assert (precomputed.final_dir / "adapter_model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_chat_model_dir)
    model = PeftModel.from_pretrained(base, precomputed.final_dir)
    lora_b = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert lora_b and max(p.abs().max().item() for p in lora_b) > 0  # the adapter was trained
    for folder in (precomputed.final_dir, precomputed.output_dir / "checkpoints" / "step-000002"):
        adapter = json.loads((folder / "adapter_config.json").read_text())
        assert adapter["base_model_name_or_path"] == str(tiny_chat_model_dir)  # as named, not a cache folder
    assert json.loads((precomputed.final_dir / "training_state.json").read_text())["step"] == 2


def test_a_shipped_recipe_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("dpo", ["max_steps=3"]).objective.name == "dpo"
    assert load_config("kto").objective.name == "kto"


def test_bf16_autocast_warns_and_scores_the_reference_under_the_same_autocast(tmp_path, base_overrides):
    with pytest.warns(UserWarning, match="bf16"):
        result = train(load_config(None, base_overrides + ["mixed_precision=bf16", "max_steps=1",
                                                           f"output_dir={tmp_path / 'bf16'}"]))
    assert read_metrics(result.output_dir)[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_unknown_objective_parameter_is_a_config_error(tmp_path, base_overrides):
    with pytest.raises(ConfigError, match="gamma"):
        train(load_config(None, base_overrides + ["objective.params.gamma=1.0", f"output_dir={tmp_path / 'x'}"]))


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, base_overrides):
    """torchrun with 2 gloo processes × 2 pairs == 1 process × 4 pairs (DDP averaging + loss scaling)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    single = train(load_config(None, base_overrides + ["batch_size=4", "max_steps=2",
                                                       f"output_dir={tmp_path / 'one'}"]))
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--nproc_per_node", "2", "-m", "alignkit.cli.main", "train", *base_overrides,
               "batch_size=2", "max_steps=2", f"output_dir={tmp_path / 'two'}"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ})
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(read_metrics(tmp_path / "two")) == 2  # one writer, not one per process
    assert_same_params(final_params(single), load_file(tmp_path / "two" / "final" / "model.safetensors"), atol=1e-5)


def test_reference_free_objective_never_scores_a_reference(tmp_path, base_overrides, monkeypatch):
    from alignkit.objectives import Objective
    from alignkit.objectives import registry

    def margin_loss(policy_chosen_logps, policy_rejected_logps):
        margin = policy_chosen_logps - policy_rejected_logps
        return -torch.nn.functional.logsigmoid(margin), {"rewards/margins": margin.detach()}

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register(Objective(name="toy-free", fn=margin_loss, description="test", source="test", logps="mean"))

    def must_not_run(*args, **kwargs):
        raise AssertionError("a reference-free objective must not touch a reference")

    monkeypatch.setattr("alignkit.train.setup.precompute_reference", must_not_run)
    monkeypatch.setattr("alignkit.train.loop.online_reference", must_not_run)
    result = train(load_config(None, base_overrides + ["objective.name=toy-free", "max_steps=3",
                                                       f"output_dir={tmp_path / 'free'}"]))
    losses = [m["loss"] for m in read_metrics(result.output_dir)]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert not (tmp_path / "cache" / "reference_logps").exists()


def test_dropped_pairs_do_not_shift_reference_scores(tmp_path, tiny_chat_model_dir):
    """With `overlong=drop` removing a pair in the middle, each pair still meets its own reference score."""
    rows = [{"prompt": f"Q{i}", "chosen": f" yes {i}", "rejected": f" no {i}"} for i in range(6)]
    rows[1]["chosen"] = " very long" * 40  # over max_length: dropped
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = train(load_config(None, [f"model.name_or_path={tiny_chat_model_dir}", f"data.train={data}",
                                      "data.max_length=32", "data.max_prompt_length=16", "data.overlong=drop",
                                      "batch_size=5", "max_steps=1", "progress=false", "report_to=none",
                                      f"output_dir={tmp_path / 'run'}"]))
    first = read_metrics(result.output_dir)[0]
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)


def test_activation_checkpointing_changes_memory_not_numbers(tmp_path, base_overrides):
    settings = base_overrides + ["batch_size=4", "max_steps=2"]
    plain = train(load_config(None, settings + [f"output_dir={tmp_path / 'plain'}"]))
    checkpointed = train(load_config(None, settings + ["activation_checkpointing=true",
                                                       f"output_dir={tmp_path / 'ckpt'}"]))
    assert_same_params(final_params(plain), final_params(checkpointed), atol=1e-6)


def test_chunked_lm_head_trains_to_the_same_weights(tmp_path, base_overrides):
    settings = base_overrides + ["batch_size=4", "max_steps=2"]
    whole = train(load_config(None, settings + [f"output_dir={tmp_path / 'whole'}"]))
    chunked = train(load_config(None, settings + ["lm_head_chunk=7", f"output_dir={tmp_path / 'chunk'}"]))
    # Chunks sum gradients in another order (float rounding); Adam's g/|g| on near-zero gradients turns that
    # into ~2e-6 after two lr-1e-3 steps, 0.2% of one step.
    assert_same_params(final_params(whole), final_params(chunked), atol=1e-5)


def test_soup_reference_is_the_weight_average(tmp_path, base_overrides, smol_tokenizer):
    """SALSA: reference.model = a soup folder; the reference log-probs are those of the averaged weights."""
    from conftest import tiny_llama

    from alignkit.models.soup import save_soup
    from alignkit.train import Trainer

    other = tmp_path / "other"
    tiny_llama(vocab_size=len(smol_tokenizer), seed=5).save_pretrained(other)
    smol_tokenizer.save_pretrained(other)
    policy_dir = base_overrides[0].split("=", 1)[1]
    soup_dir = save_soup([policy_dir, other], tmp_path / "soup", weights=[1, 3])
    run = Trainer.prepare(load_config(None, base_overrides + ["batch_size=4", "max_steps=1", f"reference.model={soup_dir}",
                                                        f"output_dir={tmp_path / 'run'}"]))
    a = AutoModelForCausalLM.from_pretrained(policy_dir).state_dict()
    b = AutoModelForCausalLM.from_pretrained(other).state_dict()
    averaged = AutoModelForCausalLM.from_pretrained(other)
    averaged.load_state_dict({k: 0.25 * a[k] + 0.75 * b[k] for k in a})
    from alignkit.train.references import score_examples

    expected = score_examples(averaged.eval(), run.source.examples, run.source.collate, 4, torch.device("cpu"))
    cached = run.source.reference
    assert torch.allclose(cached["sums"], expected["sums"], atol=1e-4)
    assert not torch.allclose(cached["sums"], score_examples(
        AutoModelForCausalLM.from_pretrained(other).eval(), run.source.examples, run.source.collate, 4,
        torch.device("cpu"))["sums"], atol=1e-2)
