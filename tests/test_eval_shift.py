"""Token distribution shift (`alignkit.eval.shift`, `alignkit analyze shift`) on tiny random models.

Truths: a model against itself (frame `same`) is unshifted everywhere with KL 0; a planted logit swap at one
known position is shifted there and nowhere else; ranks, probabilities and KLs equal a brute-force computation
with one forward per prefix (as AlignTDS `src/logit_analysis.py`) and the official dictionary-based KL
(`src/compute_dist_diff.py`); the summary of a hand-made analysis; the URIAL frame byte for byte.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_llama

from alignkit.cli.main import main
from alignkit.data.prompts import render_prompt
from alignkit.eval.plots import pixels, png_size
from alignkit.eval.shift import (AnswerShift, ShiftAnalysis, analyze_shift, base_context_ids, position_class,
                                  urial_frame)
from alignkit.eval.shift_report import summarize

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["Hi there", "Tell me a long story about cats, please", [{"role": "user", "content": "2+2?"}]]
# The official frame, typed from Re-Align/AlignTDS src/logit_analysis.py (`--enable_template`), {} = pure_input.
OFFICIAL_FRAME = "# Query: \n ```{}``` \n\n \n# Answer: \n ```"


def tiny(tokenizer, seed: int = 0):
    """A tiny random llama over `tokenizer`'s vocabulary; untied embeddings so greedy answers do not just repeat."""
    return tiny_llama(vocab_size=len(tokenizer), seed=seed, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)


def perturbed(model, scale: float, seed: int = 1):
    """A copy of `model` with N(0, scale²) noise on every weight: a second model whose ranks mix 1, 2-3 and >3."""
    import copy

    other = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return other


class PlantedShift(torch.nn.Module):
    """`model`, except that at input column `column` its top token and its 10th token swap logits (so the top
    token gets rank 10 there). Counts its forwards."""

    def __init__(self, model, column: int):
        super().__init__()
        self.inner, self.column, self.calls = model, column, 0

    @property
    def device(self):
        return self.inner.device

    def forward(self, input_ids, attention_mask=None, position_ids=None, logits_to_keep=0):
        self.calls += 1
        logits = self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        logits = logits.clone()
        order = logits[:, self.column].argsort(dim=-1, descending=True)
        top, tenth = order[:, 0], order[:, 9]
        rows = torch.arange(logits.shape[0])
        top_value = logits[rows, self.column, top].clone()
        logits[rows, self.column, top] = logits[rows, self.column, tenth]
        logits[rows, self.column, tenth] = top_value
        return SimpleNamespace(logits=logits[:, -logits_to_keep:] if logits_to_keep else logits)


def official_kl(base_logits: torch.Tensor, aligned_logits: torch.Tensor, k: int) -> float:
    """AlignTDS's KL: each model's top-k (token, logit) list, `norm_prob` over the list, then Σ over tokens in
    both lists of w_base · log(w_base / w_aligned) (compute_similarity(..., metric="KL"))."""
    def normed(logits: torch.Tensor) -> dict[int, float]:
        values, ids = logits.double().topk(k)
        top = float(values[0])
        total = sum(math.exp(float(v) - top) for v in values)
        return {int(i): math.exp(float(v) - top) / total for v, i in zip(values, ids)}

    base, aligned = normed(base_logits), normed(aligned_logits)
    return sum(w * math.log(w / aligned[t]) for t, w in base.items() if t in aligned)


def test_urial_frame_is_the_official_string_byte_for_byte(smol_tokenizer):
    query = "What are the names of some famous actors that started their careers on Broadway?"
    assert urial_frame(query).encode() == OFFICIAL_FRAME.format(query).encode()
    assert urial_frame(query).encode() == (b"# Query: \n ```" + query.encode() + b"``` \n\n \n# Answer: \n ```")
    messages = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": query}]
    expected = smol_tokenizer(OFFICIAL_FRAME.format(query), add_special_tokens=True)["input_ids"]
    assert base_context_ids(smol_tokenizer, messages, "urial", [5, 6]) == expected
    assert base_context_ids(smol_tokenizer, query, "same", [5, 6]) == [5, 6]
    assert base_context_ids(smol_tokenizer, messages, "plain", [5, 6]) == smol_tokenizer(query)["input_ids"]


def test_a_model_against_itself_in_the_same_frame_is_unshifted_everywhere(smol_tokenizer):
    model = tiny(smol_tokenizer)
    analysis = analyze_shift(model, smol_tokenizer, model, smol_tokenizer, PROMPTS, frame="same", max_new_tokens=10,
                             batch_size=2)
    assert analysis.positions >= 25
    for answer in analysis.answers:
        assert answer.ranks == [1] * len(answer.answer_ids)
        assert answer.kls == pytest.approx([0.0] * len(answer.answer_ids), abs=1e-6)
        assert answer.base_top == answer.tokens
    summary = summarize(analysis)
    assert summary["fractions"] == {"unshifted": 1.0, "marginal": 0.0, "shifted": 0.0}
    assert summary["shifted_tokens"] == []


def test_a_planted_swap_is_shifted_at_its_position_and_nowhere_else(smol_tokenizer):
    aligned, position = tiny(smol_tokenizer), 3
    prompt = PROMPTS[1]
    context = len(smol_tokenizer(render_prompt(smol_tokenizer, prompt), add_special_tokens=False)["input_ids"])
    base = PlantedShift(aligned, column=context - 1 + position)  # the column that predicts answer token 3
    analysis = analyze_shift(base, smol_tokenizer, aligned, smol_tokenizer, [prompt], frame="same", max_new_tokens=8)
    answer = analysis.answers[0]
    assert len(answer.ranks) == 8
    assert answer.ranks == [1, 1, 1, 10, 1, 1, 1, 1]
    assert answer.classes == ["unshifted"] * 3 + ["shifted"] + ["unshifted"] * 4
    assert answer.kls[position] > 1e-5  # the same top-30 set, two probabilities swapped: a KL above 0
    assert [kl for t, kl in enumerate(answer.kls) if t != position] == pytest.approx([0.0] * 7, abs=1e-6)
    assert base.calls == 1  # one teacher-forced forward for the batch, not one per position
    summary = summarize(analysis, bucket_width=4)
    assert [bucket["shifted"] for bucket in summary["by_position"]] == [0.25, 0.0]
    assert summary["shifted_tokens"][0]["token"] == answer.tokens[position]


def test_ranks_probs_and_kl_equal_one_forward_per_prefix(smol_tokenizer):
    aligned = tiny(smol_tokenizer)
    base = perturbed(aligned, 0.002)
    analysis = analyze_shift(base, smol_tokenizer, aligned, smol_tokenizer, PROMPTS, frame="urial", max_new_tokens=8,
                             batch_size=2, top_k=30)
    ranks = [rank for answer in analysis.answers for rank in answer.ranks]
    assert {1, 2} <= set(ranks) and max(ranks) > 3  # the pair covers all three classes
    with torch.no_grad():
        for prompt, answer in zip(PROMPTS, analysis.answers):
            query = prompt if isinstance(prompt, str) else prompt[-1]["content"]
            base_ids = smol_tokenizer(OFFICIAL_FRAME.format(query))["input_ids"]
            aligned_ids = smol_tokenizer(render_prompt(smol_tokenizer, prompt), add_special_tokens=False)["input_ids"]
            for t, token in enumerate(answer.answer_ids):
                base_logits = base(torch.tensor([base_ids + answer.answer_ids[:t]])).logits[0, -1]
                aligned_logits = aligned(torch.tensor([aligned_ids + answer.answer_ids[:t]])).logits[0, -1]
                assert int(aligned_logits.argmax()) == token  # the answer is the aligned model's greedy one
                # the rank counts the tokens the base prefers; in the flat tail of a random model, logits within
                # float noise (1e-5) of o_t's may order either way between a padded batch and one prefix
                chosen = base_logits[token]
                rank = int((base_logits > chosen).sum()) + 1
                assert int((base_logits > chosen + 1e-5).sum()) + 1 <= answer.ranks[t] <= int(
                    (base_logits > chosen - 1e-5).sum()) + 1
                assert answer.classes[t] == position_class(rank)
                if rank <= 10:
                    assert answer.ranks[t] == rank
                assert answer.base_probs[t] == pytest.approx(float(base_logits.softmax(-1)[token]), rel=1e-4)
                assert answer.kls[t] == pytest.approx(official_kl(base_logits, aligned_logits, 30), abs=1e-5)


def test_summary_of_a_hand_made_analysis():
    def answer(tokens, ranks, kls):
        return AnswerShift("p", "".join(tokens), list(range(len(tokens))), tokens, ranks, [0.5] * len(ranks), kls,
                           tokens)

    analysis = ShiftAnalysis([answer(["A", "B", "A", "C"], [1, 5, 7, 2], [0.0, 1.0, 2.0, 3.0]),
                              answer(["A", "D"], [4, 1], [4.0, 5.0])], "urial", 30)
    summary = summarize(analysis, bucket_width=2)
    assert summary["fractions"] == {"unshifted": 2 / 6, "marginal": 1 / 6, "shifted": 3 / 6}
    assert summary["per_prompt"]["shifted"]["value"] == pytest.approx((2 / 4 + 1 / 2) / 2)
    assert summary["shifted_tokens"] == [
        {"token": "A", "shifted": 2, "occurrences": 3, "fraction_shifted": 2 / 3},
        {"token": "B", "shifted": 1, "occurrences": 1, "fraction_shifted": 1.0}]
    assert [(b["start"], b["positions"], b["shifted"], b["mean_kl"]) for b in summary["by_position"]] == [
        (0, 4, 0.5, 2.5), (2, 2, 0.5, 2.5)]


@pytest.fixture()
def model_folders(tmp_path, smol_tokenizer, tiny_chat_model_dir):
    """(base, aligned): the tiny chat model and a second random one over the same tokenizer."""
    aligned = tmp_path / "tiny-aligned"
    tiny_llama(vocab_size=len(smol_tokenizer), seed=1, pad_token_id=smol_tokenizer.pad_token_id,
               eos_token_id=smol_tokenizer.eos_token_id).save_pretrained(aligned)
    smol_tokenizer.save_pretrained(aligned)
    return tiny_chat_model_dir, aligned


def write_prompts(path, prompts):
    path.write_text("".join(json.dumps({"prompt": prompt}) + "\n" for prompt in prompts))
    return path


def test_cli_writes_shift_json_report_and_plot(tmp_path, model_folders):
    base, aligned = model_folders
    prompts, out = write_prompts(tmp_path / "prompts.jsonl", PROMPTS), tmp_path / "shift"
    code = main(["analyze", "shift", "--base", str(base), "--aligned", str(aligned), "--prompts", str(prompts),
                 "--out", str(out), "--max-new-tokens", "6", "--batch-size", "2"])
    assert code == 0
    results = json.loads((out / "shift.json").read_text())
    assert results["settings"]["frame"] == "urial" and results["settings"]["top_k"] == 30
    assert len(results["answers"]) == 3
    positions = [record for answer in results["answers"] for record in answer["positions"]]
    assert len(positions) == results["summary"]["positions"] > 0
    shifted = sum(record["class"] == "shifted" for record in positions) / len(positions)
    assert results["summary"]["fractions"]["shifted"] == pytest.approx(shifted)
    assert sum(results["summary"]["fractions"].values()) == pytest.approx(1.0)
    report = (out / "report.md").read_text()
    assert all(ratio in report for ratio in ("7.8%", "4.8%", "5.2%"))
    assert png_size(out / "plots" / "shift_by_position.png") == pixels()


@pytest.fixture()
def other_vocabulary_folder(tmp_path):
    """A tiny model whose tokenizer has another vocabulary (a word-level one of 5 tokens)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>")
    folder = tmp_path / "other-vocabulary"
    tiny_llama(vocab_size=len(vocab)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", ["no prompts", "missing model", "other vocabulary", "output not empty"])
def test_cli_bad_input_fails_before_generation(case, tmp_path, model_folders, other_vocabulary_folder, monkeypatch,
                                               capsys):
    import alignkit.eval.shift

    def no_generation(*args, **kwargs):
        raise AssertionError("generation started")

    monkeypatch.setattr(alignkit.eval.shift, "sample_sequences", no_generation)
    base, aligned = model_folders
    prompts, out = write_prompts(tmp_path / "prompts.jsonl", PROMPTS), tmp_path / "out"
    expected = {"no prompts": "--prompts", "missing model": "--base", "other vocabulary": "--aligned",
                "output not empty": "already holds files"}[case]
    if case == "no prompts":
        prompts.write_text("")
    elif case == "missing model":
        base = tmp_path / "no-such-model"
    elif case == "other vocabulary":
        aligned = other_vocabulary_folder
    else:
        out.mkdir()
        (out / "old.txt").write_text("x")
    code = main(["analyze", "shift", "--base", str(base), "--aligned", str(aligned), "--prompts", str(prompts),
                 "--out", str(out)])
    error = capsys.readouterr().err
    assert code == 2
    assert error.startswith("alignkit analyze shift: error:") and expected in error
    if case == "other vocabulary":
        assert "different vocabularies" in error
