"""The context rows alignkit ships (scripts/make_context_pairs.py) and `alignkit eval context`: every measure
equals log-probs computed independently, one sequence at a time from full logits."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from alignkit.cli.main import main
from alignkit.data import load_examples, tokenize_examples
from alignkit.eval.context import context_grounding
from alignkit.models import load

ROOT = Path(__file__).parent.parent


def context_script():
    spec = importlib.util.spec_from_file_location("make_context_pairs", ROOT / "scripts" / "make_context_pairs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_context_rows_are_the_scripts_and_only_the_passage_answers(tmp_path):
    assert context_script().main(["--out", str(tmp_path)]) == 0
    shipped = ROOT / "src" / "alignkit" / "data" / "context"
    rows = {}
    for split in ("train", "heldout"):
        assert (tmp_path / f"{split}.jsonl").read_bytes() == (shipped / f"{split}.jsonl").read_bytes()
        rows[split] = [json.loads(line) for line in (shipped / f"{split}.jsonl").read_text().splitlines()]
        assert len(load_examples(f"builtin:context/{split}.jsonl", "context")) == len(rows[split])
    assert (len(rows["train"]), len(rows["heldout"])) == (200, 64)
    for row in rows["train"] + rows["heldout"]:
        assert row["answer"] in row["context"] and row["answer"] not in row["distractor_context"]
        assert row["chosen"][0]["content"] == row["answer"] + "."
        assert row["rejected"][0]["content"] != row["chosen"][0]["content"]
    assert not {r["answer"] for r in rows["train"]} & {r["answer"] for r in rows["heldout"]} - {
        "red", "green", "blue", "yellow", "purple", "orange", "white", "black"} - {str(y) for y in range(1700, 1990)}


@torch.no_grad()
def naive_sum(model, prompt_ids, completion_ids) -> float:
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    logps = model(input_ids=ids).logits[0, :-1].double().log_softmax(-1)
    return logps[len(prompt_ids) - 1:].gather(1, ids[0, len(prompt_ids):, None]).sum().item()


def test_context_grounding_equals_independent_log_probs(tiny_chat_model_dir):
    model, tokenizer, _ = load(tiny_chat_model_dir)
    model.eval()
    examples = load_examples("builtin:context/heldout.jsonl", "context")[:6]
    tokenized, _ = tokenize_examples(examples, tokenizer)
    chosen, rejected, distracted = [], [], []
    for example in tokenized:
        (right, (c, r)), (distractor, (again,)) = example.groups
        chosen.append(naive_sum(model, right, c))
        rejected.append(naive_sum(model, right, r))
        distracted.append(naive_sum(model, distractor, again))
    result = context_grounding(model, tokenizer, examples, batch_size=4)
    assert result.rows == 6 and result.exact_match is None
    assert result.answer_preferred == pytest.approx(sum(c > r for c, r in zip(chosen, rejected)) / 6)
    assert result.context_preferred == pytest.approx(sum(c > d for c, d in zip(chosen, distracted)) / 6)
    assert result.context_margin == pytest.approx(sum(c - d for c, d in zip(chosen, distracted)) / 6, abs=1e-4)
    assert abs(result.context_margin) > 1e-3  # the two passages do give different log-probs


def test_eval_context_verb_writes_the_table(tiny_chat_model_dir, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    lines = (ROOT / "src" / "alignkit" / "data" / "context" / "heldout.jsonl").read_text().splitlines()[:4]
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "eval"
    assert main(["eval", "context", "--model", str(tiny_chat_model_dir), "--data", str(data), "--out", str(out),
                 "--max-new-tokens", "4"]) == 0
    result = json.loads((out / "eval.json").read_text())["models"][str(tiny_chat_model_dir)]
    assert result["rows"] == 4 and 0.0 <= result["exact_match"] <= 1.0
    assert "| answer preferred |" in capsys.readouterr().out


def test_eval_context_names_the_bad_row_before_loading_a_model(tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"prompt": "q", "context": "a", "chosen": "x", "rejected": "y"}) + "\n")
    assert main(["eval", "context", "--model", "no-such-model", "--data", str(data), "--out", str(tmp_path / "o")]) == 2
    assert "rows.jsonl, line 1, field 'distractor_context': missing" in capsys.readouterr().err
