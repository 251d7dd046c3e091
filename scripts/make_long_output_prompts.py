"""Write the long-output prompt sets: everyday writing tasks that each ask for about N words.

    python scripts/make_long_output_prompts.py                 # the shipped prompts.jsonl and heldout.jsonl
    python scripts/make_long_output_prompts.py --out /tmp/long_output

Every row is `{"prompt": "<task>. Answer in about N words."}` with N cycling through 20, 30, 40, 60, 80 (short,
for a small model sampling about 128 new tokens), one row per task, so each N has eight tasks. Five more rows
state two lengths or none ("a 50-word note" states none under the official "(\\d+) words" pattern), for the
stage 1 of the long-output curation (`alignkit.loops.long_output`) to drop. `heldout.jsonl` holds 20 other
tasks in the same form (no row to drop), for the loop's `length` evaluation. No randomness: the same script
writes the same files byte for byte.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LENGTHS = (20, 30, 40, 60, 80)
OUT = Path(__file__).resolve().parent.parent / "src" / "alignkit" / "data" / "long_output"

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

HELDOUT_TASKS = (
    "Write a note welcoming a new neighbour to the street",
    "Describe a walk along a river in the early morning",
    "Explain how to water a vegetable garden in summer",
    "Write a short review of a bakery that opened nearby",
    "Give advice to someone moving to a new city",
    "Describe the kitchen of a grandparent's house",
    "Write a message asking a friend to help you move house",
    "Explain how to fold a shirt neatly",
    "Tell a story about a kite that flies away on a windy day",
    "Write a postcard from a mountain village in winter",
    "Describe a quiet library on a weekday afternoon",
    "Explain why drinking water during the day matters",
    "Write a thank-you note to a doctor who helped your family",
    "Describe a beach at the end of summer",
    "Give tips for studying for an exam at home",
    "Write a welcome message for a new sports club member",
    "Explain how to wash dishes without wasting water",
    "Describe a thunderstorm seen from a kitchen window",
    "Write a note asking a neighbour to keep their music down",
    "Tell a story about a dog who waits at the bus stop",
)

# Rows stage 1 must drop: two lengths, or none it recognises.
DROPPED = (
    "Write a title of 10 words and then a summary of 60 words about a day at the beach.",
    "Describe a rainbow in 20 words, then again in 40 words.",
    "Write a short note to a friend about your weekend.",
    "Write a 50-word note thanking a bus driver.",
    "Explain how to boil an egg, as briefly as you can.",
)


def asked(tasks: tuple[str, ...]) -> list[dict]:
    """Every task with its length, N cycling through LENGTHS."""
    return [{"prompt": f"{task}. Answer in about {LENGTHS[i % len(LENGTHS)]} words."} for i, task in enumerate(tasks)]


def files() -> dict[str, list[dict]]:
    """File name -> rows: the training prompts (the tasks, then the rows to drop) and the held-out prompts."""
    return {"prompts.jsonl": asked(TASKS) + [{"prompt": prompt} for prompt in DROPPED],
            "heldout.jsonl": asked(HELDOUT_TASKS)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT, help="the folder to write (default: the shipped one)")
    out = parser.parse_args().out
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in files().items():
        (out / name).write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        print(f"wrote {len(rows)} rows to {out / name}")


if __name__ == "__main__":
    main()
