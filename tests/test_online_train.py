"""Online training through the one trainer: a bandit learns, accumulation and resume are exact, KL starts at 0,
and bad online configurations fail before any sampling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CHOSEN, WORDS, tiny_llama
from safetensors.torch import load_file

from alignkit.data.prompts import content_key, render_prompt
from alignkit.train.config import ConfigError, load_config
from alignkit.train.loop import Trainer, train

pytestmark = pytest.mark.usefixtures("one_thread")

def prompts_file(path: Path, n: int = 4) -> Path:
    sentences = ["say a word", "say a word please", "say a word now", "please say a word now"]
    path.write_text("".join(json.dumps({"prompt": sentences[i % 4]}) + "\n" for i in range(n)))
    return path


def overrides(model_dir: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return [f"model.name_or_path={model_dir}", f"data.train={data}", f"output_dir={out}", "report_to=none",
            "progress=false", "overwrite=true", "online.k=8", "online.max_new_tokens=1",
            f"reward.specs=[verifier:regex=^{CHOSEN}$]", "optim.lr=0.002", "optim.schedule=constant", *extra]


def chosen_probability(trainer: Trainer, prompt_ids: list[int]) -> float:
    with torch.no_grad():
        logits = trainer.model(input_ids=torch.tensor([prompt_ids])).logits[0, -1]
    return logits.softmax(-1)[WORDS.index(CHOSEN)].item()


@pytest.mark.parametrize("objective", ["rloo", "grpo", "reinforce_pp"])
def test_a_bandit_raises_the_rewarded_tokens_probability_monotonically(tmp_path, word_model_dir, objective):
    data = prompts_file(tmp_path / "prompts.jsonl", n=1)
    config = load_config(None, overrides(word_model_dir, data, tmp_path / "run", f"objective.name={objective}",
                                         "batch_size=1", "max_steps=15", "objective.params.beta=0.0"))
    trainer = Trainer.prepare(config)
    try:
        text = render_prompt(trainer.tokenizer, "say a word")  # as the sampler renders it
        prompt = trainer.tokenizer(text, add_special_tokens=False)["input_ids"]
        probabilities = [chosen_probability(trainer, prompt)]
        for _ in range(15):
            trainer.step()
            probabilities.append(chosen_probability(trainer, prompt))
    finally:
        trainer.close()
    assert all(b >= a - 1e-6 for a, b in zip(probabilities, probabilities[1:])), probabilities
    assert probabilities[-1] > 2 * probabilities[0], probabilities


@pytest.mark.parametrize("objective", ["rloo", "grpo", "reinforce_pp"])
def test_accumulating_four_micro_batches_equals_one_batch_of_four(tmp_path, word_model_dir, objective):
    data = prompts_file(tmp_path / "prompts.jsonl", n=4)
    common = [f"objective.name={objective}", "max_steps=1", "online.max_new_tokens=3", "online.k=3",
              "reward.specs=[verifier:regex=w1, verifier:max_words=1]", "optim.lr=0.01"]  # w1, w10-w12: a dense reward
    weights, logged = [], []
    for layout in (["batch_size=4", "grad_accum=1"], ["batch_size=1", "grad_accum=4"]):
        out = tmp_path / layout[0]
        result = train(load_config(None, overrides(word_model_dir, data, out, *common, *layout)))
        weights.append(load_file(result.final_dir / "model.safetensors"))
        logged.append(json.loads((out / "metrics.jsonl").read_text().splitlines()[0]))
        assert logged[-1]["zero_variance"] < 1  # some group carried a signal
    one, four = weights
    # the gradient's norm is scale-sensitive (Adam's first step is not); the weights check its direction
    assert logged[0]["grad_norm"] == pytest.approx(logged[1]["grad_norm"], rel=1e-5)
    assert logged[0]["loss"] == pytest.approx(logged[1]["loss"], rel=1e-5, abs=1e-7)
    assert all(torch.allclose(one[k], four[k], atol=1e-4) for k in one)
    assert any(not torch.equal(one[k], load_file(word_model_dir / "model.safetensors")[k]) for k in one)


def test_kl_is_zero_at_step_zero_and_grows_without_a_penalty(tmp_path, word_model_dir):
    data = prompts_file(tmp_path / "prompts.jsonl", n=2)
    result = train(load_config(None, overrides(word_model_dir, data, tmp_path / "run", "objective.name=rloo",
                                               "batch_size=2", "max_steps=8", "objective.params.beta=0.0",
                                               "optim.lr=0.01", "reward.specs=[verifier:regex=w1]")))
    kl = [json.loads(line)["kl"] for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert kl[0] == 0.0  # the first step's samples are scored by the untrained policy and the reference alike
    assert kl[-1] > 0.01 and kl[-1] > kl[1], kl


def test_online_dpo_trains_on_fresh_pairs(tmp_path, word_model_dir):
    data = prompts_file(tmp_path / "prompts.jsonl", n=2)
    result = train(load_config(None, overrides(word_model_dir, data, tmp_path / "run", "objective.name=online_dpo",
                                               "online.k=2", "batch_size=2", "max_steps=3")))
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert all(0 <= row["tie"] <= 1 and row["sample_s"] > 0 for row in rows)
    assert rows[0]["loss"] == pytest.approx(0.693147 * (1 - rows[0]["tie"]), abs=1e-5)  # DPO at the reference


def test_step_metrics_are_logged(tmp_path, word_model_dir):
    data = prompts_file(tmp_path / "prompts.jsonl", n=2)
    result = train(load_config(None, overrides(word_model_dir, data, tmp_path / "run", "objective.name=grpo",
                                               "batch_size=2", "max_steps=2", "online.updates_per_batch=2",
                                               "online.max_new_tokens=2")))
    rows = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    for key in ("reward", "reward_std", "kl", "kl_k3_per_token", "entropy", "clip_fraction", "completion_length",
                "zero_variance", "sample_s", "reward_s", "logps_s", "update_s"):
        assert key in rows[0], key
    assert rows[0]["sample_s"] > 0 and rows[1]["sample_s"] == 0  # the second step reuses the first's samples
    assert rows[0]["clip_fraction"] == 0  # first update of a generation: the ratio is exactly 1


def test_bad_online_configurations_fail_before_sampling(tmp_path, word_model_dir):
    data = prompts_file(tmp_path / "prompts.jsonl")
    base = overrides(word_model_dir, data, tmp_path / "run")
    with pytest.raises(ConfigError, match=r"online.k=1 .*rloo needs at least 2 samples per prompt"):
        load_config(None, base + ["objective.name=rloo", "online.k=1"])
    with pytest.raises(ConfigError, match=r"online.k=3 .*online_dpo needs exactly 2"):
        load_config(None, base + ["objective.name=online_dpo", "online.k=3"])
    with pytest.raises(ConfigError, match=r"reward.specs=\[.verifier:nope.\].*\[0\] .verifier:nope.: unknown verifier"):
        load_config(None, base + ["objective.name=grpo", "reward.specs=[verifier:nope]"])
    with pytest.raises(ConfigError, match=r"reward.specs=\[\].*learns from a reward"):
        load_config(None, base + ["objective.name=grpo", "reward.specs=[]"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(Exception, match=r"data.train=.*empty.jsonl"):
        Trainer.prepare(load_config(None, overrides(word_model_dir, empty, tmp_path / "run2", "objective.name=grpo")))


def test_sigkill_then_resume_equals_the_uninterrupted_run(tmp_path, word_model_dir):
    """Generations serve two updates each (the sampler's part-used generation is in the checkpoint)."""
    data = prompts_file(tmp_path / "prompts.jsonl")
    common = overrides(word_model_dir, data, tmp_path / "unused", "objective.name=grpo", "batch_size=2",
                       "max_steps=6", "save_every=1", "keep_checkpoints=10", "online.updates_per_batch=2", "online.max_new_tokens=3",
                       "online.k=4", "seed=3", "reward.specs=[verifier:regex=w7]")
    common = [item for item in common if not item.startswith(("output_dir", "overwrite"))]

    def launch(out: Path, *extra: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "alignkit.cli.main", "train", *common, f"output_dir={out}",
                                 *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "ALIGNKIT_CACHE": str(tmp_path / "c")})

    assert launch(tmp_path / "straight").wait(timeout=300) == 0
    run = tmp_path / "killed"
    process = launch(run)
    deadline = time.monotonic() + 300
    checkpoint = run / "checkpoints" / "step-000003" / "manifest.json"
    while process.poll() is None and time.monotonic() < deadline:  # kill once step 3 (mid-generation) is saved
        if checkpoint.exists():
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    assert process.wait() == -signal.SIGKILL
    import shutil

    for later in sorted((run / "checkpoints").glob("step-*"))[3:]:  # as if the kill came right after step 3
        shutil.rmtree(later)
    assert (checkpoint.parent / "source.pt").exists()
    assert launch(run, "--resume").wait(timeout=300) == 0
    expected = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    got = load_file(run / "final" / "model.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@torch.no_grad()
def naive_token_logps(model, prompt: tuple, completion: tuple) -> torch.Tensor:
    """log π of each completion token from one full-logits forward of the sequence alone."""
    ids = torch.tensor([list(prompt) + list(completion)])
    logps = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
    return logps[len(prompt) - 1:].gather(1, ids[0, len(prompt):, None]).squeeze(1)


@pytest.mark.parametrize("name", ["rloo", "grpo", "reinforce_pp", "online_dpo"])
def test_first_step_equals_the_objective_on_naively_scored_samples(tmp_path, word_model_dir, name):
    """The trainer's first loss equals the objective's function on the same samples, each scored alone by the
    initial model (policy = sampling policy = reference at step 0), with the batch's rewards."""
    import copy

    from alignkit.objectives import get

    data = prompts_file(tmp_path / "prompts.jsonl", n=4)
    k = 2 if name == "online_dpo" else 3
    trainer = Trainer.prepare(load_config(None, overrides(
        word_model_dir, data, tmp_path / "run", f"objective.name={name}", f"online.k={k}", "batch_size=4",
        "max_steps=1", "online.max_new_tokens=4", "reward.specs=[verifier:regex=w7, verifier:max_words=2]")))
    initial = copy.deepcopy(trainer.model).double().eval()
    logged = trainer.step()
    generation = trainer.source.current
    trainer.close()
    objective = get(name)
    batch = generation.batches[0]
    rewards = batch["rewards"].reshape(k, -1).T.double()
    per_token = [[naive_token_logps(initial, e.groups[0][0], c) for c in e.groups[0][1]] for e in generation.examples]
    width = max(len(t) for row in per_token for t in row)
    tokens = torch.zeros(len(per_token), k, width, dtype=torch.float64)
    mask = torch.zeros(len(per_token), k, width, dtype=torch.bool)
    for b, row in enumerate(per_token):
        for i, t in enumerate(row):
            tokens[b, i, :len(t)], mask[b, i, :len(t)] = t, True
    sums, lengths = (tokens * mask).sum(-1), mask.sum(-1).double()
    values = {"completions_rewards": rewards, "completions_token_mask": mask, "completions_lengths": lengths,
              "max_new_tokens": torch.full((len(per_token),), 4.0)}
    for model in ("policy", "old", "ref"):
        values.update({f"{model}_completions_logps": sums, f"{model}_completions_token_logps": tokens})
    params = objective.defaults
    values.update(objective.run_prepare(values, params))
    losses, metrics = objective.fn(**{n: values[n] for n in objective.inputs}, **params)
    assert logged["loss"] == pytest.approx(losses.mean().item(), abs=2e-6, rel=1e-5)
    for key, value in metrics.items():  # the loss is ~0 at ratio 1 for RLOO and GRPO; their metrics are not
        assert logged[key] == pytest.approx(value.double().mean().item(), abs=2e-6, rel=1e-5), key
    assert logged["reward"] == pytest.approx(rewards.mean().item(), abs=1e-6)
    assert logged["kl"] == 0.0


def test_ctrl_reward_is_the_transformed_quantile_among_cached_reference_samples(tmp_path, word_model_dir,
                                                                                monkeypatch, caplog):
    """reward.transform=best_of_n: each sample's reward is u^n, u its quantile (ties ½) among the reference
    policy's samples of its prompt, drawn once and read from the cache by the next run."""
    import logging

    from alignkit.models.rewards.verifiers import RegexMatch

    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    data = prompts_file(tmp_path / "prompts.jsonl", n=2)
    config = load_config(None, overrides(word_model_dir, data, tmp_path / "run", "objective.name=rloo",
                                         "batch_size=2", "max_steps=1", "online.max_new_tokens=3",
                                         "reward.specs=[verifier:regex=w7]", "reward.transform=best_of_n",
                                         "reward.n=2", "reward.reference_samples=5"))
    trainer = Trainer.prepare(config)
    cached = list((tmp_path / "cache" / "reference_samples").glob("*.json"))
    assert len(cached) == 1
    document = json.loads(cached[0].read_text())
    prompt, completions = "say a word", ["w7", "w1 w2", "w7 w7"]
    got = trainer.source.reward([prompt] * 3, completions)
    trainer.close()
    raw = RegexMatch("w7")
    references = [raw.check(t) for t in document["texts"][document["prompts"].index(content_key(prompt))]]
    assert len(references) == 5
    expected = []
    for completion in completions:
        r = raw.check(completion)
        u = (sum(x < r for x in references) + 0.5 * sum(x == r for x in references)) / len(references)
        expected.append(u ** 2)
    assert torch.allclose(got, torch.tensor(expected))
    with caplog.at_level(logging.INFO):
        Trainer.prepare(load_config(None, overrides(word_model_dir, data, tmp_path / "run2", "objective.name=rloo",
                                                    "batch_size=2", "max_steps=1", "online.max_new_tokens=3",
                                                    "reward.specs=[verifier:regex=w7]", "reward.transform=best_of_n",
                                                    "reward.n=2", "reward.reference_samples=5"))).close()
    assert any("reused the reference samples" in record.message for record in caplog.records)
