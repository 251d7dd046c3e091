"""`alignkit eval`: win rate, rewards and KL of policies against a reference, checked against exact values."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from alignkit.cli.main import main
from alignkit.models.sampling import sample_sequences
from alignkit.eval import compare as compare_module
from alignkit.eval.compare import SamplingSettings, compare, policy_kl
from alignkit.eval.inputs import expand_policies
from alignkit.eval.plots import pixels, png_size
from alignkit.eval.stats import bootstrap_mean, paired_sign_test, win_rate
from alignkit.models.likelihood import token_logps_of_ids
from alignkit.models.loading import Loaded
from alignkit.models.rewards.verifiers import MaxWords
from conftest import tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["Name a colour.", "Say hello to the reader please.", "Count to three."]


def two_token_tokenizer():
    """Word-level tokenizer over <pad>, <s>, </s> and two words: every output of a few tokens can be listed."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "a": 3, "b": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<pad>")


def sequence_logp(model, prompt: list[int], completion: tuple[int, ...]) -> float:
    """log p(completion | prompt) from full-vocabulary logits of one plain forward (independent of alignkit)."""
    ids = torch.tensor([prompt + list(completion)])
    with torch.no_grad():
        logp = model(ids).logits[0].double().log_softmax(-1)
    return float(sum(logp[len(prompt) - 1 + t, token] for t, token in enumerate(completion)))


def test_kl_on_an_enumerable_model_equals_the_exact_sum_within_monte_carlo_error():
    tokenizer = two_token_tokenizer()
    policy = Loaded(tiny_llama(5, seed=0, initializer_range=0.4), tokenizer, "policy")
    reference = Loaded(tiny_llama(5, seed=1, initializer_range=0.4), tokenizer, "reference")
    prompt, steps, eos = [3, 4], 3, 2
    # every output of at most 3 tokens: it stops at EOS or is cut after the third token
    outputs = [(eos,)] + [(x, eos) for x in (0, 1, 3, 4)] + list(itertools.product((0, 1, 3, 4), (0, 1, 3, 4), range(5)))
    p = np.array([sequence_logp(policy.model, prompt, y) for y in outputs])
    q = np.array([sequence_logp(reference.model, prompt, y) for y in outputs])
    assert np.exp(p).sum() == pytest.approx(1.0, abs=1e-5)  # float32 logits
    exact = float((np.exp(p) * (p - q)).sum())
    assert exact > 0.05  # the two random models disagree enough for the test to mean something

    samples = sample_sequences(policy.model, tokenizer, ["a b"], n=4000, temperature=1.0, max_new_tokens=steps,
                               batch_size=1, seed=0, chat_template=False)
    assert samples.prompt_ids == [prompt]
    kls = policy_kl(policy, reference, samples, batch_size=4000)[0]
    k1 = np.array([s.k1 for s in kls])
    k3 = np.array([s.k3 for s in kls])
    assert (k3 >= 0).all()
    for estimate in (k1, k3):
        error = estimate.std(ddof=1) / np.sqrt(estimate.size)
        assert abs(estimate.mean() - exact) < 4 * error, (estimate.mean(), exact, error)
    # the per-sample k1 is exactly log p(y) - log q(y) of the enumerated output
    index = {y: i for i, y in enumerate(outputs)}
    for ids, s in list(zip(samples.completion_ids[0], kls))[:50]:
        assert s.k1 == pytest.approx(p[index[tuple(ids)]] - q[index[tuple(ids)]], abs=1e-4)


def test_token_logps_of_ids_equal_a_plain_forward_and_any_id_is_scored():
    model = tiny_llama(40, seed=3)
    prompts, completions = [[5, 6, 7], [8]], [[9, 0, 11, 2], [12, 13]]  # id 0 (padding) inside a completion
    for got, prompt, completion in zip(token_logps_of_ids(model, prompts, completions, batch_size=2), prompts,
                                       completions):
        ids = torch.tensor([prompt + completion])
        with torch.no_grad():
            logp = model(ids).logits[0].log_softmax(-1)
        expected = torch.stack([logp[len(prompt) - 1 + t, c] for t, c in enumerate(completion)])
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_model_against_itself_has_win_rate_one_half_and_kl_exactly_zero(smol_tokenizer, temperature):
    model = Loaded(tiny_llama(len(smol_tokenizer), seed=0, pad_token_id=smol_tokenizer.pad_token_id,
                              eos_token_id=smol_tokenizer.eos_token_id), smol_tokenizer, "m")
    settings = SamplingSettings(n=2, temperature=temperature, max_new_tokens=6, kl_samples=2)
    comparison = compare([model], model, PROMPTS, {"words": MaxWords(3)}, settings)
    from alignkit.eval.compare_report import summarise

    results = summarise(comparison)
    win = results["rewards"]["words"]["win_rate"][1]
    assert win["value"] == 0.5 and win["low"] <= 0.5 <= win["high"]
    kl = results["kl"][1]
    for key in ("k1_per_sequence", "k3_per_sequence", "k1_per_token", "k3_per_token"):
        assert kl[key]["value"] == 0.0


def test_win_rate_of_simulated_best_of_n_is_n_over_n_plus_1_and_its_interval_covers_it():
    n, prompts, seeds = 4, 100, 200
    truth = n / (n + 1)
    covered, values = 0, []
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        best = rng.random((prompts, n)).max(axis=1, keepdims=True)  # best of n reference draws, one per prompt
        single = rng.random((prompts, 1))
        estimate = win_rate(best, single)
        covered += estimate.covers(truth)
        values.append(estimate.value)
    assert covered / seeds >= 0.90
    assert np.mean(values) == pytest.approx(truth, abs=0.01)


def test_win_rate_counts_ties_as_one_half_and_bootstrap_of_one_value_is_that_value():
    assert win_rate([[1.0, 0.0]], [[1.0]]).value == pytest.approx(0.25)  # a tie (½) and a loss (0)
    assert win_rate([[2.0], [0.0]], [[1.0], [1.0]]).value == 0.5
    single = bootstrap_mean([0.7])
    assert (single.value, single.low, single.high) == (0.7, 0.7, 0.7)


def test_paired_sign_test_is_the_exact_mcnemar_test():
    # 6 discordant pairs all favouring one side: two-sided p = 2 / 2^6
    assert paired_sign_test([1, 1, 1, 1, 1, 1, 0, 0]) == pytest.approx(2 / 64)
    assert paired_sign_test([0, 0, 0]) == 1.0
    assert paired_sign_test([1, -1]) == 1.0


def _write_prompts(path, with_checks=True):
    rows = [{"prompt": text, **({"check": {"type": "max_words", "n": 4}} if with_checks else {})} for text in PROMPTS]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture()
def second_model_dir(tmp_path, smol_tokenizer):
    folder = tmp_path / "tiny-chat-2"
    tiny_llama(len(smol_tokenizer), seed=7, pad_token_id=smol_tokenizer.pad_token_id,
               eos_token_id=smol_tokenizer.eos_token_id).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


def test_eval_cli_writes_numbers_transcripts_plots_and_report(tmp_path, tiny_chat_model_dir, second_model_dir, capsys):
    prompts = _write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "eval"
    code = main(["eval", "--policy", str(tiny_chat_model_dir), "--policy", str(second_model_dir), "--reference",
                 str(tiny_chat_model_dir), "--prompts", str(prompts), "--reward", "checks", "--reward",
                 "verifier:max_words=3", "--max-new-tokens", "5", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "eval.json").read_text())
    assert [s["role"] for s in results["systems"]] == ["reference", "policy", "policy"]
    assert results["rewards"]["checks"]["kind"] == "pass rate"
    # the first policy is the reference itself: greedy answers tie everywhere
    assert results["rewards"]["checks"]["win_rate"][1]["value"] == 0.5
    assert results["kl"][1]["k3_per_sequence"]["value"] == 0.0
    assert results["kl"][2]["k3_per_sequence"]["value"] > 0.0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * len(PROMPTS) and set(rows[0]["rewards"]) == {"checks", "verifier:max_words=3"}
    plots = sorted(p.name for p in (out / "plots").iterdir())
    assert plots == ["frontier_checks.png", "frontier_verifier_max_words_3.png", "rewards_checks.png",
                     "rewards_verifier_max_words_3.png", "win_rate.png"]
    for name in plots:
        assert png_size(out / "plots" / name) == pixels()
    report = (out / "report.md").read_text()
    assert "## Win rate against the reference" in report and "(plots/win_rate.png)" in report
    assert "alignkit eval --policy" in report
    assert "win rate 0.500" in capsys.readouterr().out


@pytest.mark.parametrize("arguments, message", [
    (["--reward", "verifier:nope"], "--reward verifier:nope: unknown verifier"),
    (["--reward", "bogus"], "--reward bogus: unknown reward spec"),
    (["--reference", "/nonexistent/model"], "/nonexistent/model"),
    (["--no-checks-file"], "no prompts found"),
    (["--no-checks"], "give at least one --reward"),
])
def test_bad_input_fails_before_any_generation(tmp_path, tiny_chat_model_dir, capsys, monkeypatch, arguments, message):
    def no_generation(*args, **kwargs):
        raise AssertionError("generation started")
    monkeypatch.setattr(compare_module, "sample_sequences", no_generation)
    prompts = _write_prompts(tmp_path / "prompts.jsonl", with_checks="--no-checks" not in arguments)
    if "--no-checks-file" in arguments:
        prompts.write_text("")
    extra = [a for a in arguments if not a.startswith("--no-checks")]
    base = {"--policy": str(tiny_chat_model_dir), "--reference": str(tiny_chat_model_dir), "--prompts": str(prompts),
            "--out": str(tmp_path / "out")}
    for flag, value in zip(extra[::2], extra[1::2]):
        if flag in base:
            base[flag] = value
    argv = ["eval"] + [x for pair in base.items() for x in pair] + [x for flag, value in zip(extra[::2], extra[1::2])
                                                                  if flag not in base for x in (flag, value)]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_an_existing_output_folder_is_refused_before_anything_runs(tmp_path, tiny_chat_model_dir, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["eval", "--policy", str(tiny_chat_model_dir), "--reference", str(tiny_chat_model_dir), "--prompts",
                 str(_write_prompts(tmp_path / "p.jsonl")), "--out", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"


def test_a_run_folder_stands_for_its_complete_checkpoints_and_final_model(tmp_path):
    run = tmp_path / "run"
    for step, complete in (("step-000010", True), ("step-000020", False), ("step-000005", True)):
        (run / "checkpoints" / step).mkdir(parents=True)
        if complete:
            (run / "checkpoints" / step / "manifest.json").write_text("{}")
    (run / "final").mkdir()
    (run / "final" / "config.json").write_text("{}")
    assert expand_policies([str(run), "smollm2-135m-instruct"]) == [
        str(run / "checkpoints" / "step-000005"), str(run / "checkpoints" / "step-000010"), str(run / "final"),
        "smollm2-135m-instruct"]
    (run / "final" / "training_state.json").write_text('{"step": 10, "tokens": 0}')  # final = step 10's weights
    assert expand_policies([str(run)]) == [str(run / "checkpoints" / "step-000005"), str(run / "final")]


def test_best_of_n_keeps_each_blocks_highest_scoring_policy_answer_and_leaves_the_reference_alone():
    from alignkit.eval.compare import SystemOutput, best_of_n

    reference = SystemOutput("ref", "reference", [["r0", "r1", "r2", "r3"]], [[1, 2, 3, 4]])
    policy = SystemOutput("pol", "policy", [["a", "b", "c", "d"]], [[5, 6, 7, 8]])
    scores = {"first": [np.array([[0.0, 1.0, 2.0, 3.0]]), np.array([[0.2, 0.9, 0.5, 0.5]])],
              "second": [np.array([[9.0, 9.0, 9.0, 9.0]]), np.array([[1.0, 2.0, 3.0, 4.0]])]}
    systems, kept = best_of_n([reference, policy], scores, 2, "first")
    assert systems[0] is reference and kept["first"][0] is scores["first"][0]
    assert systems[1].texts == [["b", "c"]] and systems[1].tokens == [[6, 7]]  # a tie keeps the first
    assert kept["first"][1].tolist() == [[0.9, 0.5]] and kept["second"][1].tolist() == [[2.0, 3.0]]
    with pytest.raises(ValueError, match="best_of"):
        SamplingSettings(n=3, best_of=2)


def test_eval_cli_best_of_n_end_to_end(tmp_path, tiny_chat_model_dir, second_model_dir):
    """--n 4 --best-of 2: each policy keeps 2 answers per prompt (the better of each pair), the reference 4;
    the per-check tables count each system's own answers."""
    prompts = _write_prompts(tmp_path / "prompts.jsonl")
    out = tmp_path / "eval"
    code = main(["eval", "--policy", str(second_model_dir), "--reference", str(tiny_chat_model_dir), "--prompts",
                 str(prompts), "--reward", "verifier:max_words=3", "--reward", "checks", "--n", "4", "--best-of", "2",
                 "--temperature", "1", "--max-new-tokens", "4", "--out", str(out)])
    assert code == 0
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    per_system = {name: sum(row["role"] == name for row in rows) for name in ("reference", "policy")}
    assert per_system == {"reference": 4 * len(PROMPTS), "policy": 2 * len(PROMPTS)}
    assert "best of 2" in (out / "report.md").read_text()
    assert json.loads((out / "eval.json").read_text())["settings"]["best_of"] == 2
