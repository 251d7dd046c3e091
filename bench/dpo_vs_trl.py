"""Side by side: TRL's DPOTrainer (default, and with precomputed reference log-probs) against alignkit.

    .venv/bin/python bench/dpo_vs_trl.py --warmup 1 --steps 5 --batch-size 4

(`--model PATH` takes any local Hugging Face folder instead, `--json PATH` writes every raw number.)
Three worker processes (this file, `--worker NAME`) train the same model (default: the built-in
SmolLM2-135M-Instruct, fp32) with DPO (sigmoid loss, β 0.1) on the same pairs of the shipped demo data:

* `trl`: DPOTrainer as it comes (a second copy of the model scores the reference every step);
* `trl-precompute`: DPOTrainer with `precompute_ref_log_probs=True`;
* `alignkit`: `alignkit.train.Trainer.prepare` with its defaults (reference precomputed, prefix sharing).

The `trl` worker tokenizes the data with DPOTrainer and writes the token ids; alignkit is fed those very
ids. The optimizer steps follow alignkit's `BatchPlan`; the TRL workers collate the same rows with
`trainer.data_collator` and run TRL's own `training_step` (forward, loss, backward), then clip to
max_grad_norm 1.0 and step the optimizer and the scheduler that `create_optimizer_and_scheduler` builds
(fused AdamW in both, lr, betas (0.9, 0.999), eps 1e-8, weight decay 0, linear decay, no warm-up), as
`Trainer.train` does. The driver sends step k to each worker in turn and waits for its reply, so only
one computes at a time and machine noise hits all alike
(the 1-min load average, printed, shows whether other processes competed). Each worker is its own
process, so its peak resident memory (ru_maxrss) is its own.

Throughput counts tokens as separate sequences, the same for every system: per pair
T = 2·|prompt| + |chosen| + |rejected| (alignkit's prefix sharing computes the prompt once, which is
part of its speed). Useful FLOPs per step, forward + backward of the policy only:

    FLOPs = 6 · N · T + 6 · h · V · C

with N the non-embedding parameters (input embedding and LM head excluded), h the hidden size, V the
vocabulary, C the completion tokens of the step (the positions whose LM-head output is needed);
attention scores and the reference forward are not counted. Achieved GFLOP/s (FLOPs / seconds) is set
against the machine's best measured fp32 GEMM rate (torch.mm, same thread count).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import torch

from alignkit.data.builtin import resolve_source
from alignkit.train.plan import BatchPlan

SYSTEMS = ("trl", "trl-precompute", "alignkit")
DATA = "builtin:demo/train.jsonl"
SEED = 0
LOSS_TOLERANCE = 1e-4
GEMM_SHAPES = {  # (m, k, n): SmolLM2's MLP projections over ~800 tokens, and a square matrix
    "[800,576]x[576,1536]": (800, 576, 1536),
    "[800,1536]x[1536,576]": (800, 1536, 576),
    "[2048,2048]x[2048,2048]": (2048, 2048, 2048),
}
Rows = list[list[list[int]]]  # [prompt_ids, chosen_ids, rejected_ids] per pair


# ---------------------------------------------------------------- shared by driver and workers

def count_tokens(rows: Rows) -> tuple[int, int]:
    """(tokens as separate sequences, completion tokens) of these pairs."""
    total = sum(2 * len(prompt) + len(chosen) + len(rejected) for prompt, chosen, rejected in rows)
    return total, sum(len(chosen) + len(rejected) for _, chosen, rejected in rows)


def rows_digest(rows: Rows) -> str:
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


# ---------------------------------------------------------------- workers

def protocol_channel() -> TextIO:
    """A private copy of stdout for the JSON replies; fd 1 then points to stderr, so library prints and
    progress bars cannot corrupt the protocol."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return channel


def demo_rows(count: int) -> list[dict]:
    with open(resolve_source(DATA)) as file:
        lines = [json.loads(line) for line in file if line.strip()][:count]
    return [{key: line[key] for key in ("prompt", "chosen", "rejected")} for line in lines]


class TrlWorker:
    def __init__(self, args: argparse.Namespace, precompute: bool):
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
        config = DPOConfig(
            output_dir=str(Path(args.workdir) / args.worker), per_device_train_batch_size=args.batch_size,
            learning_rate=args.lr, beta=args.beta, loss_type=["sigmoid"], precompute_ref_log_probs=precompute,
            bf16=False, use_cpu=True, report_to="none", dataloader_num_workers=0, seed=SEED, max_grad_norm=1.0,
            weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, lr_scheduler_type="linear",
            warmup_steps=0,
        )
        count = (args.warmup + args.steps) * args.batch_size
        self.trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(demo_rows(count)),
                                  processing_class=AutoTokenizer.from_pretrained(args.model))
        self.trainer.create_optimizer_and_scheduler(num_training_steps=args.warmup + args.steps)
        self.trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train's loop, read by training_step
        dataset = self.trainer.train_dataset
        self.rows = [[row["prompt_ids"], row["chosen_ids"], row["rejected_ids"]] for row in dataset]
        longest = max(len(p) + max(len(c), len(r)) for p, c, r in self.rows)
        if len(self.rows) != count or longest > config.max_length:
            raise RuntimeError(f"TRL kept {len(self.rows)} of {count} pairs, longest {longest} tokens: "
                               f"truncation (max_length {config.max_length}) would make the batches differ")
        if not precompute:
            (Path(args.workdir) / "ids.json").write_text(json.dumps(self.rows))

    def ready(self) -> dict[str, Any]:
        model, optimizer = self.trainer.model, self.trainer.optimizer
        embeddings = {id(model.get_input_embeddings().weight): model.get_input_embeddings().weight,
                      id(model.get_output_embeddings().weight): model.get_output_embeddings().weight}
        embedding_params = sum(weight.numel() for weight in embeddings.values())
        return {"ids_digest": rows_digest(self.rows),
                "non_embedding_params": sum(p.numel() for p in model.parameters()) - embedding_params,
                "hidden": model.config.hidden_size, "vocab": model.config.vocab_size,
                "optimizer": f"{type(optimizer).__name__}(fused={optimizer.defaults.get('fused')})"}

    def step(self, indices: list[int]) -> tuple[float, Rows]:
        trainer = self.trainer
        inputs = trainer.data_collator([trainer.train_dataset[i] for i in indices])
        loss = trainer.training_step(trainer.model, inputs).item()
        trainer.accelerator.clip_grad_norm_(trainer.model.parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
        trainer.model.zero_grad(set_to_none=True)
        return loss, [self.rows[i] for i in indices]


class AlignkitWorker:
    def __init__(self, args: argparse.Namespace):
        from alignkit.data import TokenizedExample
        from alignkit.train import Trainer, load_config

        self.rows: Rows = json.loads((Path(args.workdir) / "ids.json").read_text())
        pairs = [TokenizedExample.pair(tuple(p), tuple(c), tuple(r), index, f"TRL row {index}")
                 for index, (p, c, r) in enumerate(self.rows)]
        config = load_config(None, [
            f"model.name_or_path={args.model}", f"objective.params.beta={args.beta}", f"batch_size={args.batch_size}",
            f"max_steps={args.warmup + args.steps}", f"optim.lr={args.lr}", f"seed={SEED}", "report_to=none",
            "progress=false", f"output_dir={Path(args.workdir) / 'alignkit'}", "overwrite=true",
            "reference.cache=false",
        ])
        self.run = Trainer.prepare(config, examples=pairs)

    def ready(self) -> dict[str, Any]:
        return {"ids_digest": rows_digest(self.rows),
                "optimizer": f"{type(self.run.optimizer.optimizer).__name__}"
                             f"(fused={self.run.optimizer.optimizer.defaults.get('fused')})"}

    def step(self, indices: list[int]) -> tuple[float, Rows]:
        planned = self.run.source.plan.step_batches(self.run.state.step)
        if planned != [indices]:
            raise RuntimeError(f"alignkit's plan for step {self.run.state.step} is {planned}, "
                               f"the driver sent {indices}")
        return self.run.step()["loss"], [self.rows[i] for i in indices]


def serve(args: argparse.Namespace) -> None:
    channel = protocol_channel()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    worker = AlignkitWorker(args) if args.worker == "alignkit" else TrlWorker(args, args.worker == "trl-precompute")
    reply = worker.ready()
    reply["setup_s"] = time.perf_counter() - started
    channel.write(json.dumps(reply) + "\n")
    for line in sys.stdin:
        message = json.loads(line)
        if message["cmd"] == "finish":
            channel.write(json.dumps({"peak_rss_mb": peak_rss_mb()}) + "\n")
            return
        started = time.perf_counter()
        loss, rows = worker.step(message["indices"])
        seconds = time.perf_counter() - started
        tokens, completion_tokens = count_tokens(rows)
        channel.write(json.dumps({"seconds": seconds, "loss": loss, "tokens": tokens,
                                  "completion_tokens": completion_tokens}) + "\n")


# ---------------------------------------------------------------- driver

class Worker:
    """A worker process, spoken to in JSON lines; its stderr (logs, warnings) goes to a file."""

    def __init__(self, system: str, args: argparse.Namespace, workdir: Path):
        self.system, self.log = system, workdir / f"{system}.log"
        command = [sys.executable, __file__, "--worker", system, "--workdir", str(workdir), "--model", args.model,
                   *(f"--{key.replace('_', '-')}={getattr(args, key)}"
                     for key in ("warmup", "steps", "batch_size", "lr", "beta", "threads"))]
        env = {**os.environ, "TQDM_DISABLE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_OFFLINE": "1",
               "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads)}
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                            text=True, env=env)

    def receive(self) -> dict[str, Any]:
        line = self.process.stdout.readline()
        if not line:
            tail = "".join(self.log.read_text().splitlines(keepends=True)[-30:])
            raise RuntimeError(f"the {self.system} worker stopped; the end of its log:\n{tail}")
        return json.loads(line)

    def call(self, message: dict[str, Any]) -> dict[str, Any]:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()
        return self.receive()


def model_folder(model: str | None) -> str:
    """The given folder, or the built-in model's cached safetensors folder (created on first use)."""
    if model is not None:
        if not (Path(model) / "config.json").exists():
            raise SystemExit(f"--model {model}: not a Hugging Face model folder (no config.json)")
        return str(Path(model).resolve())
    from alignkit.models import DEFAULT_MODEL, resolve

    return str(resolve(DEFAULT_MODEL))


def gemm_gflops(seconds_per_block: float = 0.3, blocks: int = 5) -> dict[str, float]:
    """Best fp32 torch.mm rate per shape over `blocks` timed blocks of repeated products."""
    rates = {}
    for name, (m, k, n) in GEMM_SHAPES.items():
        a, b, out = torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)
        for _ in range(3):
            torch.mm(a, b, out=out)
        best = 0.0
        for _ in range(blocks):
            started, calls = time.perf_counter(), 0
            while (elapsed := time.perf_counter() - started) < seconds_per_block or calls == 0:
                torch.mm(a, b, out=out)
                calls += 1
            best = max(best, 2 * m * k * n * calls / elapsed / 1e9)
        rates[name] = best
    return rates


def summarize(replies: list[dict], warmup: int, peak_mb: float, model: dict, gemm: float) -> dict[str, float]:
    measured = replies[warmup:]
    seconds = [reply["seconds"] for reply in measured]
    flops = sum(6 * model["non_embedding_params"] * r["tokens"] + 6 * model["hidden"] * model["vocab"]
                * r["completion_tokens"] for r in measured)
    achieved = flops / sum(seconds) / 1e9
    return {"s_per_step_median": statistics.median(seconds), "s_per_step_mean": statistics.mean(seconds),
            "tokens_per_s": sum(r["tokens"] for r in measured) / sum(seconds), "peak_rss_mb": peak_mb,
            "gflops": achieved, "fraction_of_gemm": achieved / gemm}


def check_identical(ready: dict[str, dict], steps: dict[str, list[dict]]) -> None:
    digests = {system: reply["ids_digest"] for system, reply in ready.items()}
    if len(set(digests.values())) != 1:
        raise RuntimeError(f"the systems saw different token ids: {digests}")
    for number, per_system in enumerate(zip(*steps.values(), strict=True)):
        if len({(r["tokens"], r["completion_tokens"]) for r in per_system}) != 1:
            raise RuntimeError(f"step {number}: the systems' batches differ in size")


def report(args: argparse.Namespace, gemm: dict[str, float], ready: dict[str, dict], steps: dict[str, list[dict]],
           summary: dict[str, dict[str, float]], load: list[float]) -> list[tuple[str, float, str, bool]]:
    """Print the tables; return the targets as (name, value, target text, met)."""
    best_gemm, model = max(gemm.values()), ready["trl"]
    tokens = statistics.mean(r["tokens"] for r in steps["trl"][args.warmup:])
    print(f"DPO on {args.model}, fp32, {args.threads} threads, {args.batch_size} pairs/step "
          f"({tokens:.0f} tokens/step as separate sequences), {args.warmup} warm-up + {args.steps} measured steps, "
          f"lr {args.lr:g}, β {args.beta:g}")
    print(f"1-min load average: {load[0]:.2f} before the run, {load[1]:.2f} at its end "
          f"(this benchmark alone keeps it near {args.threads}; more means other processes shared the cores)")
    print("optimizers: " + ", ".join(f"{system} {ready[system]['optimizer']}" for system in SYSTEMS))
    print(f"machine fp32 GEMM: {best_gemm:.1f} GFLOP/s best ("
          + ", ".join(f"{name} {rate:.1f}" for name, rate in gemm.items()) + ")")
    print(f"useful FLOPs/step = 6·N·T + 6·h·V·C with N = {model['non_embedding_params']:,} non-embedding "
          f"parameters, h = {model['hidden']}, V = {model['vocab']}\n")
    print("| system | s/step median | s/step mean | tokens/s | peak RSS MB | GFLOP/s | of GEMM |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for system, s in summary.items():
        print(f"| {system} | {s['s_per_step_median']:.2f} | {s['s_per_step_mean']:.2f} | {s['tokens_per_s']:.0f} | "
              f"{s['peak_rss_mb']:.0f} | {s['gflops']:.1f} | {s['fraction_of_gemm']:.1%} |")
    print("\n| step | TRL | TRL precompute | alignkit | max abs diff |")
    print("|---|---:|---:|---:|---:|")
    worst = 0.0
    for number, per_system in enumerate(zip(*(steps[system] for system in SYSTEMS), strict=True)):
        losses = [reply["loss"] for reply in per_system]
        gap = max(losses) - min(losses)
        worst = max(worst, gap)
        label = f"{number} (warm-up)" if number < args.warmup else str(number)
        print(f"| {label} | " + " | ".join(f"{loss:.6f}" for loss in losses) + f" | {gap:.1e} |")
    ours = summary["alignkit"]
    targets = []
    for system, speedup in (("trl", 4.0), ("trl-precompute", 3.0)):
        ratio = ours["tokens_per_s"] / summary[system]["tokens_per_s"]
        targets.append((f"throughput alignkit / {system}", ratio, f">= {speedup:g}x", ratio >= speedup))
    for system in ("trl", "trl-precompute"):
        ratio = ours["peak_rss_mb"] / summary[system]["peak_rss_mb"]
        targets.append((f"peak RSS alignkit / {system}", ratio, "<= 0.5x", ratio <= 0.5))
    targets.append(("max |loss difference| over all steps", worst, f"<= {LOSS_TOLERANCE:g}", worst <= LOSS_TOLERANCE))
    print("\n| ratio | value | target | met |")
    print("|---|---:|---|---|")
    for name, value, target, met in targets:
        shown = f"{value:.1e}" if "loss" in name else f"{value:.2f}x"
        print(f"| {name} | {shown} | {target} | {'yes' if met else 'NO'} |")
    return targets


def drive(args: argparse.Namespace) -> None:
    args.model = model_folder(args.model)
    torch.set_num_threads(args.threads)
    load = [os.getloadavg()[0]]
    gemm = gemm_gflops()
    total = args.warmup + args.steps
    plan = BatchPlan(num_examples=total * args.batch_size, batch_size=args.batch_size, grad_accum=1, epochs=1,
                     max_steps=total, seed=SEED)
    with tempfile.TemporaryDirectory(prefix="dpo_vs_trl.") as tmp:
        workers, ready = {}, {}
        try:
            for system in SYSTEMS:  # one after another: alignkit reads the ids the trl worker writes
                workers[system] = Worker(system, args, Path(tmp))
                ready[system] = workers[system].receive()
                print(f"{system}: set up in {ready[system]['setup_s']:.1f} s", file=sys.stderr, flush=True)
            steps: dict[str, list[dict]] = {system: [] for system in SYSTEMS}
            for step in range(total):
                message = {"cmd": "step", "indices": plan.step_batches(step)[0]}
                for system in SYSTEMS:
                    steps[system].append(workers[system].call(message))
                print(f"step {step}: " + ", ".join(f"{s} {steps[s][-1]['seconds']:.2f} s" for s in SYSTEMS),
                      file=sys.stderr, flush=True)
            peaks = {system: worker.call({"cmd": "finish"})["peak_rss_mb"] for system, worker in workers.items()}
        finally:
            for worker in workers.values():
                worker.process.stdin.close()
                worker.process.wait()
    load.append(os.getloadavg()[0])
    check_identical(ready, steps)
    best_gemm = max(gemm.values())
    summary = {system: summarize(steps[system], args.warmup, peaks[system], ready["trl"], best_gemm)
               for system in SYSTEMS}
    targets = report(args, gemm, ready, steps, summary, load)
    if args.json:
        Path(args.json).write_text(json.dumps({
            "args": vars(args), "load_average": load, "gemm_gflops": gemm, "ready": ready, "steps": steps,
            "summary": summary,
            "targets": [{"name": n, "value": v, "target": t, "met": m} for n, v, t, m in targets],
        }, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local Hugging Face model folder (default: the built-in SmolLM2-135M-Instruct)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured optimizer steps first")
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps")
    parser.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step")
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads in every process")
    parser.add_argument("--json", help="write every raw number to this file")
    parser.add_argument("--worker", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve(args)
    else:
        drive(args)


if __name__ == "__main__":
    main()
