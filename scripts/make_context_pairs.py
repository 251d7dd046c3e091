"""Write the context-contrast preference set: questions about invented facts, answerable only from a passage.

    python scripts/make_context_pairs.py                         # the shipped files (seed 0)
    python scripts/make_context_pairs.py --seed 1 --out /tmp/ctx --train 200 --heldout 64

Every row is the `context` format of `alignkit.data` (Re-Align's rDPO in text form, arXiv 2502.13146):
`prompt` (one user message asking the question), `context` (a two-sentence passage that states the answer),
`distractor_context` (the passage of another row, of another kind of fact, which does not contain the answer),
`chosen` (the answer, one assistant message), `rejected` (the answer of another row of the same kind: fluent
and wrong), and `answer` (the answer's text, for the held-out exact-match check). The entities are made of
random syllables, so no model knows the answers without the passage. The two files share no entity and the
same seed writes the same files byte for byte.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "src" / "alignkit" / "data" / "context"
SYLLABLES = "ka lo mi ra ven tor sel dra nu quin bar fel zo lin mar tes hal vo rin cas dul pe gan".split()
COLOURS = "red green blue yellow purple orange white black".split()
# (kind, passage, question, answer): {a} is the entity the question names, {b} the answer, {c} filler.
KINDS = (
    ("designer", "The {a} Bridge was designed by the engineer {b}. It crosses the river {c}.",
     "Who designed the {a} Bridge?"),
    ("capital", "{a} is a small island nation whose capital is {b}. Its main export is {c} wool.",
     "What is the capital of {a}?"),
    ("year", "The {a} engine was first built in the year {b}. It was later used in the {c} mills.",
     "In which year was the {a} engine first built?"),
    ("colour", "The flag of {a} is {b} with a single star. It was adopted after the {c} treaty.",
     "What colour is the flag of {a}?"),
    ("chef", "The head chef of the restaurant {a} is {b}. The restaurant stands next to the {c} market.",
     "Who is the head chef of the restaurant {a}?"),
)


def invented(rng: random.Random, used: set[str], parts: int = 3) -> str:
    """A new capitalised name of `parts` random syllables, never drawn before."""
    while True:
        name = "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()
        if name not in used:
            used.add(name)
            return name


def answer_for(kind: str, rng: random.Random, used: set[str]) -> str:
    if kind == "year":
        return str(rng.randrange(1700, 1990))
    if kind == "colour":
        return rng.choice(COLOURS)
    if kind in ("designer", "chef"):
        return f"{invented(rng, used, 2)} {invented(rng, used)}"
    return invented(rng, used)


def facts(count: int, rng: random.Random, used: set[str]) -> list[dict]:
    """`count` facts, the kinds in turn: entity, answer, passage and question."""
    out = []
    for i in range(count):
        kind, passage, question = KINDS[i % len(KINDS)]
        entity, answer = invented(rng, used), answer_for(kind, rng, used)
        out.append({"kind": kind, "answer": answer, "question": question.format(a=entity),
                    "passage": passage.format(a=entity, b=answer, c=invented(rng, used))})
    return out


def rows(count: int, rng: random.Random, used: set[str]) -> list[dict]:
    """Context rows: the distractor is a passage of another kind, the rejected answer one of the same kind."""
    drawn = facts(count, rng, used)
    out = []
    for i, fact in enumerate(drawn):
        same = [f for f in drawn if f["kind"] == fact["kind"] and f["answer"] != fact["answer"]]
        other = [f for f in drawn if f["kind"] != fact["kind"]]
        wrong, distractor = rng.choice(same), rng.choice(other)
        out.append({"prompt": [{"role": "user", "content": fact["question"]}], "context": fact["passage"],
                    "distractor_context": distractor["passage"],
                    "chosen": [{"role": "assistant", "content": f"{fact['answer']}."}],
                    "rejected": [{"role": "assistant", "content": f"{wrong['answer']}."}],
                    "answer": fact["answer"], "kind": fact["kind"]})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=200)
    parser.add_argument("--heldout", type=int, default=64)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    rng, used = random.Random(args.seed), set()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", args.train), ("heldout", args.heldout)):
        lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows(count, rng, used))
        (args.out / f"{name}.jsonl").write_text(lines, encoding="utf-8")
        print(f"wrote {count} rows to {args.out / f'{name}.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
