"""Dataset transforms (`alignkit.data.transforms`), atomic writing, and `alignkit data ...` without a model."""

from __future__ import annotations

import json

import pytest

from alignkit.cli.main import main
from alignkit.data import DataError, Record, load_records
from alignkit.data.transforms import (
    bucket_edges,
    direction_condition,
    direction_weights,
    goal_condition,
    quality_buckets,
    quality_condition,
    reward_augment,
)
from alignkit.data.writing import OutputPathError, write_jsonl

GOAL = ("You are an assistant that generates responses for the instruction while implicitly achieving the following "
        "target scores (on a scale of 1-10, where 1 is lowest and 10 is highest):\nOverall score: {}.")
DPA = ("You are a helpful, respectful, and honest assistant who always responds to the user in a harmless way. "
       "Your response should maximize weighted rating = helpfulness*{} + verbosity*{}")


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def test_reward_augment_standard_rows_exact_text_and_swap():
    rows = [{"prompt": "Name a colour.", "chosen": "Blue.", "rejected": "Car.", "score_chosen": 8.0,
             "score_rejected": 3.5, "id": 7},
            {"prompt": "2+2?", "chosen": "4", "rejected": "5", "score_chosen": 10, "score_rejected": 1, "id": 8}]
    before = json.dumps(rows)
    out = reward_augment(rows)
    assert json.dumps(rows) == before  # inputs untouched
    assert [row["id"] for row in out] == [7, 8, 7, 8]  # all positive-goal copies, then all negative-goal copies
    assert out[0] == {"prompt": GOAL.format(8) + "\n\nName a colour.", "chosen": "Blue.", "rejected": "Car.",
                      "score_chosen": 8.0, "score_rejected": 3.5, "id": 7, "goal": 8}
    assert out[2] == {"prompt": GOAL.format(3.5) + "\n\nName a colour.", "chosen": "Car.", "rejected": "Blue.",
                      "score_chosen": 3.5, "score_rejected": 8.0, "id": 7, "goal": 3.5}
    assert out[3]["prompt"].endswith("Overall score: 1.\n\n2+2?") and out[3]["chosen"] == "5"


def test_reward_augment_conversational_system_nosys_and_implicit():
    row = {"prompt": user("Hi"), "chosen": assistant("Hello!"), "rejected": assistant("Go away."),
           "score_chosen": 9, "score_rejected": 2}
    positive, negative = reward_augment([row])
    assert positive["prompt"] == [{"role": "system", "content": GOAL.format(9)}] + user("Hi")
    assert negative["prompt"] == [{"role": "system", "content": GOAL.format(2)}] + user("Hi")
    assert (negative["chosen"], negative["rejected"]) == (assistant("Go away."), assistant("Hello!"))
    positive, negative = reward_augment([row], nosys=True)  # models without a system role
    assert positive["prompt"] == user(GOAL.format(9) + "\n\nHi")
    with_system = {**row, "prompt": [{"role": "system", "content": "Be brief."}] + user("Hi")}
    assert reward_augment([with_system])[0]["prompt"][0]["content"] == GOAL.format(9) + "\n\nBe brief."
    implicit = {"chosen": user("Hi") + assistant("Hello!"), "rejected": user("Hi") + assistant("Go away."),
                "score_chosen": 9, "score_rejected": 2}  # UltraFeedback-style full conversations, no prompt
    positive, negative = reward_augment([implicit])
    assert positive["chosen"] == [{"role": "system", "content": GOAL.format(9)}] + user("Hi") + assistant("Hello!")
    assert negative["chosen"] == [{"role": "system", "content": GOAL.format(2)}] + user("Hi") + assistant("Go away.")
    assert negative["rejected"] == [{"role": "system", "content": GOAL.format(2)}] + user("Hi") + assistant("Hello!")


def test_reward_augment_filter_inference_goal_and_errors():
    rows = [{"prompt": "a", "chosen": "x", "rejected": "y", "score_chosen": 5, "score_rejected": 6,
             "fine_w": 4.0, "fine_l": 4.5},
            {"prompt": "b", "chosen": "x", "rejected": "y", "score_chosen": 5, "score_rejected": 6,
             "fine_w": 4.0, "fine_l": 4.0}]
    assert [row["prompt"][-1] for row in reward_augment(rows, keep_if_ordered=("fine_w", "fine_l"))] == ["b", "b"]
    assert goal_condition([{"prompt": "Q"}])[0]["prompt"] == GOAL.format(10) + "\n\nQ"
    assert goal_condition([{"prompt": "Q"}], 7)[0]["prompt"] == GOAL.format(7) + "\n\nQ"
    bad = [Record({"prompt": "a", "chosen": "x", "rejected": "y", "score_chosen": 5}, "prefs.jsonl, line 3"),
           Record({"prompt": "a", "chosen": "x", "rejected": "y", "score_chosen": "high", "score_rejected": 1},
                  "prefs.jsonl, line 4"),
           Record({"prompt": "a", "chosen": "x", "rejected": "y", "score_chosen": 12, "score_rejected": 1},
                  "prefs.jsonl, line 5")]
    with pytest.raises(DataError) as error:
        reward_augment(bad)
    assert error.value.problems == (
        "prefs.jsonl, line 3, field 'score_rejected': missing",
        "prefs.jsonl, line 4, field 'score_chosen': expected a number, got 'high'",
        "prefs.jsonl, line 5, field 'score_chosen': score 12 is above the scale maximum 10 "
        "(set scale_max / --scale-max)")


def test_uniform_and_quantile_edges_match_a_hand_computation():
    scores = [1.0, 2.0, 3.0, 4.0, 9.0]
    rows = [{"prompt": f"p{i}", "score": s} for i, s in enumerate(scores)]
    out, edges = quality_buckets(rows, k=4)
    assert edges == [1.0, 3.0, 5.0, 7.0, 9.0]  # linspace(min, max, k + 1), as KBinsDiscretizer(strategy="uniform")
    assert [row["quality_level"] for row in out] == [0, 0, 1, 1, 3]  # 3.0 is on an inner edge: the upper bin
    assert [row["prompt"] for row in out] == ["<q_0>p0", "<q_0>p1", "<q_1>p2", "<q_1>p3", "<q_3>p4"]
    assert bucket_edges([0, 1, 2, 3, 4], 4, "quantile") == [0.0, 1.0, 2.0, 3.0, 4.0]
    out, edges = quality_buckets([{"prompt": "p", "score": s} for s in [0, 1, 2, 3, 4]], k=4, strategy="quantile")
    assert [row["quality_level"] for row in out] == [0, 1, 2, 3, 3]
    assert bucket_edges([1, 2, 3, 4, 5], 2, "quantile") == [1.0, 3.0, 5.0]
    reused, same = quality_buckets([{"prompt": "p", "score": s} for s in (-5, 6, 100)], edges=[1, 3, 5, 7, 9])
    assert same == [1.0, 3.0, 5.0, 7.0, 9.0] and [row["quality_level"] for row in reused] == [0, 2, 3]


def test_bucket_styles_inference_and_errors():
    rows = [{"prompt": user("Hi"), "score": 0.1}, {"prompt": user("Yo"), "score": 0.9}]
    out, _ = quality_buckets(rows, k=2)
    assert out[1]["prompt"] == user("<q_1>Yo")
    out, _ = quality_buckets(rows, k=2, style="system")
    assert out[0]["prompt"] == [{"role": "system", "content": "Write a response of quality level 0 on a scale "
                                                              "from 0 (lowest) to 1 (highest)."}] + user("Hi")
    assert quality_condition([{"prompt": "Q"}], k=8)[0]["prompt"] == "<q_7>Q"
    assert quality_condition([{"prompt": user("Q")}], k=8)[0]["prompt"] == user("<q_7>Q")
    with pytest.raises(DataError, match=r"data.jsonl, line 2, field 'score': missing"):
        quality_buckets([Record({"prompt": "a", "score": 1}, "data.jsonl, line 1"),
                         Record({"prompt": "b"}, "data.jsonl, line 2")])
    with pytest.raises(DataError, match="all 2 scores equal 3"):
        quality_buckets([{"prompt": "a", "score": 3}, {"prompt": "b", "score": 3}])
    with pytest.raises(DataError, match=r"row 2, field 'prompt': missing"):
        quality_buckets([{"prompt": "a", "score": 1}, {"score": 2}])


def test_direction_weights_and_system_prompt():
    assert direction_weights(0) == [100, 0]
    assert direction_weights(45) == [71, 71]
    assert direction_weights(-15) == [97, -26]  # the README's example angle
    assert direction_weights(weights=[0.8, -0.6]) == [80, -60]
    assert direction_weights(weights=[3, 4]) == [60, 80]
    out = direction_condition([{"prompt": user("Summarise Hamlet."), "id": 1}], 45)
    assert out == [{"prompt": [{"role": "system", "content": DPA.format(71, 71)}] + user("Summarise Hamlet."),
                    "id": 1, "direction": [71, 71]}]
    assert direction_condition([{"prompt": "Q"}], 0)[0]["prompt"] == DPA.format(100, 0) + "\n\nQ"
    nosys = direction_condition([{"prompt": user("Q")}], 0, nosys=True)
    assert nosys[0]["prompt"] == user(DPA.format(100, 0) + "\n\nQ")
    per_row = direction_condition([{"prompt": "Q", "theta": 0}, {"prompt": "Q", "theta": 90}], angle_field="theta")
    assert [row["direction"] for row in per_row] == [[100, 0], [0, 100]]
    with pytest.raises(DataError, match=r"x.jsonl, line 9, field 'theta': missing"):
        direction_condition([Record({"prompt": "Q"}, "x.jsonl, line 9")], angle_field="theta")
    with pytest.raises(ValueError, match="exactly one"):
        direction_condition([{"prompt": "Q"}], 0, weights=[1, 0])


def test_write_jsonl_is_atomic_and_never_overwrites_its_input(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"prompt": "a"}\n')
    with pytest.raises(OutputPathError, match="is an input"):
        write_jsonl([{"prompt": "b"}], source, inputs=[source], overwrite=True)
    assert source.read_text() == '{"prompt": "a"}\n'
    out = write_jsonl([{"prompt": "ü"}], tmp_path / "sub" / "out.jsonl", inputs=[source])
    assert [r.data for r in load_records(out)] == [{"prompt": "ü"}]
    with pytest.raises(OutputPathError, match="already exists"):
        write_jsonl([{"prompt": "c"}], out, inputs=[source])
    write_jsonl([{"prompt": "c"}], out, inputs=[source], overwrite=True)
    assert [r.data for r in load_records(out)] == [{"prompt": "c"}]
    with pytest.raises(OutputPathError, match="must be a .jsonl file"):
        write_jsonl([], tmp_path / "out.json")
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out.jsonl"]  # no temporary files left


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_cli_data_transforms_write_new_files(tmp_path, capsys):
    prefs = _jsonl(tmp_path / "prefs.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B", "score_chosen": 9,
                                               "score_rejected": 4}])
    before = prefs.read_bytes()
    out = tmp_path / "goals.jsonl"
    assert main(["data", "reward-augment", "--data", str(prefs), "--out", str(out)]) == 0
    assert [row["goal"] for row in _read(out)] == [9, 4] and prefs.read_bytes() == before
    assert main(["data", "reward-augment", "--data", str(prefs), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["data", "reward-augment", "--data", str(prefs), "--out", str(prefs), "--overwrite"]) == 2
    assert "is an input" in capsys.readouterr().err and prefs.read_bytes() == before
    inference = tmp_path / "i.jsonl"
    assert main(["data", "reward-augment", "--inference", "--data", str(prefs), "--out", str(inference)]) == 0
    assert _read(inference)[0]["prompt"] == GOAL.format(10) + "\n\nQ"

    sft = _jsonl(tmp_path / "sft.jsonl", [{"prompt": f"p{i}", "completion": "c", "score": s}
                                          for i, s in enumerate([1, 2, 3, 4, 9])])
    assert main(["data", "buckets", "--data", str(sft), "--out", str(tmp_path / "noc.jsonl"), "--k", "4"]) == 0
    sidecar = json.loads((tmp_path / "noc.buckets.json").read_text())
    assert sidecar["edges"] == [1.0, 3.0, 5.0, 7.0, 9.0] and sidecar["inference_text"] == "<q_3>"
    assert [row["quality_level"] for row in _read(tmp_path / "noc.jsonl")] == [0, 0, 1, 1, 3]
    assert main(["data", "buckets", "--data", str(sft), "--out", str(tmp_path / "again.jsonl"),
                 "--edges", str(tmp_path / "noc.buckets.json")]) == 0
    assert main(["data", "direction", "--angle", "-15", "--data", str(sft), "--out", str(tmp_path / "d.jsonl")]) == 0
    assert _read(tmp_path / "d.jsonl")[0]["prompt"] == DPA.format(97, -26) + "\n\np0"

    bad = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "Q", "chosen": "A", "rejected": "B", "score_chosen": 9,
                                           "score_rejected": 4}, {"prompt": "Q", "chosen": "A", "rejected": "B"}])
    assert main(["data", "reward-augment", "--data", str(bad), "--out", str(tmp_path / "b.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl, line 2, field 'score_chosen': missing" in err and not (tmp_path / "b.jsonl").exists()
    assert main(["data", "buckets", "--k", "1", "--data", str(sft), "--out", str(tmp_path / "k1.jsonl")]) == 2
    assert "k must be at least 2" in capsys.readouterr().err
