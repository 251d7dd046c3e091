"""I-SHEEP labelling (alignkit.loops.isheep). Expected values are worked out by hand in the comments."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from alignkit.loops import isheep
from alignkit.loops.isheep import (DEFAULTS, SCORED_FILE, check_params, dedupe, ill_formed, isheep_rows, keep,
                                   load_prompt, load_seeds, meta_prompt, parse_generated, parse_score, passes_rules,
                                   rouge_l, rouge_tokens)

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ROOT / "src" / "alignkit" / "loops" / "isheep_prompts"


# --- verbatim prompts -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, size, sha", [
    ("self_instruct", 1751, "02d40be1d2ba2430fd7218b1e639492b400b4131268b50a530f2f3aea8b22e1a"),
    ("self_assess_quality", 418, "afd9e48c73035f0daa37c1b69c7f4d26558e4c3faa043d66b7d3436ca913d742"),
    ("self_assess_following", 614, "ee81066d02e2c612a0760ddf956040d423e0ecc45f2d160314bf97eb84e0c79b"),
])
def test_prompt_files_are_the_verbatim_copies(name, size, sha):
    data = (PROMPTS / f"{name}.txt").read_bytes()
    assert (len(data), hashlib.sha256(data).hexdigest()) == (size, sha)
    assert load_prompt(name).encode("utf-8") == data


def test_prompt_texts_open_and_close_as_the_official_ones():
    assert load_prompt("self_instruct").startswith("You are asked to come up with a set of 20 diverse task")
    assert load_prompt("self_instruct").endswith("\n\nList of 20 tasks:\n")
    for name in ("quality", "following"):
        text = load_prompt(f"self_assess_{name}")
        assert text.startswith("Here are the instruction and the response. Instruction: {instruction} "
                               "Response: {output_data}.\nPlease rate the response ")
        assert text.endswith("using the format '<score>||<explanation>'. As a strict scoring expert, your score is: ")


def test_package_data_ships_the_prompt_and_seed_files():
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["alignkit"]
    assert {"loops/isheep_prompts/*", "loops/isheep_seeds/*"} <= set(patterns)


# --- ROUGE-L ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("candidate, reference, expected", [
    ("the cat sat", "the cat ate", 2 / 3),            # LCS "the cat" = 2, P = R = 2/3, F = 2/3
    ("a b c d", "b d", 2 / 3),                        # LCS 2, P = 2/4, R = 2/2, F = 2·½·1/(3/2) = 2/3
    ("a b c", "c b a", 1 / 3),                        # LCS 1, P = R = 1/3
    ("The Cat, SAT!", "the-cat   sat", 1.0),          # same tokens after lowercasing and splitting at punctuation
    ("dog's bone", "dog s bone", 1.0),                # "'" separates: dog, s, bone
    ("x y", "p q", 0.0),                              # nothing in common
    ("", "the cat", 0.0),                             # empty side
    ("!!! ...", "!!!", 0.0),                          # no tokens on either side
])
def test_rouge_l_hand_examples(candidate, reference, expected):
    assert rouge_l(candidate, reference) == pytest.approx(expected, abs=1e-12)
    assert rouge_l(reference, candidate) == pytest.approx(expected, abs=1e-12)  # F is symmetric


def test_rouge_tokens_lowercase_and_split_at_non_ascii_alphanumerics():
    assert rouge_tokens("Café au-lait, 2x!") == ["caf", "au", "lait", "2x"]  # "é" is not [a-z0-9]: a separator
    assert rouge_tokens("  ") == []


# --- dedupe -------------------------------------------------------------------------------------------------

def test_dedupe_at_the_threshold_boundary():
    existing = ["one two three four"]
    # "one two five six" vs existing: LCS 2, P = R = 1/2, F = 0.5 exactly: kept at 0.5 (<=), dropped at 0.49.
    # "one two three nine" vs existing: LCS 3, P = R = 3/4, F = 0.75 > 0.7: dropped at the official 0.7.
    assert dedupe(["one two five six"], existing, 0.5) == ["one two five six"]
    assert dedupe(["one two five six"], existing, 0.49) == []
    assert dedupe(["one two three nine", "one two five six"], existing) == ["one two five six"]


def test_dedupe_compares_with_already_kept_candidates():
    # The second is F = 1 to the first (same tokens), so it goes; the third shares only "the": F = 2·1/(4+4) = 0.25.
    candidates = ["Name the largest ocean", "name the LARGEST ocean!", "Explain the tide cycle"]
    assert dedupe(candidates, []) == ["Name the largest ocean", "Explain the tide cycle"]


def test_dedupe_word_limits_and_blacklist():
    three, four = "one two three", "alpha beta gamma delta"
    long_ok, too_long = " ".join(f"w{i}" for i in range(150)), " ".join(f"w{i}" for i in range(151))
    assert dedupe([three, four], []) == [four]  # official drops len(split()) <= 3
    assert dedupe([long_ok, too_long], []) == [long_ok]  # ... and > 150
    assert dedupe(["Draw a cute cat please", "Drawing lessons for kids today", "Please go to the shop"], []) == [
        "Drawing lessons for kids today"]  # whole words only; "go to" is a phrase on the list
    assert dedupe(["Draw a cute cat please"], [], blacklist=()) == ["Draw a cute cat please"]
    assert dedupe([three], [], min_words=3) == [three]


# --- self-instruct parsing and rules ------------------------------------------------------------------------

def test_meta_prompt_numbers_the_tasks_and_opens_the_next():
    tasks = [{"instruction": "Add  the\nnumbers:", "input": "2, 3"}, {"instruction": "Name a colour.", "input": ""}]
    assert meta_prompt("META", tasks) == ("META\n###\n1. Instruction: Add the numbers\n1. Input:\n2, 3\n"
                                          "###\n2. Instruction: Name a colour.\n2. Input:\n<noinput>\n"
                                          "###\n3. Instruction:")


def test_parse_generated_splits_pieces_drops_the_last_and_stops_at_17():
    reply = (" Write a short story about a fox.\n3. Input:\n<noinput>\n###\n"
             "4. Instruction: Translate the sentence to German.\n4. Input:\nGood morning\n###\n"
             "5. Instruction: broken piece without input\n###\n"
             "6. Instruction: Cut off by the length limit\n6. Input:\nhalf an inp")  # complete-looking, but last
    assert parse_generated(reply, 2) == [("Write a short story about a fox.", ""),
                                         ("Translate the sentence to German.", "Good morning")]
    assert parse_generated("Count to 17 slowly please.\n3. Input:\n<noinput>\n###\n", 2) == []  # cut at "17"
    assert parse_generated("Count to 17 slowly please.\n3. Input:\n<noinput>\n###\n", 2, stop=None) == [
        ("Count to 17 slowly please.", "")]


@pytest.mark.parametrize("instruction, given, ok", [
    ("Write a short story about a fox.", "", True),
    ("(Write) a short story about a fox.", "", False),        # starts with punctuation
    ("Écris une histoire sur un renard.", "", False),          # starts with a non-ASCII character
    ("Summarize the text in one line.", "See the video above", False),  # blacklist in the input
    ("Summarize the text in one line.", "noinput given", False),
    ("Summarize the noinput text now.", "", False),
    ("Summarize this article for me: https://x.org", "", False),
    ("Answer it. Input: something else here", "", False),       # a leaked field
])
def test_passes_rules(instruction, given, ok):
    assert passes_rules(instruction, given) is ok


@pytest.mark.parametrize("instruction, given, output, dropped", [
    ("Name a colour please now.", "", "Blue is a colour.", False),
    ("Name a colour please now.", "", "Blue.\nUser: another", True),       # chat-role pattern
    ("Name a colour please now.", "", "Options: (a) red", True),           # multiple-choice pattern
    ("Name a colour please now.", "", "蓝色", True),                        # Chinese
    ("Name a colour please now.", "", "", True),                           # empty output
    ("Name none of the colours.", "", "Red.", True),                       # "none" in the instruction
    ("Repeat this: hello there", "hello", "hello", True),                  # input already in the instruction
])
def test_ill_formed(instruction, given, output, dropped):
    assert ill_formed(instruction, given, output) is dropped


# --- scores -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("9||clear and correct", 9.0),
    ("  **10** || great", 10.0),  # leading spaces and non-word characters are dropped
    ("7", 7.0),
    ("8.5||ok", 8.0),             # Python round: half to even
    ("9.5||ok", 10.0),
    ("1||bad", 1.0),
    ("0.4||bad", None),           # rounds to 0: outside 1..10
    ("11||too high", None),
    ("Score: 9||x", None),        # must start with the number
    ("great answer", None),
    ("", None),
])
def test_parse_score(text, expected):
    assert parse_score(text) == expected


def test_keep_needs_both_scores_above_the_threshold():
    rows = [{"id": 1, "scores": [9, 9]}, {"id": 2, "scores": [8, 10]}, {"id": 3, "scores": [10, 8]},
            {"id": 4, "scores": [8.0001, 9]}, {"id": 5, "scores": [None, 10]}, {"id": 6, "scores": [10, 10]},
            {"id": 7, "scores": [7, 7]}]
    assert [r["id"] for r in keep(rows)] == [1, 4, 6]  # official: both > 8
    assert [r["id"] for r in keep(rows, 7)] == [1, 2, 3, 4, 6]
    assert DEFAULTS["score_threshold"] == 8


def test_official_defaults():
    # generate_instruction.py: 5 seed tasks per prompt, request_batch_size 32, ROUGE-L > 0.7 dropped, words 4..150;
    # utils.py vllm_generator: temperature 1, stop "17" for self-instruct.
    expected = {"seed_tasks_per_prompt": 5, "meta_prompts": 32, "rouge_threshold": 0.7, "min_words": 4,
                "max_words": 150, "temperature": 1.0, "stop": "17", "score_threshold": 8, "chat_template": False}
    assert {key: DEFAULTS[key] for key in expected} == expected
    assert set(DEFAULTS["blacklist"]) == {"image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
                                          "map", "maps", "draw", "plot", "go to", "video", "audio", "music",
                                          "flowchart", "diagram"}


# --- params -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("params, key", [
    ({"meta_prompt": 3}, "meta_prompt"),   # unknown (typo)
    ({"meta_prompts": 0}, "meta_prompts"),
    ({"instructions": 2.0}, "instructions"),
    ({"rouge_threshold": 1.5}, "rouge_threshold"),
    ({"temperature": -1}, "temperature"),
    ({"score_threshold": "8"}, "score_threshold"),
    ({"blacklist": "image"}, "blacklist"),
    ({"chat_template": "yes"}, "chat_template"),
    ({"seed_tasks": ""}, "seed_tasks"),
    ({"min_words": 10, "max_words": 5}, "min_words"),
])
def test_check_params_names_the_bad_key(params, key):
    with pytest.raises(ValueError, match=rf"params\.{key}\b"):
        check_params(params)


def test_check_params_accepts_the_defaults():
    check_params(DEFAULTS)
    check_params(isheep.SPECIALIZATION_DEFAULTS)


def test_shipped_seed_sets():
    general, cooking = load_seeds("general"), load_seeds("cooking")
    assert len(general) == 20 and len(cooking) == 12
    assert all(passes_rules(s["instruction"], s["input"]) for s in general + cooking)


def test_bad_seed_file_names_the_line(tmp_path):
    path = tmp_path / "seeds.jsonl"
    path.write_text('{"instruction": "Fine task here ok"}\n{"input": "no instruction"}\n')
    with pytest.raises(ValueError, match="line 2"):
        load_seeds(str(path))


# --- the labeller on a stub context -------------------------------------------------------------------------

SEEDS = ["Give three tips for staying focused while studying.", "Suggest a name for a small bakery.",
         "Translate the sentence into French."]
# The model's continuation of "...###\n3. Instruction:" (two seed tasks shown).
REPLY = (" Name three primary colors used in painting.\n3. Input:\n<noinput>\n###\n"
         "4. Instruction: Describe the water cycle in simple words.\n4. Input:\n<noinput>\n###\n"
         "5. Instruction: Draw a picture of a happy dog.\n5. Input:\n<noinput>\n###\n"            # blacklist
         "6. Instruction: Rewrite this sentence to sound more formal.\n6. Input:\nGonna grab food, brb.\n###\n"
         "7. Instruction: Give three tips for staying focused at work.\n7. Input:\n<noinput>\n###\n"  # F 0.75 to a seed
         "8. Instruction: Define kinetic energy.\n8. Input:\n<noinput>\n###\n"                   # 3 words
         "9. Instruction: List two uses of a paperclip at home.\n9. Input:\n<noinput>\n###\n"
         "10. Instruction: Suggest a name for a pet goldfish.\n10. Input:\n<noinput>\n###\n"       # F 5/7 to a seed
         "11. Instruction: Explain gravity 17 times over")
# "suggest a name for a pet goldfish" (7) vs the seed "suggest a name for a small bakery" (7): LCS 5, F = 5/7 = 0.714
# > 0.7, so it is dropped too. Kept, in order: colors, water, formal, paperclip.
ANSWERS = {
    "Name three primary colors used in painting.\n": "Red, yellow and blue.",
    "Describe the water cycle in simple words.\n": "Water evaporates and falls as rain.\nUser: more please",  # rule
    "Rewrite this sentence to sound more formal.Gonna grab food, brb.\n": "答案: I am going to get some food now.",
    "List two uses of a paperclip at home.\n": "Holding papers together and resetting phones.",
}
QUALITY = {"Red, yellow": "9||correct", "I am going": "10 || good", "Holding papers": "Excellent!",
           "Water evaporates": "3||meh"}
FOLLOWING = {"Red, yellow": "9||fine", "I am going": "8||not quite", "Water evaporates": "9||fine"}


@dataclass
class StubContext:
    """The attributes of RoundContext; `sample` answers from canned texts by the kind of prompt."""

    params: dict
    folder: Path
    round: int = 1
    seed: int = 3
    records: list = field(default_factory=list)
    calls: list = field(default_factory=list)

    def sample(self, prompts, *, k=None, temperature=None, max_new_tokens=None, chat_template=True):
        self.calls.append({"prompts": list(prompts), "k": k, "temperature": temperature,
                           "max_new_tokens": max_new_tokens, "chat_template": chat_template})
        return [[self._reply(prompt)] for prompt in prompts]

    @staticmethod
    def _reply(prompt: str) -> str:
        if "List of 20 tasks:" in prompt:
            return REPLY
        table = QUALITY if "based on its quality" in prompt else FOLLOWING if "adherence to" in prompt else None
        if table is None:
            return ANSWERS[prompt]
        return next(reply for key, reply in table.items() if f"Response: {key}" in prompt)


def _context(tmp_path: Path, **params: Any) -> StubContext:
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps({"instruction": s}) + "\n" for s in SEEDS))
    return StubContext(params={"seed_tasks": str(path), "seed_tasks_per_prompt": 2, "meta_prompts": 2,
                               "instructions": 10, **params}, folder=tmp_path / "round-1")


def test_labeller_on_a_stub_context(tmp_path):
    context = _context(tmp_path)
    rows = isheep_rows(context)
    # colors: 9/9 kept; water: rule filter; formal: following 8 is not > 8; paperclip: no quality score.
    colors = "Name three primary colors used in painting."
    assert rows == [{"prompt": colors, "completion": "Red, yellow and blue.", "scores": [9.0, 9.0], "source": "isheep",
                     "instruction": colors, "input": "", "round": 1}]
    meta, answers, quality, following = context.calls
    assert len(meta["prompts"]) == 2 and meta["chat_template"] is False and meta["temperature"] == 1.0
    for prompt in meta["prompts"]:
        assert prompt.startswith(load_prompt("self_instruct") + "\n###\n1. Instruction: ")
        assert prompt.endswith("\n2. Input:\n<noinput>\n###\n3. Instruction:")
        assert sum(f"Instruction: {s}\n" in prompt for s in SEEDS) == 2
    assert answers["prompts"] == list(ANSWERS)
    assert quality["prompts"][1] == load_prompt("self_assess_quality").replace(
        "{instruction}", "Rewrite this sentence to sound more formal. Gonna grab food, brb.").replace(
        "{output_data}", "I am going to get some food now.")  # "答案: " was stripped by the rule step
    assert len(quality["prompts"]) == 3 and len(following["prompts"]) == 2  # unscored rows are not asked again
    assert quality["chat_template"] is False and quality["max_new_tokens"] == DEFAULTS["score_max_new_tokens"]


def test_labeller_keeps_an_input_row_with_its_input_in_the_prompt(tmp_path, monkeypatch):
    monkeypatch.setitem(FOLLOWING, "I am going", "9||fine")
    rows = isheep_rows(_context(tmp_path))
    assert [(r["prompt"], r["completion"], r["scores"]) for r in rows] == [
        ("Name three primary colors used in painting.", "Red, yellow and blue.", [9.0, 9.0]),
        ("Rewrite this sentence to sound more formal.\nGonna grab food, brb.", "I am going to get some food now.",
         [10.0, 9.0])]


def test_labeller_caps_the_instructions_and_can_skip_the_rule_filter(tmp_path):
    context = _context(tmp_path, instructions=2, rule_filter=False)
    rows = isheep_rows(context)
    assert context.calls[1]["prompts"] == list(ANSWERS)[:2]
    assert len(context.calls[2]["prompts"]) == 2  # the water answer is scored too (quality 3: not kept)
    assert [r["instruction"] for r in rows] == ["Name three primary colors used in painting."]


def test_labeller_returns_nothing_when_nothing_passes_and_keeps_every_scored_answer(tmp_path):
    assert isheep_rows(_context(tmp_path, score_threshold=10)) == []
    scored = [json.loads(line) for line in (tmp_path / "round-1" / SCORED_FILE).read_text().splitlines()]
    assert [(r["instruction"], r["scores"]) for r in scored] == [  # paperclip: no parseable quality score
        ("Name three primary colors used in painting.", [9.0, 9.0]),
        ("Rewrite this sentence to sound more formal.", [10.0, 8.0])]
