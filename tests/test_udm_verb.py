"""`alignkit.models.embeddings.prompt_embeddings` and the `alignkit data udm` verb (BCO's density-ratio
weights as `scores`) end to end on a tiny model folder, through to a short `bco_udm` training run."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama

from alignkit.cli.main import main
from alignkit.data import load_examples
from alignkit.data.prompts import prompt_ids
from alignkit.models.embeddings import prompt_embeddings
from alignkit.train import load_config, train

PROMPTS = [[{"role": "user", "content": "What colour is the sky?"}],
           [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
           [{"role": "user", "content": "Write a long story about a dragon who learns to read."}],
           "A plain-text prompt, with a BOS when the tokenizer adds one",
           [{"role": "user", "content": "2+2?"}]]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matrices: one thread, no contention


def unpaired_rows() -> list[dict]:
    """8 unpaired rows: desirable answers to questions, undesirable answers to demands (different prompts)."""
    rows = []
    for i in range(4):
        rows.append({"prompt": [{"role": "user", "content": f"What is {i} plus {i}?"}],
                     "completion": [{"role": "assistant", "content": f"{2 * i}."}], "label": True, "id": i})
        rows.append({"prompt": [{"role": "user", "content": f"Insult number {i}, loudly!"}],
                     "completion": [{"role": "assistant", "content": "No" + "!" * i}], "label": False,
                     "id": 4 + i})
    return rows


def test_batched_embeddings_equal_each_prompt_alone(smol_tokenizer):
    model = tiny_llama(vocab_size=len(smol_tokenizer), pad_token_id=smol_tokenizer.pad_token_id,
                       eos_token_id=smol_tokenizer.eos_token_id)
    lengths = [len(prompt_ids(smol_tokenizer, prompt)) for prompt in PROMPTS]
    assert len(set(lengths)) > 1  # the batch really is padded
    batched = prompt_embeddings(model, smol_tokenizer, PROMPTS, batch_size=len(PROMPTS))
    alone = torch.cat([prompt_embeddings(model, smol_tokenizer, [prompt], batch_size=1) for prompt in PROMPTS])
    assert batched.shape == (len(PROMPTS), model.config.hidden_size) and batched.dtype == torch.float32
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    assert torch.allclose(prompt_embeddings(model, smol_tokenizer, PROMPTS, batch_size=2), alone, atol=1e-5)
    assert not model.training

    # the mean of the decoder's last hidden state over exactly the prompt's tokens
    ids = torch.tensor([prompt_ids(smol_tokenizer, PROMPTS[2])])
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(alone[2], hidden[0].mean(0), atol=1e-5, rtol=1e-5)
    text = smol_tokenizer.apply_chat_template(PROMPTS[2], tokenize=False, add_generation_prompt=True)
    assert ids[0].tolist() == smol_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_udm_verb_writes_scores_that_bco_udm_trains_on(tmp_path, tiny_chat_model_dir, monkeypatch, capsys):
    monkeypatch.setenv("ALIGNKIT_CACHE", str(tmp_path / "cache"))
    data, out = tmp_path / "unpaired.jsonl", tmp_path / "udm.jsonl"
    rows = unpaired_rows()
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    before = data.read_bytes()
    command = ["data", "udm", "--model", str(tiny_chat_model_dir), "--data", str(data), "--out", str(out),
               "--min-ratio", "0.5", "--max-ratio", "4", "--batch-size", "3", "--sample-size", "3"]
    assert main(command) == 0
    assert "fit on 3 desirable and 3 undesirable prompts" in capsys.readouterr().out
    assert data.read_bytes() == before  # the input is untouched

    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(written) == len(rows)
    for row, result in zip(rows, written):
        assert {key: value for key, value in result.items() if key != "scores"} == row  # unchanged otherwise
        assert len(result["scores"]) == 1 and 0.5 <= result["scores"][0] <= 4
    # different prompt distributions on the two sides: the classifier separates them, w varies
    weights = [row["scores"][0] for row in written]
    assert max(weights) > min(weights)

    examples = load_examples(out, "unpaired")
    assert [len(example.scores) for example in examples] == [1] * len(rows)
    assert [example.scores[0] for example in examples] == pytest.approx(weights)

    # an existing output is refused without --overwrite, and the input is never the output
    assert main(command) == 2
    assert "already exists" in capsys.readouterr().err
    assert main([*command, "--overwrite"]) == 0
    assert main([*command[:-2], "--out", str(data), "--overwrite"]) == 2
    assert data.read_bytes() == before

    result = train(load_config(None, [
        f"model.name_or_path={tiny_chat_model_dir}", f"data.train={out}", "objective.name=bco_udm",
        "batch_size=4", "max_steps=2", "optim.lr=1e-3", "optim.schedule=constant", "progress=false",
        "report_to=none", f"output_dir={tmp_path / 'run'}", "reference.cache=false"]))
    assert result.steps == 2
    losses = [json.loads(line)["loss"] for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))


def test_udm_verb_needs_both_labels_and_valid_arguments(tmp_path, tiny_chat_model_dir, capsys):
    data = tmp_path / "rows.jsonl"
    rows = [row for row in unpaired_rows() if row["label"]]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    base = ["data", "udm", "--model", str(tiny_chat_model_dir), "--data", str(data)]
    assert main([*base, "--out", str(tmp_path / "a.jsonl")]) == 2
    assert "UDM needs rows with label true and rows with false, got 4 true and 0 false" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "b.jsonl"), "--min-ratio", "5", "--max-ratio", "1"]) == 2
    assert "--min-ratio" in capsys.readouterr().err
    data.write_text(json.dumps({"prompt": "x", "completion": "y", "label": 1}) + "\n")
    assert main([*base, "--out", str(tmp_path / "c.jsonl")]) == 2
    assert "field 'label': expected true or false, got 1" in capsys.readouterr().err
    assert [path.name for path in tmp_path.glob("*.jsonl")] == ["rows.jsonl"]  # nothing written
