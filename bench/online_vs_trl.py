"""Side by side: TRL's GRPOTrainer and alignkit's `grpo` at equal settings, and alignkit's sampler against
plain `model.generate`.

    .venv/bin/python bench/online_vs_trl.py --warmup 1 --steps 5

Each trainer runs in its own process (this file, `--worker NAME`), one after the other, on the default model
(SmolLM2-135M-Instruct, fp32) with the same settings: the first prompts of the shipped demo data (4 a step),
k = 4 samples each at temperature 1, at most 64 new tokens, learning rate 1e-6, β 0.04 (k3 KL in the loss, so
both score a reference every step), ε 0.2, the "dapo" normalisation, one update per generation, the same reward
function (each prompt's instruction check, `alignkit.models.rewards.InstructionChecks`). Per measured step:
seconds sampling, scoring and the rest (reference and policy forwards, backward, optimizer), tokens sampled per
second, and each process's peak resident memory (ru_maxrss). TRL's split is measured by wrapping its model's
`generate` and the reward function; alignkit's comes from its own step metrics.

The sampler part draws 4 samples for each of 8 and of 16 prompts (32 and 64 rows), 64 new tokens, once with
`alignkit.models.sampling.sample_sequences` (one prefill per prompt, finished rows leave the batch) and once with
the same function's `engine="generate"` (`model.generate(num_return_sequences=4)`), after one warm-up call each,
and reports generated tokens (up to EOS) per second.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = "builtin:demo/train.jsonl"
K, MAX_NEW, LR, BETA, PROMPTS_PER_STEP = 4, 64, 1e-6, 0.04, 4


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rows(count: int) -> list[dict]:
    from alignkit.data import load_records

    return [record.data for record in load_records(DATA)][:count]


def checks():
    from alignkit.models.rewards.verifiers import InstructionChecks

    return InstructionChecks(rows(10_000))


def alignkit_worker(model: str, steps: int, folder: Path) -> list[dict]:
    from alignkit.train.config import load_config
    from alignkit.train.loop import Trainer

    data = folder / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": row["prompt"]}) + "\n" for row in rows(PROMPTS_PER_STEP * steps)))
    config = load_config(None, [f"model.name_or_path={model}", f"data.train={data}", "objective.name=grpo", f"objective.params.beta={BETA}",
                                f"batch_size={PROMPTS_PER_STEP}", f"online.k={K}", f"online.max_new_tokens={MAX_NEW}",
                                f"optim.lr={LR}", "optim.schedule=constant", f"max_steps={steps}",
                                f"reward.specs=[verifier:checks={DATA}]", f"output_dir={folder / 'run'}",
                                "save_final_only=true", "report_to=none", "progress=false"])
    trainer = Trainer.prepare(config)
    results = []
    try:
        for _ in range(steps):
            started = time.perf_counter()
            metrics = trainer.step()
            total = time.perf_counter() - started
            results.append({"step_s": total, "sample_s": metrics["sample_s"], "reward_s": metrics["reward_s"],
                            "tokens": metrics["sampled_tokens"]})
    finally:
        trainer.close()
    return results


def trl_worker(model: str, steps: int, folder: Path) -> list[dict]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from alignkit.models import load

    loaded = load(model)
    reward = checks()
    clock = {"sample": 0.0, "reward": 0.0, "tokens": 0}

    def check_reward(prompts, completions, **_):
        started = time.perf_counter()
        values = reward(prompts, completions).tolist()
        clock["reward"] += time.perf_counter() - started
        return values

    generate = loaded.model.generate

    def timed_generate(*args, **kwargs):
        started = time.perf_counter()
        output = generate(*args, **kwargs)
        clock["sample"] += time.perf_counter() - started
        width = (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[1]
        new = output[:, width:]
        eos = loaded.tokenizer.eos_token_id
        clock["tokens"] += int(sum(int((row == eos).nonzero()[0, 0]) + 1 if (row == eos).any() else len(row)
                                   for row in new))
        return output
    loaded.model.generate = timed_generate
    dataset = Dataset.from_list([{"prompt": row["prompt"]} for row in rows(PROMPTS_PER_STEP * steps)])
    args = GRPOConfig(output_dir=str(folder / "trl"), per_device_train_batch_size=PROMPTS_PER_STEP * K,
                      num_generations=K, max_completion_length=MAX_NEW, learning_rate=LR, beta=BETA, epsilon=0.2,
                      loss_type="dapo", temperature=1.0, max_steps=steps, lr_scheduler_type="constant",
                      use_cpu=True, bf16=False, report_to="none", save_strategy="no", logging_steps=1, seed=0,
                      shuffle_dataset=False)
    results: list[dict] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            clock.update(sample=0.0, reward=0.0, tokens=0, started=time.perf_counter())

        def on_step_end(self, *_, **__):
            results.append({"step_s": time.perf_counter() - clock["started"], "sample_s": clock["sample"],
                            "reward_s": clock["reward"], "tokens": clock["tokens"]})
    trainer = GRPOTrainer(model=loaded.model, processing_class=loaded.tokenizer, reward_funcs=check_reward,
                          args=args, train_dataset=dataset, callbacks=[Timer()])
    torch.manual_seed(0)
    trainer.train()
    return results


def sampler_comparison(model: str) -> list[dict]:
    from alignkit.models import load
    from alignkit.models.sampling import sample_sequences

    loaded = load(model)
    results = []
    for prompts in (8, 16):
        chosen = [row["prompt"] for row in rows(prompts)]
        for engine in ("decode", "generate"):
            def run():
                return sample_sequences(loaded.model, loaded.tokenizer, chosen, n=K, max_new_tokens=MAX_NEW,
                                        batch_size=prompts, seed=0, engine=engine)
            run()  # warm-up
            started = time.perf_counter()
            samples = run()
            seconds = time.perf_counter() - started
            tokens = sum(map(sum, samples.counts))
            results.append({"rows": prompts * K, "engine": engine, "seconds": seconds, "tokens": tokens,
                            "tokens_per_s": tokens / seconds})
    return results


def summary(name: str, steps: list[dict], warmup: int, peak: float) -> dict:
    measured = steps[warmup:]
    median = {key: statistics.median(step[key] for step in measured) for key in measured[0]}
    return {"system": name, "steps": len(measured), **median,
            "rest_s": median["step_s"] - median["sample_s"] - median["reward_s"],
            "sampled_tokens_per_s": statistics.median(s["tokens"] / s["step_s"] for s in measured), "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--worker", choices=("alignkit", "trl", "sampler"))
    parser.add_argument("--model", default="smollm2-135m-instruct", help="any model alignkit loads (default: "
                                                                          "the default model)")
    parser.add_argument("--json", help="write every raw number to this file")
    args = parser.parse_args()
    total = args.warmup + args.steps
    if args.worker:
        with tempfile.TemporaryDirectory() as folder:
            if args.worker == "sampler":
                result = {"sampler": sampler_comparison(args.model)}
            else:
                worker = alignkit_worker if args.worker == "alignkit" else trl_worker
                result = {"steps": worker(args.model, total, Path(folder))}
        print(json.dumps({**result, "peak_mb": peak_mb()}))
        return
    raw = {}
    for name in ("trl", "alignkit", "sampler"):
        output = subprocess.run([sys.executable, __file__, "--worker", name, "--warmup", str(args.warmup),
                                 "--steps", str(args.steps), "--model", args.model], capture_output=True, text=True,
                                check=True).stdout
        raw[name] = json.loads(output.strip().splitlines()[-1])
    table = [summary(name, raw[name]["steps"], args.warmup, raw[name]["peak_mb"]) for name in ("trl", "alignkit")]
    print("system    step s  sample s  reward s  rest s  sampled tok/s  peak MB")
    for row in table:
        print(f"{row['system']:<9} {row['step_s']:6.2f}  {row['sample_s']:8.2f}  {row['reward_s']:8.3f}  "
              f"{row['rest_s']:6.2f}  {row['sampled_tokens_per_s']:13.1f}  {row['peak_mb']:7.0f}")
    print(f"step throughput alignkit / TRL: {table[0]['step_s'] / table[1]['step_s']:.2f}x")
    print("rows  engine    tokens  seconds  tok/s")
    for row in raw["sampler"]["sampler"]:
        print(f"{row['rows']:4d}  {row['engine']:<8}  {row['tokens']:6d}  {row['seconds']:7.2f}  {row['tokens_per_s']:6.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=1))


if __name__ == "__main__":
    main()
