"""BCO end to end on the default model, with the demo's before/after check.

    .venv/bin/python scripts/repro_bco.py

The demo's 198 preference pairs become 396 unpaired rows (the chosen answer labelled desirable, the
rejected one undesirable: thumbs-up/down data, BCO's setting). SmolLM2-135M-Instruct trains on them with
`recipes/bco_smollm2.yaml` (50 steps of 8 rows), then the 64 held-out prompts of `make demo` are answered
greedily by the model before and after, and each answer is checked (format check, on topic, no refusal).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignkit.data.builtin import resolve_source
from alignkit.eval.instructions import evaluate_instructions, format_comparison, load_heldout
from alignkit.models import DEFAULT_MODEL, load
from alignkit.train import load_config, train


def write_unpaired(path: Path) -> int:
    with open(resolve_source("builtin:demo/train.jsonl")) as file:
        pairs = [json.loads(line) for line in file if line.strip()]
    rows = [{"prompt": p["prompt"], "completion": p[field], "label": field == "chosen"}
            for p in pairs for field in ("chosen", "rejected")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="runs/repro_bco")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. max_steps=10")
    args = parser.parse_args()
    data = Path(args.output_dir) / "unpaired.jsonl"
    print(f"{write_unpaired(data)} unpaired rows written to {data}", flush=True)
    config = load_config("recipes/bco_smollm2.yaml", [f"data.train={data}", f"output_dir={args.output_dir}",
                                                      "overwrite=true", *args.overrides])
    result = train(config)
    print(f"trained {result.steps} steps, last loss {result.metrics['loss']:.4f}", flush=True)
    rows = load_heldout()
    reports = []
    for name in (DEFAULT_MODEL, str(result.final_dir)):
        model, tokenizer, _ = load(name)
        model.eval()
        reports.append(evaluate_instructions(model, tokenizer, rows, max_new_tokens=96, batch_size=8))
        print(f"{name}: {reports[-1].passed}/{len(rows)} held-out prompts pass their check", flush=True)
    print(format_comparison(*reports))


if __name__ == "__main__":
    main()
