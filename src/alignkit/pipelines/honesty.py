"""Honesty training data from a model's own answers (Yang et al. 2023, "Alignment for Honesty", arXiv 2312.07000,
§3.2; the official construction is GAIR-NLP/alignment-for-honesty, train/process_training_data.py, whose strings
are copied here byte for byte).

For every training question the unaligned model answers once greedily and m times (m = 10) at temperature 1,
under the typical QA prompt "Q: {question}\\nA: " (the official training data's `greedy_pred_text` and
`sampling_pred_text`); each answer is labelled as in the evaluation (`alignkit.models.verifiers.answer_label`:
idk first, then a normalised answer match), and k is the number of correct samples. The training row's prompt is
the honest prompt (`HONEST_PROMPT`, the official `prompt_id=1`) and its completion is, by method:

* absolute — the greedy answer if correct; else the first correct sample; else the idk response. The paper
  states the rule as a threshold τ on the expected accuracy k/m; the official code answers whenever the greedy
  answer or any sample is correct, which is τ = 1/m (default τ = 0.1 with m = 10). Here a question is answered
  when its greedy answer is correct (`keep_greedy`, the official first branch) or k/m ≥ τ: both are parameters;
* confidence-num — k = 0: idk; else "I'm only about {10k}% confident ..." (k ≤ 5) or "I'm about {10k}% confident
  ..." (k > 5), a space, and the response (the greedy answer if correct, else the first correct sample);
* confidence-verb — k = 0: idk; else one of five prefixes by k (≤ 2, ≤ 4, ≤ 6, ≤ 8, more), then the response
  with its first letter lower-cased (kept for a multiple-choice letter, as in the official code);
* multisample — m rows per question: each sample if correct, else the idk response.

The official code writes `10 * k` into the confidence-num template, so "10k%" assumes m = 10.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from alignkit.data import DataError, Record, collect, load_records
from alignkit.data.prompts import ChatTemplate, as_completion
from alignkit.decode.sampling import draw_samples
from alignkit.models.loading import Loaded, ensure_loaded
from alignkit.models.verifiers import IDK_RESPONSE, QA_PROMPTS, Question, answer_label, read_questions

METHODS = ("absolute", "confidence-num", "confidence-verb", "multisample")
CONFIDENCE_NUM = (
    "I'm only about {}% confident to answer the question correctly, but based on my understanding and knowledge, "
    "here's what I think is correct.",
    "I'm about {}% confident to answer the question correctly, and based on my understanding and knowledge, "
    "here's what I think is correct.")
CONFIDENCE_VERB = ("I'm really not sure about this, but ", "I'm not completely sure about this, but ",
                   "I don't have strong feelings either way, but ", "I'm fairly confident that ",
                   "I'm absolutely certain that ")
VERB_LIMITS = (2, 4, 6, 8)  # the largest k of each of the first four CONFIDENCE_VERB prefixes
CHOICE_LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class Attempts:
    """One question's greedy answer and samples from the unaligned model, with their labels."""

    question: Question
    greedy: str
    samples: tuple[str, ...]
    greedy_label: str
    sample_labels: tuple[str, ...]

    @property
    def k(self) -> int:
        """The number of correct samples."""
        return sum(label == "correct" for label in self.sample_labels)

    def first_correct_sample(self) -> str | None:
        return next((s for s, label in zip(self.samples, self.sample_labels) if label == "correct"), None)

    def response(self) -> str:
        """The official `confidence_process` response: the greedy answer if correct, else the first correct
        sample, else the greedy answer."""
        if self.greedy_label == "correct":
            return self.greedy
        return self.first_correct_sample() or self.greedy


def attempts_of(questions: Sequence[Question], greedy: Sequence[str], samples: Sequence[Sequence[str]],
                match: str = "words") -> list[Attempts]:
    """The labelled attempts of each question (labels by `answer_label`)."""
    def label(question: Question, text: str) -> str:
        return answer_label(question.question, text, question.answers, match)
    return [Attempts(q, g, tuple(s), label(q, g), tuple(label(q, text) for text in s))
            for q, g, s in zip(questions, greedy, samples, strict=True)]


def absolute_output(attempts: Attempts, tau: float = 0.1, keep_greedy: bool = True) -> str:
    """ABSOLUTE: the greedy answer when it is correct and `keep_greedy`; else, when k/m ≥ τ, the greedy answer
    if correct or the first correct sample; else the idk response. τ ≤ 1/m with keep_greedy is the official code
    exactly; keep_greedy=False makes k/m ≥ τ the only rule."""
    if keep_greedy and attempts.greedy_label == "correct":
        return attempts.greedy
    if attempts.k / len(attempts.samples) >= tau and attempts.k > 0:
        return attempts.response()
    return IDK_RESPONSE


def confidence_num_output(attempts: Attempts) -> str:
    """CONFIDENCE-NUM: idk for k = 0; else the "(only) about {10k}% confident" sentence, a space, the response."""
    k = attempts.k
    if k == 0:
        return IDK_RESPONSE
    return CONFIDENCE_NUM[0 if k <= 5 else 1].format(k * 10) + " " + attempts.response()


def confidence_verb_output(attempts: Attempts) -> str:
    """CONFIDENCE-VERB: idk for k = 0; else the prefix of k's band and the response, its first letter
    lower-cased unless it is a choice letter ("B", or "B)" / "B." at the start)."""
    k = attempts.k
    if k == 0:
        return IDK_RESPONSE
    response = attempts.response()
    choice = response in CHOICE_LETTERS or (response[:1] in CHOICE_LETTERS and response[1:2] in (")", "."))
    if not choice:
        response = response[:1].lower() + response[1:]
    band = next((index for index, limit in enumerate(VERB_LIMITS) if k <= limit), len(VERB_LIMITS))
    return CONFIDENCE_VERB[band] + response


def multisample_outputs(attempts: Attempts) -> list[str]:
    """MULTISAMPLE: one completion per sample, the sample if correct, else the idk response."""
    return [s if label == "correct" else IDK_RESPONSE for s, label in zip(attempts.samples, attempts.sample_labels)]


def outputs_of(attempts: Attempts, method: str, *, tau: float = 0.1, keep_greedy: bool = True) -> list[str]:
    """The training completions of one question under `method` (one, or m for multisample)."""
    if method == "absolute":
        return [absolute_output(attempts, tau, keep_greedy)]
    if method == "confidence-num":
        return [confidence_num_output(attempts)]
    if method == "confidence-verb":
        return [confidence_verb_output(attempts)]
    if method == "multisample":
        return multisample_outputs(attempts)
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def training_rows(attempts: Sequence[Attempts], method: str, *, tau: float = 0.1, keep_greedy: bool = True,
                  prompt: str = "honest", chat: bool = True) -> list[dict]:
    """SFT rows (`prompt`, `completion`) of every question, with the attempts behind them. The prompt is
    QA_PROMPTS[prompt] filled in: one user message when `chat` (training renders it with the chat template, as
    the samples were drawn), the raw text otherwise."""
    rows = []
    for item in attempts:
        text = QA_PROMPTS[prompt].format(item.question.question)
        prompt_value = [{"role": "user", "content": text}] if chat else text
        for output in outputs_of(item, method, tau=tau, keep_greedy=keep_greedy):
            rows.append({"prompt": prompt_value, "completion": as_completion(prompt_value, output),
                         "question": item.question.question, "answers": list(item.question.answers),
                         "difficulty": item.question.difficulty, "kind": item.question.kind, "method": method,
                         "idk": output == IDK_RESPONSE, "k": item.k, "m": len(item.samples),
                         "greedy": item.greedy, "greedy_label": item.greedy_label, "samples": list(item.samples),
                         "sample_labels": list(item.sample_labels)})
    return rows


def draw_attempts(loaded: Loaded, questions: Sequence[Question], *, m: int = 10, temperature: float = 1.0,
                  top_p: float = 1.0, max_new_tokens: int = 32, batch_size: int = 16, seed: int | None = 0,
                  prompt: str = "typical", chat_template: ChatTemplate = True) -> tuple[list[str], list[list[str]]]:
    """(greedy answer, m samples) of each question under QA_PROMPTS[prompt]."""
    prompts = [QA_PROMPTS[prompt].format(q.question) for q in questions]
    common = dict(max_new_tokens=max_new_tokens, batch_size=batch_size, chat_template=chat_template)
    greedy, _, _ = draw_samples(loaded.model, loaded.tokenizer, prompts, n=1, temperature=0, **common)
    samples, _, _ = draw_samples(loaded.model, loaded.tokenizer, prompts, n=m, temperature=temperature, top_p=top_p,
                                 seed=seed, **common)
    return [row[0] for row in greedy], samples


def load_attempts(source: str | os.PathLike, match: str = "words") -> list[Attempts]:
    """The attempts stored in an earlier output of `honesty_rows` (any method; a question's repeated rows read
    once), labels recomputed with `match`; a row without `greedy` or `samples` is a DataError."""
    from alignkit.data.rows import RowProblem

    records = load_records(source)
    if not records:
        raise DataError(f"{source}: no rows; --attempts is the output of an earlier `alignkit data honesty`")
    seen: set[str] = set()
    firsts: list[Record] = []
    for record in records:
        if record.data.get("question") not in seen:
            seen.add(record.data.get("question"))
            firsts.append(record)

    def read(record: Record) -> tuple[str, list[str]]:
        greedy, samples = record.data.get("greedy"), record.data.get("samples")
        if not isinstance(greedy, str):
            raise RowProblem("greedy", f"expected the greedy answer text, got {greedy!r}")
        if not isinstance(samples, list) or not samples or not all(isinstance(s, str) for s in samples):
            raise RowProblem("samples", "expected a non-empty list of sampled answer texts")
        return greedy, samples
    texts = collect(firsts, read)
    questions = read_questions(firsts)
    return attempts_of(questions, [g for g, _ in texts], [s for _, s in texts], match)


def honesty_rows(questions: Sequence[Question], model: str | os.PathLike | Loaded, *, method: str = "absolute",
                 m: int = 10, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 32,
                 batch_size: int = 16, seed: int | None = 0, sample_prompt: str = "typical", prompt: str = "honest",
                 tau: float = 0.1, keep_greedy: bool = True, match: str = "words",
                 chat_template: ChatTemplate = True) -> tuple[list[dict], list[Attempts]]:
    """The training rows of `method` built from the model's own attempts at `questions` (module docstring),
    and the attempts. Arguments are checked before the model is loaded."""
    check_settings(method, m=m, tau=tau, prompts=(sample_prompt, prompt))
    loaded = ensure_loaded(model)
    greedy, samples = draw_attempts(loaded, questions, m=m, temperature=temperature, top_p=top_p,
                                    max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                    prompt=sample_prompt, chat_template=chat_template)
    attempts = attempts_of(questions, greedy, samples, match)
    rows = training_rows(attempts, method, tau=tau, keep_greedy=keep_greedy, prompt=prompt,
                         chat=chat_template is not False)
    return rows, attempts


def check_settings(method: str, *, m: int = 10, tau: float = 0.1, prompts: Sequence[str] = ()) -> None:
    """ValueError for an unknown method or prompt, m < 1, or τ outside (0, 1]."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if m < 1:
        raise ValueError(f"m (samples per question) must be at least 1, got {m}")
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    for name in prompts:
        if name not in QA_PROMPTS:
            raise ValueError(f"unknown prompt {name!r}; choose one of {', '.join(QA_PROMPTS)}")


def summary_of(attempts: Sequence[Attempts], rows: Sequence[dict]) -> dict:
    """Counts for the CLI line and docs: questions, rows, idk rows, greedy correct, and the k histogram."""
    histogram = [0] * (max((len(a.samples) for a in attempts), default=0) + 1)
    for item in attempts:
        histogram[item.k] += 1
    return {"questions": len(attempts), "rows": len(rows), "idk_rows": sum(row["idk"] for row in rows),
            "greedy_correct": sum(a.greedy_label == "correct" for a in attempts), "k_histogram": histogram}
