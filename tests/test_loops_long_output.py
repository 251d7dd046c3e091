"""Long-output curation (Minimum Tuning to Unlock Long Output from LLMs..., arXiv 2410.10210) as a loop labeller:
the length score S_l on hand-computed edge cases, the stage-1 length patterns on English and Chinese
instructions, the output-length count on hand-counted texts, the labeller on a stub context whose samples have
known word counts, and the shipped prompt set recounted independently."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from alignkit.data import Record
from alignkit.loops.long_output import (DEFAULTS, check_params, length_score, long_output_rows, produced_length,
                                        required_length, stated_lengths)
from alignkit.loops.rounds import Sampling

ROOT = Path(__file__).resolve().parent.parent


def words(n: int, word: str = "cat") -> str:
    """A text of exactly n English words (n times `word`), ending in a full stop."""
    return " ".join([word] * n) + ("." if n else "")


# ---- S_l: 100·max(0, 1 − (y/x − 1)/3) if y > x else 100·max(0, 1 − (x/y − 1)/2), by hand.

@pytest.mark.parametrize("x, y, expected", [
    (20, 20, 100.0),       # y == x
    (20, 40, 200 / 3),     # y = 2x: 100·(1 − 1/3)
    (20, 80, 0.0),         # y = 4x: 100·(1 − 3/3)
    (20, 200, 0.0),        # y = 10x: clipped at 0
    (20, 10, 50.0),        # y = x/2: 100·(1 − 1/2)
    (30, 10, 0.0),         # y = x/3: 100·(1 − 2/2)
    (60, 10, 0.0),         # y = x/6: clipped at 0
    (20, 33, 100 * (1 - 13 / 60)),  # just past the 80 boundary above: 78.33
    (7, 5, 80.0),          # y = x/1.4: 100·(1 − 0.4/2)
])
def test_length_score_by_hand(x, y, expected):
    assert length_score(x, y) == pytest.approx(expected, abs=1e-9)


def test_length_score_boundary_80_is_exact():
    # y = 1.6x: 100·(1 − 0.6/3) = 80, exactly, so a threshold of 80 keeps it (as the official `>= threshold`).
    for x in (5, 10, 20, 30, 40, 60, 80, 100):
        assert length_score(x, x * 8 // 5) == 80.0


def test_length_score_empty_output_and_bad_lengths():
    # y = 0: the official score divides by zero and DataETL skips the row; here 0.0, never kept.
    assert length_score(20, 0) == 0.0
    with pytest.raises(ValueError, match="required"):
        length_score(0, 10)
    with pytest.raises(ValueError, match="produced"):
        length_score(10, -1)


# ---- stage 1: the lengths an instruction states.

@pytest.mark.parametrize("instruction, lengths", [
    ("Describe a cat. Answer in about 30 words.", [30]),
    ("Write a blog post of 2000 words about gardening", [2000]),
    ("Write 300 words, then stop at 300 words", [300]),            # the same length twice is one
    ("Summarise it in 100 words or 200 words", [100, 200]),
    ("Write a 500-word essay on rain", []),                         # "(\d+) words" needs " words"
    ("Write 500 Words on rain", []),                                # case-sensitive
    ("Use 1 word", []),                                             # plural only
    ("Write a short poem about the sea", []),
    ("请写一篇800字的文章", [800]),
    ("写一篇三千字的小说", [3000]),
    ("写一篇五百字的短文", [500]),
    ("两万字的报告", [20000]),
    ("一千五百字的故事", [500]),                                     # only the digit right before 百/千/万
    ("写几千字的文章", []),                                          # 几 is no Chinese digit
    ("写5千字的文章", []),                                           # nor is an Arabic digit
    ("写500字，不少于五百字", [500]),                                 # one length by value (see module doc)
    ("Write 1000 words (约两千字)", [1000, 2000]),
])
def test_stated_lengths(instruction, lengths):
    assert stated_lengths(instruction) == lengths
    assert required_length(instruction) == (lengths[0] if len(lengths) == 1 else None)


def test_required_length_zero_is_stated():
    assert required_length("Answer in 0 words") == 0  # kept by stage 1; the labeller skips it as stage 2 does


# ---- the output length: CJK characters plus English words.

@pytest.mark.parametrize("text, count", [
    ("Hello, world! It's 2024.", 4),          # Hello, world, It, s; numbers count nothing
    ("A well-known fact.", 4),                # A, well, known, fact
    ("你好世界", 4),
    ("中文 and English!", 4),                  # 2 characters + 2 words
    ("word2vec café 123", 0),                 # letters glued to other word characters count nothing
    ("", 0),
    (words(37), 37),
])
def test_produced_length(text, count):
    assert produced_length(text) == count


# ---- the labeller on a stub context.

@dataclass
class StubContext:
    """The attributes of RoundContext; `sample` returns canned texts per prompt text and records its calls."""

    records: list
    canned: dict[str, list[str]]
    params: dict = field(default_factory=dict)
    sampling: Sampling = field(default_factory=lambda: Sampling(k=4))
    round: int = 1
    model: Any = None
    reference: str | None = None
    seed: int = 0
    folder: Path = Path(".")
    calls: list = field(default_factory=list)

    def sample(self, prompts, *, k=None, temperature=None, max_new_tokens=None, chat_template=True):
        self.calls.append((list(prompts), k))
        text = {p if isinstance(p, str) else p[-1]["content"]: p for p in prompts}
        return [self.canned[t][: k or self.sampling.k] for t in text]


CAT = "Describe a cat. Answer in about 20 words."
CHAT = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Describe a dog in 10 words"}]
TWO = "Describe a fox in 20 words, then in 40 words."
NONE = "Describe a hen."
BAD = "Describe an owl. Answer in about 40 words."
ZERO = "Describe a cow in 0 words."


def stub(**params) -> StubContext:
    records = [Record({"prompt": p}, f"prompts.jsonl, line {i + 1}") for i, p in enumerate([CAT, CHAT, TWO, NONE,
                                                                                              BAD, ZERO])]
    canned = {CAT: [words(10), words(32), words(20), ""],        # S_l 50, 80, 100, empty
              "Describe a dog in 10 words": [words(17), words(16), words(30), words(16, "dog")],  # 76.7, 80, 0, 80
              BAD: [words(5), words(130), words(15), words(170)]}  # 0, 25, 16.7, 0
    return StubContext(records=records, canned=canned, params=params)


def test_labeller_keeps_the_best_sample_per_prompt():
    context = stub()
    rows = long_output_rows(context)
    assert rows == [
        {"prompt": CAT, "completion": words(20), "scores": [100.0], "required_length": 20, "produced_length": 20},
        {"prompt": CHAT, "completion": words(16), "scores": [80.0], "required_length": 10, "produced_length": 16},
    ]
    assert rows[1]["prompt"] is CHAT  # the prompt as given, a message list
    # Stage 1 dropped the rows with two lengths, none, or zero before sampling; k from the round's sampling.
    assert context.calls == [([CAT, CHAT, BAD], 4)]


def test_labeller_per_prompt_and_threshold():
    rows = long_output_rows(stub(per_prompt=3))
    assert [(r["prompt"] is CHAT, r["produced_length"], r["completion"]) for r in rows] == [
        (False, 20, words(20)), (False, 32, words(32)),            # best first; 10 words (50) is below 80
        (True, 16, words(16)), (True, 16, words(16, "dog"))]       # ties keep sampling order
    rows = long_output_rows(stub(per_prompt=5, min_score=50))
    assert [r["produced_length"] for r in rows] == [20, 32, 10, 16, 16, 17]
    assert [r["scores"][0] for r in rows] == pytest.approx([100, 80, 50, 80, 80, 100 * (1 - 0.7 / 3)])
    rows = long_output_rows(stub(min_score=100))
    assert [r["produced_length"] for r in rows] == [20]
    # min_score 0 keeps everything scored, but an empty sample is never scored (as DataETL skips y = 0).
    rows = long_output_rows(stub(per_prompt=4, min_score=0))
    assert [r["produced_length"] for r in rows if r["prompt"] == CAT] == [20, 32, 10]
    assert all(r["completion"] for r in rows) and len(rows) == 3 + 4 + 4


def test_labeller_without_kept_prompts_does_not_sample():
    context = StubContext(records=[Record({"prompt": TWO}, "a"), Record({"prompt": NONE}, "b")], canned={})
    assert long_output_rows(context) == []
    assert context.calls == []


def test_labeller_names_a_row_without_prompt():
    context = StubContext(records=[Record({"question": CAT}, "prompts.jsonl, line 3")], canned={})
    with pytest.raises(ValueError, match="prompts.jsonl, line 3"):
        long_output_rows(context)


@pytest.mark.parametrize("key, value", [("min_score", -1), ("min_score", 101), ("min_score", "80"),
                                        ("min_score", True), ("per_prompt", 0), ("per_prompt", 1.5),
                                        ("per_prompt", True)])
def test_check_params_names_the_bad_key(key, value):
    with pytest.raises(ValueError, match=key):
        check_params({**DEFAULTS, key: value})
    with pytest.raises(ValueError, match=key):
        long_output_rows(stub(**{key: value}))


def test_defaults_are_the_papers():
    assert DEFAULTS == {"min_score": 80.0, "per_prompt": 1}
    check_params(DEFAULTS)


# ---- the shipped prompt set.

def shipped_rows(name: str = "prompts.jsonl") -> list[dict]:
    path = importlib.resources.files("alignkit").joinpath("data", "long_output", name)
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_shipped_prompts_state_one_length_each_but_five():
    rows = shipped_rows()
    suffix = " words."
    asked = [r["prompt"] for r in rows if r["prompt"].endswith(suffix) and "Answer in about " in r["prompt"]]
    others = [r["prompt"] for r in rows if r["prompt"] not in asked]
    assert len(asked) == 40 and len(others) == 5
    for prompt in asked:
        n = int(prompt[: -len(suffix)].rsplit("Answer in about ", 1)[1])
        assert n in (20, 30, 40, 60, 80)
        assert required_length(prompt) == n
    assert sorted(int(p[: -len(suffix)].rsplit(" ", 1)[1]) for p in asked) == sorted([20, 30, 40, 60, 80] * 8)
    assert all(required_length(p) is None for p in others)
    assert len({r["prompt"] for r in rows}) == len(rows)


def test_shipped_prompts_are_what_the_script_writes(tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("make_long_output_prompts",
                                                  ROOT / "scripts" / "make_long_output_prompts.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr("sys.argv", ["make_long_output_prompts.py", "--out", str(tmp_path)])
    script.main()
    for name in ("prompts.jsonl", "heldout.jsonl"):
        shipped = importlib.resources.files("alignkit").joinpath("data", "long_output", name)
        assert (tmp_path / name).read_bytes() == shipped.read_bytes()


def test_heldout_prompts_state_one_length_each_and_share_no_task_with_training():
    heldout, training = shipped_rows("heldout.jsonl"), shipped_rows()
    assert len(heldout) == 20 and all(required_length(r["prompt"]) in (20, 30, 40, 60, 80) for r in heldout)
    task = lambda prompt: prompt.split(". Answer in about ")[0]  # noqa: E731
    assert not {task(r["prompt"]) for r in heldout} & {task(r["prompt"]) for r in training}


def test_the_length_evaluation_scores_each_greedy_answer_by_s_l(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from alignkit.loops import evaluate
    from alignkit.loops.config import EvalPart, LoopConfig

    answers = {"Greet us. Answer in about 10 words.": "one two three four five",        # y/x = 1/2: S_l 50
               "Leave. Answer in about 4 words.": "a b c d e f g h",                    # y/x = 2: S_l 66.7
               "Count. Answer in about 5 words.": "one, two, three, 4 and five."}  # y = x: S_l 100
    data = tmp_path / "heldout.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in [*answers, "No length is stated here."]))
    monkeypatch.setattr(evaluate, "ensure_loaded", lambda model: SimpleNamespace(model=None, tokenizer=None))
    monkeypatch.setattr(evaluate, "draw_samples", lambda model, tokenizer, prompts, **_: (
        [[answers[prompt]] for prompt in prompts], None, None))
    config = LoopConfig(preset="long_output", eval=EvalPart(data=str(data)))  # kind: the preset's, "length"
    result = evaluate.evaluate_round(config, "some-model", tmp_path / "eval.json")
    assert result["kind"] == "length"
    assert result["mean_length_score"] == pytest.approx((50 + 200 / 3 + 100) / 3)
    assert result["length_score_at_least_threshold"] == [1, 3]
    assert result["mean_produced_over_required"] == pytest.approx((0.5 + 2 + 1) / 3)
    assert json.loads((tmp_path / "eval.json").read_text()) == result
