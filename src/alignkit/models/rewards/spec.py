"""Rewards from a short text spec, as `alignkit score --reward SPEC` takes them.

A spec is `KIND:ARGUMENT`; the kind is everything before the first ":".

=================================  ==========================================================================
spec                               reward
=================================  ==========================================================================
`aspects:MODEL`                    `AspectJudge` over `alignkit.models.load(MODEL)`: JUST-EVAL's five 1..5
                                   scores (helpfulness, clarity, factuality, depth, engagement), each the
                                   expected score, after a greedy rationale of up to 48 tokens
`aspects:MODEL,rationale=N`        the same with rationales of up to N tokens (N = 0: empty reasons, no
                                   generation, about 5x faster; scores read before any reasoning)
`safety:MODEL[,rationale=N]`       `SafetyJudge`: JUST-EVAL's scalar 1..5 safety score (5 = safe)
`classifier:PATH`                  `SequenceClassifierReward(PATH)`: any Hugging Face sequence-classification
                                   folder (or hub id), e.g. the `final/` folder of an `rm_pairwise` run;
                                   num_labels = k > 1 gives k attributes
`judge:MODEL`                      `LLMJudge` over `alignkit.models.load(MODEL)` with the default pointwise
                                   template and the 1..10 scale (the expected score)
`verifier:max_words=N`             `MaxWords(N)`: 1 iff the completion has 1..N words
`verifier:min_words=N`             `MinWords(N)`
`verifier:max_chars=N`             `MaxChars(N)`
`verifier:required_words=a,b`      `RequiredWords(["a", "b"])`: every word present (whole words, any case)
`verifier:forbidden_words=a,b`     `ForbiddenWords(["a", "b"])`
`verifier:json`                    `JsonValid()`: the completion parses as JSON
`verifier:json_schema=FILE`        `JsonSchema(schema read from FILE)`
`verifier:refusal`                 `Refusal()`: 1 iff the completion refuses or apologises
`verifier:regex=PATTERN`           `RegexMatch(PATTERN)`: 1 iff `re.search` finds PATTERN (the pattern is
                                   everything after the first "=", so it may hold ":", "=" and ",")
`verifier:checks=FILE`             `InstructionChecks`: 1 iff the completion passes its prompt's `check` in
                                   FILE (rows {prompt, check}, e.g. the demo's held-out set)
`verifier:helpful=FILE`            `HelpfulChecks`: 1 iff it passes its check and is substantive (on the
                                   row's topic, or the prompt's first sentence)
`verifier:words`                   `WordCount()`: the number of words (a count, e.g. DPA's verbosity)
=================================  ==========================================================================

Every reward comes wrapped in `CachedReward` (a repeated (prompt, completion) pair is scored once). A bad
spec raises `ValueError` listing the valid kinds.
"""

from __future__ import annotations

import json

from alignkit.models.rewards.base import CachedReward, Reward
from alignkit.models.rewards.verifiers import (ForbiddenWords, HelpfulChecks, InstructionChecks, JsonSchema, JsonValid,
                                               MaxChars, MaxWords, MinWords, Refusal, RegexMatch, RequiredWords,
                                               WordCount)

KINDS = ("classifier:PATH", "judge:MODEL", "verifier:NAME[=VALUE]", "aspects:MODEL[,rationale=N]",
         "safety:MODEL[,rationale=N]")
VERIFIERS = ("max_words=N", "min_words=N", "max_chars=N", "required_words=a,b", "forbidden_words=a,b", "json",
             "json_schema=FILE", "refusal", "regex=PATTERN", "checks=FILE", "helpful=FILE", "words")


def reward_from_spec(spec: str, *, batch_size: int = 8, device: str | None = None,
                     max_length: int | None = None) -> Reward:
    """The `CachedReward` a spec names (see the module docstring); `batch_size` and `device` apply to model
    rewards (classifier, judge), `max_length` (truncation in tokens) to a classifier."""
    kind, sep, argument = str(spec).partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ("aspects", "classifier", "judge", "safety", "verifier"):
        raise ValueError(f"unknown reward spec {spec!r}; valid kinds: {', '.join(KINDS)} "
                         f"(verifiers: {', '.join(VERIFIERS)})")
    if kind == "verifier":
        return CachedReward(verifier_from_spec(argument))
    if not argument.strip():
        raise ValueError(f"reward spec {spec!r}: {kind}: needs a {'PATH' if kind == 'classifier' else 'MODEL'}")
    if kind == "classifier":
        return CachedReward(_classifier(argument, batch_size, device, max_length))
    if kind in ("aspects", "safety"):
        name, rationale = just_eval_argument(kind, argument)
        return CachedReward(_just_eval(kind, name, rationale, batch_size, device))
    return CachedReward(_judge(argument, batch_size, device))


def just_eval_argument(kind: str, argument: str) -> tuple[str, int | None]:
    """(MODEL, N or None) of the ARGUMENT `MODEL[,rationale=N]` of an `aspects:` or `safety:` spec."""
    name, *options = [part.strip() for part in argument.split(",")]
    usage = f"{kind}:MODEL or {kind}:MODEL,rationale=N"
    if not name:
        raise ValueError(f"'{kind}:{argument}' needs a MODEL: {usage}")
    if len(options) > 1:
        raise ValueError(f"'{kind}:{argument}': at most one option, rationale=N ({usage})")
    if not options:
        return name, None
    key, _, value = options[0].partition("=")
    if key.strip() != "rationale":
        raise ValueError(f"'{kind}:{argument}': unknown option {options[0]!r}; the one option is rationale=N")
    try:
        tokens = int(value)
    except ValueError:
        raise ValueError(f"'{kind}:{argument}': rationale=N needs an integer N >= 0, got {value!r}") from None
    if tokens < 0:
        raise ValueError(f"'{kind}:{argument}': rationale=N needs an integer N >= 0, got {tokens}")
    return name, tokens


def verifier_from_spec(argument: str) -> Reward:
    """The verifier of `verifier:ARGUMENT` (ARGUMENT is NAME or NAME=VALUE)."""
    name, has_value, value = argument.partition("=")
    name = name.strip().lower()
    takes_value = {v.split("=")[0]: "=" in v for v in VERIFIERS}
    if name not in takes_value:
        raise ValueError(f"unknown verifier {name!r} in 'verifier:{argument}'; valid verifiers: "
                         + ", ".join(f"verifier:{v}" for v in VERIFIERS))
    if takes_value[name] and not (has_value and value):
        usage = next(v for v in VERIFIERS if v.split("=")[0] == name)
        raise ValueError(f"'verifier:{argument}' needs a value: verifier:{usage}")
    if not takes_value[name] and has_value:
        raise ValueError(f"'verifier:{argument}': {name} takes no value (write verifier:{name})")
    if name in ("max_words", "min_words", "max_chars"):
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"'verifier:{argument}': expected an integer, got {value!r}") from None
        if n < 0:
            raise ValueError(f"'verifier:{argument}': expected a non-negative integer, got {n}")
        return {"max_words": MaxWords, "min_words": MinWords, "max_chars": MaxChars}[name](n)
    if name in ("required_words", "forbidden_words"):
        words = [w.strip() for w in value.split(",") if w.strip()]
        if not words:
            raise ValueError(f"'verifier:{argument}': expected comma-separated words")
        return RequiredWords(words) if name == "required_words" else ForbiddenWords(words)
    if name == "json":
        return JsonValid()
    if name == "json_schema":
        try:
            with open(value, encoding="utf-8") as handle:
                schema = json.load(handle)
        except (OSError, ValueError) as err:
            raise ValueError(f"'verifier:{argument}': cannot read a JSON schema from {value!r}: {err}") from None
        return JsonSchema(schema)
    if name == "refusal":
        return Refusal()
    if name == "words":
        return WordCount()
    if name in ("checks", "helpful"):
        from alignkit.data import load_records

        rows = (record.data for record in load_records(value))
        return InstructionChecks(rows) if name == "checks" else HelpfulChecks(rows)
    import re

    try:
        return RegexMatch(value)
    except re.error as err:
        raise ValueError(f"'verifier:{argument}': invalid regular expression: {err}") from None


def _classifier(path: str, batch_size: int, device: str | None, max_length: int | None) -> Reward:
    from alignkit.models.rewards.classifier import SequenceClassifierReward

    try:
        return SequenceClassifierReward(path, batch_size=batch_size, device=device, max_length=max_length)
    except OSError as err:
        raise ValueError(f"classifier:{path}: cannot load a sequence-classification model: {err}") from None


def _judge_model(name: str, device: str | None):
    """(model, tokenizer) of a judge: `alignkit.models.load(name)`, moved to `device` if given."""
    from alignkit.models import load

    model, tokenizer, *_ = load(name)
    if device is not None:
        model.to(device)
    return model, tokenizer


def _judge(name: str, batch_size: int, device: str | None) -> Reward:
    from alignkit.models.rewards.judge import LLMJudge

    return LLMJudge(*_judge_model(name, device), batch_size=batch_size)


def _just_eval(kind: str, name: str, rationale: int | None, batch_size: int, device: str | None) -> Reward:
    from alignkit.models.rewards.aspects import DEFAULT_RATIONALE_TOKENS, AspectJudge, SafetyJudge

    judge = AspectJudge if kind == "aspects" else SafetyJudge
    tokens = DEFAULT_RATIONALE_TOKENS if rationale is None else rationale
    return judge(*_judge_model(name, device), rationale_tokens=tokens, batch_size=batch_size, judge_model=name)
