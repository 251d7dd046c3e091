"""I-SHEEP labelling: the current model writes instructions, answers them, scores its own answers, and the
rows it scores highly become next round's SFT data.

Source: "I-SHEEP: Self-Alignment of LLM from Scratch through an Iterative Self-Enhancement Paradigm", Liang et
al., arXiv 2408.08072. Official code: multimodal-art-projection/I-SHEEP at commit ddf6606 (unchanged at
84187d4), files under `seed_ppl/`. The prompts are byte-exact copies in `isheep_prompts/` (see its README). One
round runs these steps:

1. Self-instruct [code: generate_instruction.py `encode_prompt`, `post_process_gpt3_response`]. The meta-prompt
   (prompt.txt) is followed by `seed_tasks_per_prompt` seed tasks drawn uniformly from the pool, as
   "###\\n{i}. Instruction: ...\\n{i}. Input:\\n...\\n", and ends with "###\\n{n+1}. Instruction:". It is fed as
   raw text. Sampling uses temperature 1 and stops at "17" [code: utils.py `vllm_generator`,
   context_generate.py]. The reply is split at "###" and the last piece is dropped as likely cut off. A piece
   is kept if it splits into exactly 5 parts at "{i}. Instruction:"/"{i}. Input:" and passes the official
   rules (`passes_rules`). Then comes the ROUGE-L filter: an instruction is dropped when its ROUGE-L F
   against a seed or an already-kept instruction is greater than 0.7.
2. Answer with the bare prompt "{instruction}{input}\\n" (or "{instruction}\\n"), sampled [code:
   generate_output.py]. The iteration-2+ scripts (generate_output_iter2.py) wrap it in a Qwen chat frame;
   that is `chat_template=True` here.
3. Rule filter [code: utils/step_2_1_filter_output_and_instruction_to_sft.py] (`ill_formed`).
4. Self-assess with the quality prompt, then the following prompt [code: evaluate_prompt_parameters.py]. Each
   is answered as '<score>||<explanation>' and parsed by `parse_score`. A row without a score is dropped.
5. Keep a row when quality > 8 and following > 8 [code: utils/step_3_post_filter_parameter.py].

Self-Specialization (Kang et al., arXiv 2310.00160) is this same step started from domain seed tasks
(`seed_tasks="cooking"`).

Where this differs from the official code:
- Generation lengths default to 256/256/16 new tokens. Official: `max_tokens=1000` for every stage. Only
  the leading number of a self-assessment is parsed, so 16 tokens score the same.
- The stop string is applied by cutting the returned text at its first "17".
- top_p comes from the loop's `sample.top_p`. Official: 0.95 everywhere.
- One batch of `meta_prompts` (official `request_batch_size` 32) is run per round. Official: batches are
  repeated until the target count is reached.
- The official qwen72B_all.sh scores every iteration with the base model. Here the current model scores
  itself.
- The SFT prompt is "{instruction}\\n{input}". This is LLaMA-Factory's alpaca join, which the official SFT
  ran through; that configuration is not in the repo (UNVERIFIED). The completion is the answer stripped.
- The official seed file (seed_tasks_hf65_with_cluster_id.jsonl) is a Git LFS pointer in the repo. The
  shipped seed sets in `isheep_seeds/` were written for alignkit. `context.records` is not used.
"""

from __future__ import annotations

import logging
import random
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from typing import TYPE_CHECKING, Any

from alignkit.data import load_records
from alignkit.data.writing import write_jsonl

if TYPE_CHECKING:
    from alignkit.loops.rounds import RoundContext

LOG = logging.getLogger(__name__)
SCORED_FILE = "isheep-scored.jsonl"
BLACKLIST = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps", "draw",
             "plot", "go to", "video", "audio", "music", "flowchart", "diagram")  # generate_instruction.py
SHIPPED_SEEDS = ("general", "cooking")
DEFAULTS: dict[str, Any] = {
    "seed_tasks": "general",          # a shipped name or a path to a JSONL of {"instruction", "input"?} rows
    "seed_tasks_per_prompt": 5,       # official num_prompt_instructions
    "meta_prompts": 32,               # official request_batch_size
    "instructions": 32,               # new instructions kept per round (official: 10000 per iteration)
    "rouge_threshold": 0.7,           # drop when ROUGE-L F > this
    "min_words": 4,                   # official drops len(split()) <= 3 ...
    "max_words": 150,                 # ... or > 150
    "blacklist": BLACKLIST,
    "stop": "17",                     # official vLLM stop string for self-instruct
    "temperature": 1.0,               # official for every stage
    "instruction_max_new_tokens": 256,  # official 1000
    "answer_max_new_tokens": 256,     # official 1000
    "score_max_new_tokens": 16,       # official 1000
    "score_threshold": 8,             # keep when both scores > this
    "rule_filter": True,              # step_2_1 rules on the answers
    "chat_template": False,           # self-instruct and answer prompts (official iteration 1: raw text)
}
SPECIALIZATION_DEFAULTS: dict[str, Any] = {**DEFAULTS, "seed_tasks": "cooking"}
_POSITIVE = ("seed_tasks_per_prompt", "meta_prompts", "instructions", "instruction_max_new_tokens",
             "answer_max_new_tokens", "score_max_new_tokens")
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_OUTPUT_PATTERNS = (r"(?i)\n(assistant|system|human|question|output|user)[:\n]",
                    r"(?i)Answer\sChoices:|noinput|no input|\n\n?can you|do you .{1,50}?|\n\n.{1,100}\?",
                    r"(?:\b[A-Ea-e]\.|\([A-Ea-e]\))", r"[\u4e00-\u9fff]+")  # step_2_1 ill-formed output
_INPUT_PATTERN = r"(?i)noinput|no input|<.{1,20}>|none"
_ANSWER_PREFIX = r"^(答案[:：]\s?)+"


def rouge_tokens(text: str) -> list[str]:
    """Tokens as Google's `rouge_score` makes them without stemming: lowercase, split at non-[a-z0-9] runs."""
    return _NON_ALNUM.sub(" ", text.lower()).split()


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of `a` and `b`."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def _rouge_f(a: Sequence[str], b: Sequence[str]) -> float:
    if not a or not b:
        return 0.0
    common = _lcs(a, b)
    precision, recall = common / len(a), common / len(b)
    return 0.0 if common == 0 else 2 * precision * recall / (precision + recall)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure, as `rouge_score.RougeScorer(["rougeL"], use_stemmer=False)` computes it:
    F = 2PR/(P+R) with P = LCS/|candidate| and R = LCS/|reference|. It is 0 when either side has no tokens."""
    return _rouge_f(rouge_tokens(candidate), rouge_tokens(reference))


def _has_word(word: str, text: str) -> bool:
    return re.search(rf"\b({re.escape(word)})\b", text, flags=re.IGNORECASE) is not None


def _length_and_keywords_ok(text: str, min_words: int, max_words: int, blacklist: Iterable[str]) -> bool:
    return min_words <= len(text.split()) <= max_words and not any(_has_word(w, text) for w in blacklist)


def passes_rules(instruction: str, given: str = "", *, min_words: int = 4, max_words: int = 150,
                 blacklist: Iterable[str] = BLACKLIST) -> bool:
    """The official checks on a generated (instruction, input) pair [code: generate_instruction.py
    `post_process_gpt3_response`, `filter_instruction`]. They check the word count and the keyword blacklist
    (on both), that the text opens with a character that is ASCII and not punctuation, "noinput" markers, a
    leaked "Instruction:"/"Input:"/"Output:" field, and links."""
    blacklist = tuple(blacklist)
    if not _length_and_keywords_ok(instruction, min_words, max_words, blacklist):
        return False
    if any(_has_word(word, given) for word in blacklist):
        return False
    if not instruction or instruction[0] in string.punctuation or not instruction[0].isascii():
        return False
    lowered = given.lower()
    if "noinput" in lowered or "no input" in lowered or "noinput" in instruction:
        return False
    if re.search(r".\s+(Instruction|Input):", instruction) or re.search(r".\s+(Instruction|Input|Output):", given):
        return False
    return not (re.search(r"https?:", instruction) or re.search(r"https?:", given))


def dedupe(candidates: Iterable[str], existing: Iterable[str], threshold: float = 0.7, *, min_words: int = 4,
           max_words: int = 150, blacklist: Iterable[str] = BLACKLIST) -> list[str]:
    """The candidates, in order, that have `min_words`..`max_words` words and no blacklisted keyword, and
    whose ROUGE-L F against every existing and already-kept instruction is <= `threshold`. The official code
    drops when `max(scores) > 0.7` [code: generate_instruction.py `generate_instructions`]."""
    blacklist = tuple(blacklist)
    pool = [rouge_tokens(text) for text in existing]
    kept = []
    for candidate in candidates:
        if not _length_and_keywords_ok(candidate, min_words, max_words, blacklist):
            continue
        tokens = rouge_tokens(candidate)
        if all(_rouge_f(tokens, other) <= threshold for other in pool):
            kept.append(candidate)
            pool.append(tokens)
    return kept


def parse_score(text: str) -> float | None:
    """The score at the start of a '<score>||<explanation>' answer, as official `extract_number_from_eval`
    [code: evaluate_prompt_parameters.py] reads it. Leading whitespace and non-word characters are dropped.
    The leading number (decimals allowed) is rounded with Python's `round`. It must be 1..10, else the
    answer is unscored (None). The official fallback on the text before '||' can never match after that
    cleaning, so it is not repeated."""
    cleaned = re.sub(r"^\s*\W*", "", text)
    match = re.match(r"^\d+(\.\d+)?", cleaned)
    if match is None:
        return None
    try:
        score = round(float(match.group(0)))
    except (ValueError, OverflowError):
        return None
    return float(score) if 1 <= score <= 10 else None


def keep(rows: Iterable[Mapping[str, Any]], threshold: float = 8) -> list[Mapping[str, Any]]:
    """Rows whose two scores `row["scores"] = [quality, following]` are both above `threshold` (official:
    `quality_score > 8 and following_score > 8` [code: utils/step_3_post_filter_parameter.py])."""
    return [row for row in rows if all(s is not None and s > threshold for s in row["scores"])]


def ill_formed(instruction: str, given: str, output: str) -> bool:
    """Whether the official rule filter [code: utils/step_2_1_filter_output_and_instruction_to_sft.py] drops
    a pair. It is dropped for chat-role or multiple-choice patterns or Chinese in the output, for "noinput",
    "none" or "<...>" in the instruction or input, for an input repeated in the instruction, or for an empty
    output."""
    if any(re.search(pattern, output) for pattern in _OUTPUT_PATTERNS):
        return True
    if re.search(_INPUT_PATTERN, given) or re.search(_INPUT_PATTERN, instruction):
        return True
    return (given in instruction and given.strip() != "") or output == ""


def check_params(params: Mapping[str, Any]) -> None:
    """Raise ValueError naming the first unknown or bad key of `params` (a subset of `DEFAULTS`)."""
    for key, value in params.items():
        if key not in DEFAULTS:
            raise ValueError(f"params.{key}: unknown I-SHEEP parameter; known: {', '.join(DEFAULTS)}")
        bad = _bad_value(key, value)
        if bad:
            raise ValueError(f"params.{key}: {bad}, got {value!r}")
    merged = {**DEFAULTS, **params}
    if merged["min_words"] > merged["max_words"]:
        raise ValueError(f"params.min_words: must be <= max_words ({merged['max_words']})")


def _bad_value(key: str, value: Any) -> str | None:
    """What is wrong with `value` for parameter `key`, or None."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in _POSITIVE or key in ("min_words", "max_words"):
        low = 1 if key in _POSITIVE else 0
        whole = isinstance(value, int) and not isinstance(value, bool)
        return None if whole and value >= low else f"must be an int >= {low}"
    if key == "rouge_threshold":
        return None if number and 0 <= value <= 1 else "must be a number in [0, 1]"
    if key == "temperature":
        return None if number and value >= 0 else "must be a number >= 0"
    if key == "score_threshold":
        return None if number else "must be a number"
    if key in ("rule_filter", "chat_template"):
        return None if isinstance(value, bool) else "must be true or false"
    if key == "blacklist":
        ok = isinstance(value, (list, tuple)) and all(isinstance(w, str) and w for w in value)
        return None if ok else "must be a list of non-empty strings"
    if key == "stop":
        return None if value is None or isinstance(value, str) else "must be a string or null"
    return None if isinstance(value, str) and value else "must be a shipped seed name or a JSONL path"


def _resource(*parts: str) -> Any:
    return resources.files("alignkit").joinpath("loops", *parts)


def load_prompt(name: str) -> str:
    """A verbatim official prompt from `isheep_prompts/{name}.txt` (UTF-8, newlines untouched)."""
    return _resource("isheep_prompts", f"{name}.txt").read_bytes().decode("utf-8")


def load_seeds(source: str) -> list[dict[str, str]]:
    """Seed tasks `{"instruction", "input"}` from a shipped set (`SHIPPED_SEEDS`) or a JSONL path."""
    path = str(_resource("isheep_seeds", f"{source}.jsonl")) if source in SHIPPED_SEEDS else source
    seeds = []
    for record in load_records(path):
        instruction, given = record.data.get("instruction"), record.data.get("input", "")
        if not isinstance(instruction, str) or not instruction.strip() or not isinstance(given, str):
            raise ValueError(f"{record.where}: a seed task needs a non-empty string 'instruction' (and a string "
                             "'input' if any)")
        seeds.append({"instruction": instruction, "input": given})
    if not seeds:
        raise ValueError(f"params.seed_tasks: {source} has no seed tasks")
    return seeds


def meta_prompt(template: str, tasks: Sequence[Mapping[str, str]]) -> str:
    """The self-instruct prompt: the meta-prompt, the numbered tasks, and an open "{n+1}. Instruction:"."""
    parts = [template, "\n"]
    for number, task in enumerate(tasks, 1):
        instruction = re.sub(r"\s+", " ", task["instruction"]).strip().rstrip(":")
        parts.append(f"###\n{number}. Instruction: {instruction}\n{number}. Input:\n{task['input'] or '<noinput>'}\n")
    parts.append(f"###\n{len(tasks) + 1}. Instruction:")
    return "".join(parts)


def parse_generated(text: str, shown: int, stop: str | None = "17") -> list[tuple[str, str]]:
    """The (instruction, input) pairs of a self-instruct reply that continues task number `shown + 1`. The
    text is cut at `stop`, then split at "###", and the last (possibly truncated) piece is dropped."""
    if stop:
        text = text.split(stop, 1)[0]
    pieces = (f"{shown + 1}. Instruction:" + text).split("###")[:-1]
    pairs = []
    for offset, piece in enumerate(pieces):
        parts = re.split(rf"{shown + 1 + offset}\.\s+(Instruction|Input):", piece)
        if len(parts) == 5:
            given = parts[4].strip()
            pairs.append((parts[2].strip(), "" if given.lower() == "<noinput>" else given))
    return pairs


def _self_instruct(context: RoundContext, p: Mapping[str, Any], seeds: list[dict[str, str]]) -> list[dict]:
    """Up to `p["instructions"]` new tasks `{"instruction", "input"}` from one batch of meta-prompts."""
    rng, template = random.Random(context.seed), load_prompt("self_instruct")
    shown = min(p["seed_tasks_per_prompt"], len(seeds))
    prompts = [meta_prompt(template, rng.sample(seeds, shown)) for _ in range(p["meta_prompts"])]
    replies = context.sample(prompts, k=1, temperature=p["temperature"],
                             max_new_tokens=p["instruction_max_new_tokens"], chat_template=p["chat_template"])
    rules = {"min_words": p["min_words"], "max_words": p["max_words"], "blacklist": p["blacklist"]}
    parsed = [pair for reply in replies for pair in parse_generated(reply[0], shown, p["stop"])]
    inputs: dict[str, str] = {}
    for instruction, given in parsed:
        if passes_rules(instruction, given, **rules):
            inputs.setdefault(instruction, given)
    fresh = dedupe(inputs, [seed["instruction"] for seed in seeds], p["rouge_threshold"], **rules)
    LOG.info("self-instruct: %d replies gave %d instructions; %d distinct pass the rules; %d are new "
             "(ROUGE-L <= %s), for example: %s", len(replies), len(parsed), len(inputs), len(fresh),
             p["rouge_threshold"], "; ".join(repr(text) for text in fresh[:3]))
    return [{"instruction": text, "input": inputs[text]} for text in fresh[:p["instructions"]]]


def _assess(context: RoundContext, p: Mapping[str, Any], rows: list[dict], name: str) -> list[dict]:
    """The rows the model gives a parseable score with prompt `name`. Each keeps its score under `name`."""
    template = load_prompt(f"self_assess_{name}")
    prompts = []
    for row in rows:
        fields = {"instruction": f"{row['instruction']} {row['input']}" if row["input"] else row["instruction"],
                  "output_data": row["output"]}
        prompts.append(re.sub(r"\{(instruction|output_data)\}", lambda m: fields[m.group(1)], template))
    replies = context.sample(prompts, k=1, temperature=p["temperature"], max_new_tokens=p["score_max_new_tokens"],
                             chat_template=False) if prompts else []
    scored = []
    for row, reply in zip(rows, replies):
        score = parse_score(reply[0])
        if score is not None:
            scored.append({**row, name: score})
    return scored


def isheep_rows(context: RoundContext) -> list[dict]:
    """One I-SHEEP round: self-instruct, answer, rule filter, self-assess and keep (see the module docstring).

    Returns SFT rows `{"prompt", "completion", "scores": [quality, following], "source": "isheep",
    "instruction", "input", "round"}`. The list is empty when no row passes. Every answer that got both scores,
    kept or not, is written to `SCORED_FILE` in the round's folder."""
    p = {**DEFAULTS, **context.params}
    check_params(p)
    tasks = _self_instruct(context, p, load_seeds(p["seed_tasks"]))
    prompts = [f"{t['instruction']}{t['input']}\n" if t["input"] else f"{t['instruction']}\n" for t in tasks]
    replies = context.sample(prompts, k=1, temperature=p["temperature"], max_new_tokens=p["answer_max_new_tokens"],
                             chat_template=p["chat_template"]) if prompts else []
    rows = [{**t, "output": re.sub(_ANSWER_PREFIX, "", reply[0])} for t, reply in zip(tasks, replies)]
    if p["rule_filter"]:
        rows = [row for row in rows if not ill_formed(row["instruction"], row["input"], row["output"])]
    kept_by_rules = len(rows)
    rows = _assess(context, p, _assess(context, p, rows, "quality"), "following")
    scored = [{**row, "scores": [row["quality"], row["following"]]} for row in rows]
    scored_path = write_jsonl(scored, context.folder / SCORED_FILE, overwrite=True)  # to judge the threshold by
    kept = [{"prompt": f"{r['instruction']}\n{r['input']}" if r["input"] else r["instruction"],
             "completion": r["output"].strip(), "scores": r["scores"], "source": "isheep",
             "instruction": r["instruction"], "input": r["input"], "round": context.round}
            for r in keep(scored, p["score_threshold"]) if r["output"].strip()]
    LOG.info("answers: %d of %d past the rule filter, %d scored twice (in %s), %d kept (both scores > %s)",
             kept_by_rules, len(tasks), len(scored), scored_path, len(kept), p["score_threshold"])
    return kept
