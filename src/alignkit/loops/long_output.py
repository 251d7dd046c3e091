"""Minimum tuning for long output, as the labelling step of a self-alignment loop.

"Minimum Tuning to Unlock Long Output from LLMs with High Quality Data as the Key" (Chen et al., ModelScope,
arXiv 2410.10210) curates LongWriter-6k in two stages: stage 1 keeps the instructions that state exactly one
required length; stage 2 scores each answer's length by the LongBench-Write length score S_l and keeps the
answers with S_l >= 80 (1,748 -> 666 rows in the paper). Here the answers are the current model's own samples:
each kept prompt is sampled `sampling.k` times and the best-scoring samples (at most `per_prompt`, each with
S_l >= `min_score`) become SFT rows.

Behaviour follows the official code, modelscope/evalscope at commit fde259d2a32ab8a4cdb3af44dc8b18f504f1e277
(the files last changed in b03d9e3 and 9266efd):

* `evalscope/third_party/longbench_write/tools/data_etl.py`, `DataETL.filter` (strategy
  "no_required_length": the stage-1 regexes) and `DataETL.process_eval_length` (stage 2: rows with a zero
  required or produced length are skipped, the rest kept when `EvalLength.score(x, y) >= 80`);
* `evalscope/third_party/longbench_write/eval.py`, `EvalLength.score` (S_l);
* `evalscope/third_party/longbench_write/utils.py`, `count_words` (the produced length) and
  `chinese_to_arabic` (the Chinese digit of "N百字" / "N千字" / "N万字").

One deliberate difference: the official stage 1 de-duplicates its matches as a mix of strings (from the digit
patterns) and ints (from the Chinese patterns), so "500字" next to "五百字" (or "500 words" next to "0500 words")
counts as two lengths there; here lengths are told apart by value, so that is one length.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from numbers import Real
from typing import Any

from alignkit.data.prompts import Prompt, prompt_text

DEFAULTS: dict[str, Any] = {"min_score": 80.0, "per_prompt": 1}

# Stage-1 patterns of `DataETL.filter`: Arabic digits before 字 (Chinese characters) or " words" (one space,
# lower case, plural: "500-word" and "1 word" state nothing), and one Chinese digit before 百字 / 千字 / 万字.
DIGITS_CHARACTERS = re.compile(r"(\d+)字")
CHINESE_MULTIPLE = re.compile(r"(.)百字|(.)千字|(.)万字")
DIGITS_WORDS = re.compile(r"(\d+) words")
MULTIPLES = (100, 1000, 10000)  # the three groups of CHINESE_MULTIPLE: 百, 千, 万
CHINESE_DIGITS = {"零": 0, "一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9,
                  "俩": 2, "两": 2}  # `chinese_to_arabic`; any other character ("几", "5") states no length

# `count_words`: every CJK unified ideograph, plus every run of ASCII letters standing as a whole word.
CJK_CHARACTER = re.compile(r"[\u4e00-\u9fff]")
ENGLISH_WORD = re.compile(r"\b[a-zA-Z]+\b")


def stated_lengths(instruction: str) -> list[int]:
    """The distinct required lengths an instruction states (ascending), found as `DataETL.filter` finds them
    (evalscope `third_party/longbench_write/tools/data_etl.py`, for arXiv 2410.10210's stage 1): "N字" and
    "N words" with N in digits, and "D百字" / "D千字" / "D万字" with D one Chinese digit (times 100 / 1000 /
    10000). A character before 百/千/万 that is no Chinese digit ("几千字", "5千字") states nothing."""
    found = {int(digits) for digits in DIGITS_CHARACTERS.findall(instruction)}
    found.update(int(digits) for digits in DIGITS_WORDS.findall(instruction))
    for groups in CHINESE_MULTIPLE.findall(instruction):
        for character, multiple in zip(groups, MULTIPLES):
            if character in CHINESE_DIGITS:
                found.add(CHINESE_DIGITS[character] * multiple)
    return sorted(found)


def required_length(instruction: str) -> int | None:
    """The required length x when the instruction states exactly one (stage 1 of arXiv 2410.10210 keeps only
    those rows; evalscope `DataETL.filter`), else None. A stated length of 0 is returned as 0: stage 1 keeps
    it and stage 2 (`DataETL.process_eval_length`) then skips the row."""
    lengths = stated_lengths(instruction)
    return lengths[0] if len(lengths) == 1 else None


def produced_length(text: str) -> int:
    """The length y of an output as evalscope counts it (`count_words` in `third_party/longbench_write/
    utils.py`, used by `DataETL.process_filter` for arXiv 2410.10210's stage 2): the number of CJK characters
    (U+4E00..U+9FFF) plus the number of English words (runs of ASCII letters between word boundaries), summed
    for every text, English or Chinese. Numbers and punctuation count nothing; "don't" and "well-known" count
    two words; letters glued to other word characters ("word2vec", "café", "abc" between Chinese characters)
    count nothing."""
    return len(CJK_CHARACTER.findall(text)) + len(ENGLISH_WORD.findall(text))


def length_score(required: int, produced: int) -> float:
    """The LongBench-Write length score S_l of arXiv 2410.10210 (evalscope `EvalLength.score` in
    `third_party/longbench_write/eval.py`), with x required and y produced:
    100·max(0, 1 − (y/x − 1)/3) if y > x, else 100·max(0, 1 − (x/y − 1)/2).

    y = 0 scores 0.0 (the formula's limit). The official `score` divides by zero there, and
    `DataETL.process_eval_length` skips such rows before scoring, so an empty output is never kept either way.
    A required length below 1 raises ValueError (officially a division by zero too; stage 2 skips x = 0)."""
    if required < 1:
        raise ValueError(f"required length must be at least 1, got {required}")
    if produced < 0:
        raise ValueError(f"produced length must be at least 0, got {produced}")
    if produced == 0:
        return 0.0
    x, y = required, produced
    if y > x:
        return 100 * max(0, 1.0 - (y / x - 1) / 3)
    return 100 * max(0, 1.0 - (x / y - 1) / 2)


def check_params(params: Mapping[str, Any]) -> None:
    """Raise ValueError naming the bad key: `min_score` a number in [0, 100] (the S_l threshold, 80 in arXiv
    2410.10210), `per_prompt` an integer >= 1 (samples kept per prompt, the best first). Other keys are left
    alone (the loop may pass its own)."""
    if "min_score" in params:
        value = params["min_score"]
        if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value <= 100:
            raise ValueError(f"params.min_score: a number from 0 to 100 (the length-score threshold), got {value!r}")
    if "per_prompt" in params:
        value = params["per_prompt"]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"params.per_prompt: an integer of at least 1 (samples kept per prompt), got {value!r}")


def stage_one(records: Sequence[Any]) -> list[tuple[Prompt, int]]:
    """Each record's prompt (as given) with its required length, for the records whose prompt text states
    exactly one length above zero (arXiv 2410.10210 stage 1; zero lengths are skipped as stage 2 skips them).
    A record without a string or message-list "prompt" raises ValueError naming where it came from."""
    kept = []
    for record in records:
        prompt = record.data.get("prompt")
        if not isinstance(prompt, (str, list)):
            raise ValueError(f"{record.where}: a long-output prompt row needs a \"prompt\" (a string or a message "
                             f"list), got {type(prompt).__name__}")
        x = required_length(prompt_text(prompt))
        if x:
            kept.append((prompt, x))
    return kept


def best_samples(required: int, texts: Sequence[str], min_score: float,
                 per_prompt: int) -> list[tuple[str, float, int]]:
    """(text, S_l, y) of at most `per_prompt` samples with S_l >= min_score, the highest S_l first (ties in
    sampling order). Empty outputs (y = 0) are skipped, as `DataETL.process_eval_length` skips them."""
    scored = []
    for text in texts:
        y = produced_length(text)
        if y == 0:
            continue
        score = length_score(required, y)
        if score >= min_score:
            scored.append((text, score, y))
    scored.sort(key=lambda item: -item[1])  # stable: equal scores keep their sampling order
    return scored[:per_prompt]


def long_output_rows(context: Any) -> list[dict]:
    """One round's SFT rows by the curation of arXiv 2410.10210 on the model's own samples.

    Stage 1 keeps the prompt rows (`context.records`, field "prompt") that state exactly one required length x;
    each kept prompt is sampled `context.sampling.k` times (`context.sample`); stage 2 scores each sample's
    length y by S_l (`length_score`) and keeps at most `params["per_prompt"]` samples with S_l >=
    `params["min_score"]`, the best first. Rows: {"prompt" (as given), "completion", "scores": [S_l],
    "required_length": x, "produced_length": y}."""
    params = {**DEFAULTS, **context.params}
    check_params(params)
    kept = stage_one(context.records)
    if not kept:
        return []
    samples = context.sample([prompt for prompt, _ in kept], k=context.sampling.k)
    rows = []
    for (prompt, x), texts in zip(kept, samples):
        for text, score, y in best_samples(x, texts, params["min_score"], params["per_prompt"]):
            rows.append({"prompt": prompt, "completion": text, "scores": [score], "required_length": x,
                         "produced_length": y})
    return rows
