"""K samples per prompt (`alignkit.decode.sampling`), log-prob scoring of dataset rows (`alignkit.pipelines`),
`alignkit.models.soup`, and the `alignkit sample`, `alignkit score` and `alignkit data soup` verbs end to end on
tiny model folders."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama

from alignkit.cli.main import main
from alignkit.data import DataError, Example, Record, TruncationConfig, tokenize_examples
from alignkit.data.examples import load_examples
from alignkit.decode.sampling import draw_samples
from alignkit.pipelines import likelihood_rows
from alignkit.models import Loaded, load
from alignkit.models.logprobs import completion_logps
from alignkit.models.soup import SoupError, load_soup, soup_state_dict

PROMPTS = [[{"role": "user", "content": "What colour is the sky?"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
           [{"role": "user", "content": "Write a long story about a dragon who learns to read."}]]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: one thread, no contention


def chat_model(tokenizer, seed=0, **overrides):
    return tiny_llama(vocab_size=len(tokenizer), seed=seed, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, **overrides)


def sample_completions(model, tokenizer, prompts, k, **settings):
    return draw_samples(model, tokenizer, prompts, n=k, **settings)[0]


def test_k_samples_per_prompt_reproducible_with_a_seed(smol_tokenizer):
    model = chat_model(smol_tokenizer)
    rng = torch.get_rng_state()
    first = sample_completions(model, smol_tokenizer, PROMPTS, k=3, max_new_tokens=6, batch_size=2, seed=0)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is left alone
    assert [len(samples) for samples in first] == [3, 3, 3]
    assert all(len(set(samples)) > 1 for samples in first)  # temperature 1: different samples
    assert sample_completions(model, smol_tokenizer, PROMPTS, k=3, max_new_tokens=6, batch_size=2, seed=0) == first
    assert sample_completions(model, smol_tokenizer, PROMPTS, k=3, max_new_tokens=6, batch_size=2, seed=1) != first


def greedy_without_cache(model, tokenizer, prompt, max_new_tokens):
    """Greedy decoding by full forwards over the whole sequence, no KV cache, no padding."""
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=ids, use_cache=False).logits[0, -1].argmax())
            new.append(token)
            if token == tokenizer.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def test_greedy_kv_cache_batch_equals_no_cache_decoding(smol_tokenizer):
    model = chat_model(smol_tokenizer, tie_word_embeddings=False)  # tied random weights just echo the last token
    got = sample_completions(model, smol_tokenizer, PROMPTS, k=2, max_new_tokens=8, temperature=0, batch_size=3)
    expected = [greedy_without_cache(model, smol_tokenizer, prompt, 8) for prompt in PROMPTS]
    assert got == [[text, text] for text in expected]
    assert len(set(expected)) == 3 and all(len(text) > 4 for text in expected)


ROWS = [{"prompt": PROMPTS[0], "completion": [{"role": "assistant", "content": "Blue, on a clear day."}]},
        {"prompt": PROMPTS[1], "completion": "Hello."},  # a string answering messages: one assistant message
        {"prompt": "Plain text prompt:", "completion": " and its completion"}]


def direct_scores(model, tokenizer, rows):
    """Each row alone (no padding): training tokenization, then `completion_logps`."""
    means, sums = [], []
    for row in rows:
        completion = row["completion"]
        if isinstance(row["prompt"], list) and isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        (pair,), _ = tokenize_examples([Example.single(row["prompt"], completion, "r")], tokenizer,
                                       TruncationConfig(max_length=4096, max_prompt_length=4095))
        ids = torch.tensor([pair.prompt_ids + pair.slot("completion")[0]])
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[0, len(pair.prompt_ids):] = True
        with torch.no_grad():
            scores = completion_logps(model, ids, torch.ones_like(ids), mask)
        means.append(scores.mean.item())
        sums.append(scores.sum.item())
    return means, sums


def test_scores_equal_completion_logps_per_model(smol_tokenizer):
    models = [chat_model(smol_tokenizer, seed) for seed in (0, 1)]
    records = [Record(row, f"row {i}") for i, row in enumerate(ROWS, 1)]
    scored = likelihood_rows(records, [Loaded(m, smol_tokenizer, "m") for m in models], batch_size=2)
    for column, model in enumerate(models):
        means, sums = direct_scores(model, smol_tokenizer, ROWS)
        assert [row["scores"][column] for row in scored] == pytest.approx(means, abs=1e-5)
        assert [row["scores_sum"][column] for row in scored] == pytest.approx(sums, abs=1e-4)
    assert scored[0]["scores"][0] != scored[0]["scores"][1]
    with pytest.raises(DataError, match=r"row 2, field 'completion': missing"):
        likelihood_rows([records[0], Record({"prompt": "x"}, "row 2")], [Loaded(models[0], smol_tokenizer, "m")])


def test_soup_is_the_weighted_average_computed_in_float32():
    a, b = tiny_llama(seed=0).state_dict(), tiny_llama(seed=1).state_dict()
    soup = soup_state_dict([a, b], [1, 3])
    assert soup.keys() == a.keys()
    for key in a:
        assert torch.allclose(soup[key], 0.25 * a[key] + 0.75 * b[key], atol=1e-7, rtol=0), key
    uniform = soup_state_dict([a, b])
    assert torch.allclose(uniform["lm_head.weight"], (a["lm_head.weight"] + b["lm_head.weight"]) / 2)
    half = {k: v.bfloat16() for k, v in a.items()}, {k: v.bfloat16() for k, v in b.items()}
    mixed = soup_state_dict(list(half), [1, 1])
    key = "model.layers.0.mlp.up_proj.weight"
    assert mixed[key].dtype == torch.bfloat16
    assert torch.equal(mixed[key], ((half[0][key].float() + half[1][key].float()) / 2).bfloat16())


@pytest.mark.parametrize("weights, message", [([-1, 2], "non-negative"), ([0, 0], "not all zero"),
                                              ([1], "1 weights for 2 models"), ([float("nan"), 1], "finite")])
def test_soup_weights_validated(weights, message):
    a = tiny_llama().state_dict()
    with pytest.raises(SoupError, match=message):
        soup_state_dict([a, a], weights)


def test_soup_needs_matching_tensors():
    a, wider = tiny_llama().state_dict(), tiny_llama(vocab_size=130).state_dict()
    with pytest.raises(SoupError, match=r"'model.embed_tokens.weight' has shape \(130, 32\)"):
        soup_state_dict([a, wider])
    with pytest.raises(SoupError, match="different tensors"):
        soup_state_dict([a, {k: v for k, v in a.items() if "layers.1." not in k}])


@pytest.fixture()
def second_model_dir(tmp_path, smol_tokenizer):
    folder = tmp_path / "tiny-chat-2"
    chat_model(smol_tokenizer, seed=1).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    return folder


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_cli_sample_writes_d2o_rows(tmp_path, tiny_chat_model_dir, capsys):
    rejected = [{"role": "assistant", "content": "No."}]
    rows = [{"prompt": p, "rejected": rejected, "id": i} for i, p in enumerate(PROMPTS)]
    data = _jsonl(tmp_path / "negatives.jsonl", rows)
    before = data.read_bytes()
    out = tmp_path / "d2o.jsonl"
    args = ["sample", "--model", str(tiny_chat_model_dir), "--data", str(data), "--k", "2", "--max-new-tokens", "4",
            "--out", str(out)]
    assert main(args) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in written] == [0, 1, 2] and data.read_bytes() == before
    assert all(len(row["samples"]) == 2 and row["samples"][0][0]["role"] == "assistant" for row in written)
    examples = load_examples(str(out), "samples")  # exactly what D2O reads
    assert examples[0].slots == (("samples", 2), ("rejected", 1))
    assert main(args) == 2 and "already exists" in capsys.readouterr().err


def test_cli_score_with_two_models(tmp_path, tiny_chat_model_dir, second_model_dir, smol_tokenizer):
    data = _jsonl(tmp_path / "sft.jsonl", [{**row, "id": i} for i, row in enumerate(ROWS)])
    out = tmp_path / "scored.jsonl"
    assert main(["score", "--models", str(tiny_chat_model_dir), str(second_model_dir), "--data", str(data),
                 "--out", str(out), "--batch-size", "2"]) == 0
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [row["id"] for row in written] == [0, 1, 2]
    for column, folder in enumerate([tiny_chat_model_dir, second_model_dir]):
        model, tokenizer, _ = load(folder)
        means, sums = direct_scores(model, tokenizer, ROWS)
        assert [row["scores"][column] for row in written] == pytest.approx(means, abs=1e-5)
        assert [row["scores_sum"][column] for row in written] == pytest.approx(sums, abs=1e-4)


def test_cli_soup_folder_loads_with_the_averaged_weights(tmp_path, tiny_chat_model_dir, second_model_dir):
    out = tmp_path / "soup"
    assert main(["data", "soup", "--models", str(tiny_chat_model_dir), str(second_model_dir), "--weights", "1", "3",
                 "--out", str(out)]) == 0
    soup, tokenizer, _ = load(out)
    a, b = load(tiny_chat_model_dir).model.state_dict(), load(second_model_dir).model.state_dict()
    for key, tensor in soup.state_dict().items():
        assert torch.allclose(tensor, 0.25 * a[key] + 0.75 * b[key], atol=1e-7, rtol=0), key
    assert tokenizer.chat_template and json.loads((out / "soup.json").read_text())["weights"] == [0.25, 0.75]
    in_memory = load_soup([tiny_chat_model_dir, second_model_dir], [1, 3]).model.state_dict()
    assert all(torch.equal(in_memory[key], tensor) for key, tensor in soup.state_dict().items())
    assert main(["data", "soup", "--models", str(tiny_chat_model_dir), "--out", str(out)]) == 2
    assert main(["data", "soup", "--models", str(tiny_chat_model_dir), str(second_model_dir), "--weights", "1",
                 "--out", str(tmp_path / "bad")]) == 2
