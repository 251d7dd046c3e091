"""Time per generated token of each decoding method against plain `generate` of the same model.

    .venv/bin/python bench/decoding.py --aligned runs/demo/final --out runs/bench_decoding.json

The default model (SmolLM2-135M-Instruct, fp32) on the first `--prompts` held-out demo prompts. Each method
is compared with plain `model.generate` on the same prompts with the same batch size and the same kind of
decoding (greedy or sampling); the ratio is (method seconds / method tokens) / (plain seconds / plain tokens).
EOS is moved to an unused special token while timing, so every run writes exactly `--max-new-tokens` tokens
per prompt and no method looks faster or slower because its answers end sooner (URIAL still stops at its
stop strings).
Models: the aligned guide / ARM is the DPO demo model (`make demo`), the same size as the base; the
"4-layer" rows use the base's first `--small-arm-layers` layers (random quality, realistic cost) to show the
cost of a guide smaller than the base, as in GenARM's weak-to-strong and Nudging's small-guide settings.
Each method's baseline is timed right before it, after one warm-up run. Forward passes count rows
through any model's forward; reward calls count completions scored. Targets: GenARM and nudging <= 1.3x
plain; best-of-N batched >= N/2 times faster than N sequential runs.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from alignkit.data.prompts import render_prompt
from alignkit.decode import (
    best_of_n,
    deal,
    genarm,
    nudging,
    steering,
    steering_directions,
    transfer_q,
    urial,
)
from alignkit.decode.core import (
    ForwardCounter,
    encode_left_padded,
    generated_length,
    seeded,
)
from alignkit.decode.nudging import BASE_FORMAT
from alignkit.eval.instructions import load_heldout
from alignkit.models import load
from alignkit.models.rewards import MaxWords, RequiredWords, WeightedSum


def plain(model, tokenizer, texts: list[str], *, batch_size: int, max_new_tokens: int, sample: bool) -> dict:
    """Seconds, generated tokens and forward passes of plain `generate` over `texts`."""
    tokens = rows = 0
    start = time.perf_counter()
    with ForwardCounter(model) as counter, torch.inference_mode(), seeded(0, model):
        for i in range(0, len(texts), batch_size):
            encoded = encode_left_padded(tokenizer, texts[i:i + batch_size], model.device)
            settings = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0) if sample else \
                dict(do_sample=False, temperature=None, top_p=None, top_k=None)
            out = model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 **settings)
            new = out[:, encoded["input_ids"].shape[1]:]
            tokens += sum(generated_length(row, tokenizer) for row in new)
            rows += len(new)
    return {"seconds": time.perf_counter() - start, "tokens": tokens, "forward_passes": counter.rows}


def measured(run) -> dict:
    """Seconds, generated tokens and summed diagnostics of a decoding method's completions."""
    start = time.perf_counter()
    completions = run()
    seconds = time.perf_counter() - start
    totals: dict[str, float] = {}
    for c in completions:
        for key in ("forward_passes", "reward_calls"):
            totals[key] = totals.get(key, 0.0) + float(c.diagnostics.get(key, 0.0))
    extra = {k: sum(c.diagnostics[k] for c in completions) / len(completions)
             for k in ("nudged_fraction",) if k in completions[0].diagnostics}
    return {"seconds": seconds, "tokens": sum(c.tokens for c in completions), **totals, **extra}


def per_token(result: dict) -> float:
    return result["seconds"] / max(result["tokens"], 1)


@contextmanager
def unreachable_eos(pairs: list, unused_token: str = "<empty_output>") -> Iterator[None]:
    """While timing, EOS is `unused_token` for every (model, tokenizer) pair, so no answer ends early."""
    saved = [(tokenizer.eos_token, model.generation_config.eos_token_id) for model, tokenizer in pairs]
    for model, tokenizer in pairs:
        tokenizer.eos_token = unused_token
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    try:
        yield
    finally:
        for (model, tokenizer), (token, eos_id) in zip(pairs, saved):
            tokenizer.eos_token = token
            model.generation_config.eos_token_id = eos_id


def small_arm(model, layers: int):
    """A copy of `model` keeping its first `layers` decoder layers (same tokenizer and head)."""
    small = copy.deepcopy(model)
    small.model.layers = small.model.layers[:layers]
    small.config.num_hidden_layers = layers
    return small


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--aligned", default="runs/demo/final")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--n", type=int, default=4, help="best-of-N's N")
    parser.add_argument("--search-prompts", type=int, default=2, help="prompts for DeAL and Transfer Q*")
    parser.add_argument("--search-tokens", type=int, default=16, help="new tokens for DeAL and Transfer Q*")
    parser.add_argument("--small-arm-layers", type=int, default=4)
    parser.add_argument("--out", default="runs/bench_decoding.json")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model, tokenizer, _ = load(args.model)
    aligned, aligned_tokenizer, _ = load(args.aligned)
    model.eval(), aligned.eval()
    prompts = [row["prompt"] for row in load_heldout()[:args.prompts]]
    chat = [render_prompt(tokenizer, p) for p in prompts]
    raw = [render_prompt(tokenizer, p, chat_template=False) for p in prompts]
    reward = WeightedSum([MaxWords(40), RequiredWords(["you"])], [1.0, 1.0])
    with unreachable_eos([(model, tokenizer), (aligned, aligned_tokenizer)]):
        results = run_all(args, model, tokenizer, aligned, aligned_tokenizer, prompts, chat, raw, reward)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


def run_all(args, model, tokenizer, aligned, aligned_tokenizer, prompts, chat, raw, reward) -> dict:
    """Every baseline and method, timed; prints the markdown table and returns the numbers."""
    b, t = args.batch_size, args.max_new_tokens
    baselines = {
        "greedy": lambda: plain(model, tokenizer, chat, batch_size=b, max_new_tokens=t, sample=False),
        "sample": lambda: plain(model, tokenizer, chat, batch_size=b, max_new_tokens=t, sample=True),
        "raw greedy": lambda: plain(model, tokenizer, raw, batch_size=b, max_new_tokens=t, sample=False),
        "base-format greedy, batch 1": lambda: plain(model, tokenizer, [BASE_FORMAT.format(prompt=r) for r in raw],
                                                     batch_size=1, max_new_tokens=t, sample=False),
        "greedy, batch 1": lambda: plain(model, tokenizer, chat[:args.search_prompts], batch_size=1,
                                         max_new_tokens=args.search_tokens, sample=False),
        "sample, batch 1": lambda: plain(model, tokenizer, chat, batch_size=1, max_new_tokens=t, sample=True),
    }
    baselines["greedy"]()  # warm-up: the first generate of a process is slower
    pairs = [(chat[i] + " Sure.", chat[i] + " No.") for i in range(len(chat))]
    directions = steering_directions(model, tokenizer, [p for p, _ in pairs], [n for _, n in pairs])
    arm_small = small_arm(model, args.small_arm_layers)
    search = chat[:args.search_prompts]
    runs = {
        "genarm (ARM = demo model)": ("sample", lambda: genarm(model, tokenizer, chat, arm=aligned, max_new_tokens=t,
                                                                batch_size=b)),
        f"genarm ({args.small_arm_layers}-layer ARM)": ("sample", lambda: genarm(model, tokenizer, chat, arm=arm_small,
                                                                                  max_new_tokens=t, batch_size=b)),
        "nudging (gamma 0.4, guide = demo model)": ("base-format greedy, batch 1", lambda: nudging(
            model, tokenizer, prompts, guide=aligned, guide_tokenizer=aligned_tokenizer, max_new_tokens=t)),
        "nudging (gamma 0.4, guide = demo model, notebook's draft-and-verify)": ("base-format greedy, batch 1", lambda: nudging(
            model, tokenizer, prompts, guide=aligned, guide_tokenizer=aligned_tokenizer, max_new_tokens=t,
            lazy_draft=False)),
        f"nudging (gamma 0.4, {args.small_arm_layers}-layer guide)": ("base-format greedy, batch 1", lambda: nudging(
            model, tokenizer, prompts, guide=arm_small, max_new_tokens=t)),
        "urial (preamble prefilled once)": ("raw greedy", lambda: urial(model, tokenizer, raw, max_new_tokens=t,
                                                                        batch_size=b, repetition_penalty=1.0)),
        "urial (whole prompt every batch)": ("raw greedy", lambda: urial(
            model, tokenizer, raw, max_new_tokens=t, batch_size=b, repetition_penalty=1.0, use_prefix_cache=False)),
        "steering (coefficient 4)": ("greedy", lambda: steering(model, tokenizer, chat, directions=directions,
                                                                coefficient=4.0, max_new_tokens=t, batch_size=b)),
        f"best_of_n (N={args.n}, batched)": ("sample, batch 1", lambda: best_of_n(
            model, tokenizer, chat, reward=reward, n=args.n, max_new_tokens=t, batch_size=1)),
        f"best_of_n (N={args.n}, N sequential runs)": ("sample, batch 1", lambda: best_of_n(
            model, tokenizer, chat, reward=reward, n=args.n, max_new_tokens=t, batch_size=1, batched=False)),
        f"best_of_n (N={args.n}, batched, {b} prompts per batch)": ("sample", lambda: best_of_n(
            model, tokenizer, chat, reward=reward, n=args.n, max_new_tokens=t, batch_size=b)),
        f"best_of_n (N={args.n}, N sequential runs, {b} prompts per batch)": ("sample", lambda: best_of_n(
            model, tokenizer, chat, reward=reward, n=args.n, max_new_tokens=t, batch_size=b, batched=False)),
        "deal (defaults)": ("greedy, batch 1", lambda: deal(model, tokenizer, search, reward=reward,
                                                      max_new_tokens=args.search_tokens)),
        "transfer_q (defaults)": ("greedy, batch 1", lambda: transfer_q(model, tokenizer, search, reward=reward,
                                                                  max_new_tokens=args.search_tokens)),
    }
    results: dict = {"methods": {}}
    print("| method | baseline | s/token | plain s/token | ratio | forward passes/token | reward calls/token |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, (baseline, run) in runs.items():
        reference = baselines[baseline]()  # timed right before the method, on the same warm process
        result = measured(run)
        result["ratio"] = per_token(result) / per_token(reference)
        results["methods"][name] = {**result, "baseline": baseline, "baseline_result": reference}
        tokens = max(result["tokens"], 1)
        print(f"| {name} | {baseline} | {per_token(result):.4f} | {per_token(reference):.4f} | "
              f"{result['ratio']:.2f} | {result.get('forward_passes', 0) / tokens:.1f} | "
              f"{result.get('reward_calls', 0) / tokens:.2f} |", flush=True)
    for suffix in ("", f", {b} prompts per batch"):
        batched = results["methods"][f"best_of_n (N={args.n}, batched{suffix})"]["seconds"]
        sequential = results["methods"][f"best_of_n (N={args.n}, N sequential runs{suffix})"]["seconds"]
        results[f"best_of_n_speedup{suffix}"] = sequential / batched
        print(f"best-of-{args.n}{suffix or ', one prompt per batch'}: batched {batched:.1f} s, sequential "
              f"{sequential:.1f} s, speedup {sequential / batched:.2f}x (target >= {args.n / 2:.1f}x)")
    return results


if __name__ == "__main__":
    main()
