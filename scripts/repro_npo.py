"""NPO against gradient ascent on the default model: does unlearning a forget set keep the model usable?

    .venv/bin/python scripts/repro_npo.py --steps 30 --eval-every 5

The NPO paper's claim (Zhang et al. 2024, §4): gradient ascent on a forget set drives the model to
collapse quickly, while NPO slows down as the forget log-likelihood falls, so the rest of the model
survives. Here the forget set is 16 demo prompts with their chosen answers (`negative` rows); the retain
set is 32 other demo prompts with their chosen answers. Both methods train SmolLM2-135M-Instruct with the
same learning rate, batch and steps; every `eval-every` steps the script prints the token-mean NLL of
the forget set (should rise for both) and of the retain set (lower is better: the model stays usable).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from alignkit.data import collate_rows, load_examples, tokenize_examples
from alignkit.data.builtin import resolve_source
from alignkit.models.logprobs import CompletionScorer, grouped_logps
from alignkit.train import Trainer, load_config


def demo_rows() -> list[dict]:
    with open(resolve_source("builtin:demo/train.jsonl")) as file:
        return [json.loads(line) for line in file if line.strip()]


@torch.no_grad()
def token_mean_nll(model, examples, pad_token_id: int) -> float:
    """Σ NLL / Σ tokens over the examples' completions."""
    model.eval()
    total, tokens = 0.0, 0.0
    for start in range(0, len(examples), 8):
        scores, = grouped_logps(CompletionScorer(model), collate_rows(examples[start:start + 8], pad_token_id), 1)
        total, tokens = total - scores.sum.sum().item(), tokens + scores.count.sum().item()
    model.train()
    return total / tokens


def run(objective: str, forget_file: Path, retain, args, out: Path) -> list[tuple[int, float, float]]:
    config = load_config(None, [
        f"data.train={forget_file}", f"objective.name={objective}", f"batch_size={args.batch_size}",
        f"max_steps={args.steps}", f"optim.lr={args.lr}", "optim.schedule=constant", "progress=false",
        "report_to=none", f"output_dir={out / objective}", "overwrite=true", "data.max_length=256",
        "data.max_prompt_length=128", *args.override])
    training = Trainer.prepare(config)
    pad = training.tokenizer.pad_token_id
    forget = training.source.examples
    curve = [(0, token_mean_nll(training.model, forget, pad), token_mean_nll(training.model, retain, pad))]
    while training.state.step < args.steps:
        training.step()
        if training.state.step % args.eval_every == 0:
            curve.append((training.state.step, token_mean_nll(training.model, forget, pad),
                          token_mean_nll(training.model, retain, pad)))
            print(f"{objective} step {curve[-1][0]}: forget NLL {curve[-1][1]:.3f}, retain NLL {curve[-1][2]:.3f}",
                  flush=True)
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument("--override", nargs="*", default=[], help="extra config overrides for both runs")
    args = parser.parse_args()
    rows = demo_rows()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        forget_file = out / "forget.jsonl"
        forget_file.write_text("".join(json.dumps({"prompt": r["prompt"], "rejected": r["chosen"]}) + "\n"
                                       for r in rows[:16]))
        retain_rows = [{"prompt": r["prompt"], "completion": r["chosen"]} for r in rows[16:48]]
        from transformers import AutoTokenizer

        from alignkit.models import DEFAULT_MODEL, resolve

        tokenizer = AutoTokenizer.from_pretrained(resolve(DEFAULT_MODEL))
        retain, _ = tokenize_examples(load_examples(retain_rows, "sft"), tokenizer)
        curves = {name: run(name, forget_file, retain, args, out) for name in ("gradient_ascent", "npo")}
    print("\n| step | GA forget NLL | GA retain NLL | NPO forget NLL | NPO retain NLL |\n|---:|---:|---:|---:|---:|")
    for (step, ga_f, ga_r), (_, npo_f, npo_r) in zip(curves["gradient_ascent"], curves["npo"]):
        print(f"| {step} | {ga_f:.3f} | {ga_r:.3f} | {npo_f:.3f} | {npo_r:.3f} |")


if __name__ == "__main__":
    main()
