"""Write the long-output prompt set: everyday writing tasks that each ask for about N words.

    python scripts/make_long_output_prompts.py                 # the shipped file
    python scripts/make_long_output_prompts.py --out /tmp/p.jsonl

Every row is `{"prompt": "<task>. Answer in about N words."}` with N cycling through 20, 30, 40, 60, 80 (short,
for a small model sampling about 128 new tokens), one row per task, so each N has eight tasks. Five more rows
state two lengths or none ("a 50-word note" states none under the official "(\\d+) words" pattern), for the
stage 1 of the long-output curation (`alignkit.loops.long_output`) to drop. No randomness: the same script
writes the same file byte for byte.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LENGTHS = (20, 30, 40, 60, 80)
OUT = Path(__file__).resolve().parent.parent / "src" / "alignkit" / "data" / "long_output" / "prompts.jsonl"

TASKS = (
    "Write a thank-you note to a neighbour who watered your plants",
    "Describe your favourite way to spend a rainy Sunday",
    "Explain to a child why the sky looks blue",
    "Write a short review of a café that serves great soup",
    "Give advice to someone starting their first job",
    "Describe the smell of fresh bread coming out of the oven",
    "Write a message inviting friends to a picnic in the park",
    "Explain how to make a simple cup of tea",
    "Tell a story about a lost umbrella that finds its way home",
    "Write a postcard from a seaside town in autumn",
    "Describe a busy morning at a train station",
    "Explain why regular walks are good for your health",
    "Write an apology to a friend for missing their birthday",
    "Describe a garden in the middle of spring",
    "Give tips for keeping a small kitchen tidy",
    "Write a welcome message for new members of a book club",
    "Explain how a bicycle helps you get around a city",
    "Describe the first snowfall of the winter",
    "Write a note asking your landlord to fix a leaking tap",
    "Tell a story about a cat who learns to open doors",
    "Explain how to plan a weekly shopping list",
    "Describe what you can see from a hilltop at sunset",
    "Write a short speech congratulating a colleague who is retiring",
    "Give advice on learning to cook for the first time",
    "Describe a street market on a Saturday morning",
    "Write a letter to your future self about this year",
    "Explain why people enjoy keeping houseplants",
    "Tell a story about a child's first day at a new school",
    "Write a product description for a warm woollen scarf",
    "Describe the sounds of a forest at night",
    "Give tips for sleeping better on hot summer nights",
    "Write a note to a teacher thanking them for their help",
    "Explain how to look after a goldfish",
    "Describe a family dinner on a holiday evening",
    "Write an advertisement for a weekend pottery class",
    "Tell a story about an old lighthouse keeper",
    "Explain how to save a little money each month",
    "Describe the view from a window on a long train journey",
    "Write a message cheering up a friend who failed an exam",
    "Give advice on packing light for a short trip",
)

# Rows stage 1 must drop: two lengths, or none it recognises.
DROPPED = (
    "Write a title of 10 words and then a summary of 60 words about a day at the beach.",
    "Describe a rainbow in 20 words, then again in 40 words.",
    "Write a short note to a friend about your weekend.",
    "Write a 50-word note thanking a bus driver.",
    "Explain how to boil an egg, as briefly as you can.",
)


def rows() -> list[dict]:
    """The prompt rows: every task with its length (N cycling through LENGTHS), then the rows to drop."""
    asked = [{"prompt": f"{task}. Answer in about {LENGTHS[i % len(LENGTHS)]} words."} for i, task in enumerate(TASKS)]
    return asked + [{"prompt": prompt} for prompt in DROPPED]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="the JSONL file to write (default: the shipped one)")
    out = parser.parse_args().out
    out.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows()), encoding="utf-8")
    print(f"wrote {len(rows())} rows to {out}")


if __name__ == "__main__":
    main()
