"""Rows of every data format: loading, validation errors naming file/line/field, layouts of the groups."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama

from alignkit.data import (DataError, FORMAT_FIELDS, collate_rows, collate_shared_prefix, load_examples,
                           tokenize_examples)
from alignkit.models.logprobs import CompletionScorer, grouped_logps


def write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def msgs(role, text):
    return [{"role": role, "content": text}]


def test_each_format_gives_its_slots(tmp_path):
    prompt = msgs("user", "Name a colour.")
    answer = msgs("assistant", "Blue.")
    other = msgs("assistant", "Seven.")
    cases = {
        "joint": ({"prompt_chosen": prompt, "chosen": answer, "prompt_rejected": msgs("user", "Count."),
                   "rejected": other}, (("chosen", 1), ("rejected", 1)), 2),
        "unpaired": ({"prompt": prompt, "completion": answer, "label": True}, (("completion", 1),), 1),
        "negative": ({"prompt": prompt, "rejected": other}, (("completion", 1),), 1),
        "list": ({"prompt": prompt, "chosen": answer, "rejected": [other, other]},
                 (("chosen", 1), ("rejected", 2)), 1),
        "ranked": ({"prompt": prompt, "completions": [answer, other, other]}, (("ranked", 3),), 1),
        "samples": ({"prompt": prompt, "samples": [answer, answer], "rejected": other},
                    (("samples", 2), ("rejected", 1)), 1),
        "sft": ({"prompt": prompt, "completion": answer, "scores": [-1.5, -2.0]}, (("completion", 1),), 1),
    }
    for data_format, (row, slots, groups) in cases.items():
        example, = load_examples(write(tmp_path / f"{data_format}.jsonl", [row]), data_format)
        assert example.slots == slots, data_format
        assert len(example.groups) == groups, data_format
    negative, = load_examples(tmp_path / "negative.jsonl", "negative")
    assert negative.label == 0.0
    sft, = load_examples(tmp_path / "sft.jsonl", "sft")
    assert sft.scores == (-1.5, -2.0)


def test_unpaired_kl_slot_is_the_next_rows_completion(tmp_path):
    rows = [{"prompt": f"Q{i}", "completion": f"A{i}", "label": i % 2 == 0} for i in range(3)]
    examples = load_examples(write(tmp_path / "u.jsonl", rows), "unpaired", with_kl=True)
    assert [e.groups[0][1] for e in examples] == [("A0", "A1"), ("A1", "A2"), ("A2", "A0")]
    assert [e.label for e in examples] == [1.0, 0.0, 1.0]
    assert examples[0].slots == (("completion", 1), ("kl", 1))


def test_errors_name_file_line_and_field(tmp_path):
    path = write(tmp_path / "bad.jsonl", [
        {"prompt": "Q", "completion": "A", "label": "yes"},
        {"prompt": "Q", "label": True},
        {"prompt": "Q", "completion": "A", "label": False},
    ])
    with pytest.raises(DataError) as caught:
        load_examples(path, "unpaired")
    message = str(caught.value)
    assert "bad.jsonl" in message and "line 1" in message and "'label'" in message
    assert "line 2" in message and "'completion'" in message and "line 3" not in message


def test_lists_must_be_rectangular(tmp_path):
    path = write(tmp_path / "l.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": ["B", "C"]},
                                        {"prompt": "Q", "chosen": "A", "rejected": ["B"]}])
    with pytest.raises(DataError, match="line 2.*same number"):
        load_examples(path, "list")


def test_wrong_format_fails_before_training_naming_the_fields(tmp_path, tiny_chat_model_dir):
    from alignkit.objectives import Objective, register
    from alignkit.objectives import registry
    from alignkit.train import load_config, train

    def fake(policy_completion_logps, ref_completion_logps, labels):
        return (policy_completion_logps - ref_completion_logps) * labels, {}

    objective = Objective(name="_unpaired_probe", fn=fake, description="test", source="test", data_format="unpaired")
    register(objective)
    try:
        preference = write(tmp_path / "p.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B"}])
        config = load_config(None, [f"model.name_or_path={tiny_chat_model_dir}", f"data.train={preference}",
                                    "objective.name=_unpaired_probe", f"output_dir={tmp_path / 'out'}",
                                    "progress=false", "report_to=none"])
        with pytest.raises(DataError, match="'unpaired' data \\(prompt, completion, label true/false"):
            train(config)
        assert not (tmp_path / "out" / "checkpoints").exists()
    finally:
        registry._REGISTRY.pop("_unpaired_probe")


@pytest.mark.parametrize("layout", ["plain", "shared", "packed"])
def test_joint_examples_score_each_answer_under_its_own_prompt(smol_tokenizer, layout):
    """JPO rows: two prompts in one example; each completion must be scored given its own prompt only."""
    model = tiny_llama(vocab_size=len(smol_tokenizer), initializer_range=0.3)
    rows = [{"prompt_chosen": msgs("user", f"Say {w}."), "chosen": msgs("assistant", w),
             "prompt_rejected": msgs("user", f"Shout {w} twice please."), "rejected": msgs("assistant", w + "!")}
            for w in ("yes", "no", "maybe")]
    examples, _ = tokenize_examples(load_examples(rows, "joint"), smol_tokenizer)
    collate = {"plain": lambda e: collate_rows(e, 0), "shared": lambda e: collate_shared_prefix(e, 0),
               "packed": lambda e: collate_shared_prefix(e, 0, pack=True, row_tokens=10_000)}[layout]
    chosen, rejected = grouped_logps(CompletionScorer(model), collate(examples), 2)
    for b, example in enumerate(examples):
        for k, (prompt, (completion,)) in enumerate(example.groups):
            ids = torch.tensor([prompt + completion])
            with torch.no_grad():
                logps = model(ids).logits[0, :-1].log_softmax(-1)
            expected = logps[len(prompt) - 1:, :].gather(1, ids[0, len(prompt):, None]).sum()
            got = (chosen, rejected)[k].sum[b]
            assert got.item() == pytest.approx(expected.item(), abs=1e-4)


def row_of(data_format, prompt, good, bad):
    """A valid row of `data_format` from one prompt and two different completions."""
    return {
        "preference": {"prompt": prompt, "chosen": good, "rejected": bad},
        "joint": {"prompt_chosen": prompt, "chosen": good, "prompt_rejected": prompt, "rejected": bad},
        "unpaired": {"prompt": prompt, "completion": good, "label": True},
        "negative": {"prompt": prompt, "rejected": bad},
        "list": {"prompt": prompt, "chosen": good, "rejected": [bad, bad]},
        "ranked": {"prompt": prompt, "completions": [good, bad]},
        "samples": {"prompt": prompt, "samples": [good, bad], "rejected": bad},
        "sft": {"prompt": prompt, "completion": good},
        "context": {"prompt": prompt, "context": "Passage one.", "distractor_context": "Passage two.", "chosen": good,
                    "rejected": bad},
    }[data_format]


@pytest.mark.parametrize("data_format", list(FORMAT_FIELDS))
def test_standard_and_conversational_rows_do_not_mix_in_one_source(tmp_path, data_format):
    text = row_of(data_format, "Q", "A", "B")
    chat = row_of(data_format, msgs("user", "Q"), msgs("assistant", "A"), msgs("assistant", "B"))
    assert len(load_examples([text, text], data_format)) == 2
    assert len(load_examples([chat, chat], data_format)) == 2
    with pytest.raises(DataError, match=r"^m\.jsonl, line 3: a conversational row .* m\.jsonl, line 1"):
        load_examples(write(tmp_path / "m.jsonl", [text, text, chat, text]), data_format)
    with pytest.raises(DataError, match=r"^dataset, row 2: a standard row .* dataset, row 1"):
        load_examples([chat, text], data_format)


@pytest.mark.parametrize("role", ["wizard", "User", "", "function"])
def test_unknown_message_roles_name_the_field_and_message(role):
    prompt = msgs("system", "Be brief.") + msgs(role, "Q")
    with pytest.raises(DataError, match=rf"^dataset, row 1, field 'prompt': message 2 has an unknown role '{role}'"):
        load_examples([{"prompt": prompt, "completion": msgs("assistant", "A")}], "sft")
    completion = msgs("assistant", "A") + msgs(role, "B")
    with pytest.raises(DataError, match=r"^dataset, row 1, field 'completion': message 2 has an unknown role"):
        load_examples([{"prompt": msgs("user", "Q"), "completion": completion}], "sft")


def test_the_four_roles_are_accepted():
    prompt = (msgs("system", "S") + msgs("user", "Q") + msgs("assistant", "call") + msgs("tool", "42")
              + msgs("user", "So?"))
    example, = load_examples([{"prompt": prompt, "completion": msgs("assistant", "42.")}], "sft")
    assert [message["role"] for message in example.prompt] == ["system", "user", "assistant", "tool", "user"]


def test_non_finite_and_overflowing_scores_name_the_field(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"prompt": "Q", "completion": "A", "scores": NaN}\n'
                    '{"prompt": "Q", "completion": "A", "scores": [1, Infinity]}\n'
                    '{"prompt": "Q", "completion": "A", "scores": -Infinity}\n'
                    '{"prompt": "Q", "completion": "A", "scores": 1' + "0" * 400 + '}\n')
    with pytest.raises(DataError) as caught:
        load_examples(path, "sft")
    assert caught.value.problems == ("s.jsonl, line 1, field 'scores[1]': expected a finite number, got nan",
                                     "s.jsonl, line 2, field 'scores[2]': expected a finite number, got inf",
                                     "s.jsonl, line 3, field 'scores[1]': expected a finite number, got -inf",
                                     "s.jsonl, line 4, field 'scores[1]': expected a finite number, got 1000"
                                     "00000000000000000000000000000000000000000000000000000...")
    csv_path = tmp_path / "s.csv"
    csv_path.write_text("prompt,completion,scores\nQ,A,1.5\nQ,A,nan\nQ,A,-inf\n")
    with pytest.raises(DataError) as caught:
        load_examples(csv_path, "sft")
    assert caught.value.problems == ("s.csv, line 3, field 'scores[1]': expected a finite number, got 'nan'",
                                     "s.csv, line 4, field 'scores[1]': expected a finite number, got '-inf'")
    with pytest.raises(DataError, match=r"^dataset, row 1, field 'scores\[1\]': expected a finite number"):
        load_examples([{"prompt": "Q", "completion": "A", "scores": 10 ** 5000}], "sft")


def test_csv_true_false_labels_are_booleans(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("prompt,completion,label\nQ,A,true\nQ,B,FALSE\nQ,C,True\nQ,D,false\n")
    assert [example.label for example in load_examples(path, "unpaired")] == [1.0, 0.0, 1.0, 0.0]
    path.write_text("prompt,completion,label\nQ,A,1\nQ,B,yes\nQ,C, true\n")
    with pytest.raises(DataError) as caught:
        load_examples(path, "unpaired")
    assert [problem.split(":")[0] for problem in caught.value.problems] == [
        "u.csv, line 2, field 'label'", "u.csv, line 3, field 'label'", "u.csv, line 4, field 'label'"]
    for label in (1, 0, 1.0):
        with pytest.raises(DataError, match="field 'label': expected true or false"):
            load_examples([{"prompt": "Q", "completion": "A", "label": label}], "unpaired")


def test_kl_slot_with_one_row_names_the_file(tmp_path):
    path = write(tmp_path / "one.jsonl", [{"prompt": "Q", "completion": "A", "label": True}])
    with pytest.raises(DataError, match=r"^one\.jsonl, line 1: the kl slot needs at least two rows"):
        load_examples(path, "unpaired", with_kl=True)


def test_a_preference_rows_label_smoothing_reaches_the_batch(tmp_path, smol_tokenizer):
    rows = [{"prompt": "Hi", "chosen": " a", "rejected": " b", "label_smoothing": 0.1},
            {"prompt": "Yo", "chosen": " c", "rejected": " d", "label_smoothing": "0.25"}]
    examples, _ = tokenize_examples(load_examples(write(tmp_path / "ok.jsonl", rows), "preference"), smol_tokenizer)
    for batch in (collate_rows(examples, 0), collate_shared_prefix(examples, 0)):
        assert batch["row_label_smoothing"].tolist() == pytest.approx([0.1, 0.25])
    plain = [{k: v for k, v in row.items() if k != "label_smoothing"} for row in rows]
    examples, _ = tokenize_examples(load_examples(write(tmp_path / "plain.jsonl", plain), "preference"), smol_tokenizer)
    assert "row_label_smoothing" not in collate_rows(examples, 0)
    with pytest.raises(DataError, match=r"mixed.jsonl, line 2, field 'label_smoothing': missing"):
        load_examples(write(tmp_path / "mixed.jsonl", [rows[0], plain[1]]), "preference")
    with pytest.raises(DataError, match=r"bad.jsonl, line 1, field 'label_smoothing'.*\[0, 0.5\)"):
        load_examples(write(tmp_path / "bad.jsonl", [{**rows[0], "label_smoothing": 0.5}]), "preference")
