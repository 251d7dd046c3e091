"""Peak memory and speed of DPO on the default model with each memory lever, one process per setting.

    .venv/bin/python bench/memory_levers.py --steps 3

Each setting trains (without saving) on the shipped demo pairs (fp32, 4 pairs a step, reference log-probs
cached) in a fresh process and reports its peak resident memory (ru_maxrss) over the run and over the
set-up alone (loading, reference log-probs), and seconds per step. The "separate reference model" rows
show that a cached reference is never loaded.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

SETTINGS = {
    "baseline (prefix sharing)": [],
    "activation checkpointing": ["activation_checkpointing=true"],
    "chunked LM head (64)": ["lm_head_chunk=64"],
    "LoRA r=16 (adapter-disabled reference)": ["model.lora.r=16"],
    "plain rows (no prefix sharing)": ["prefix_sharing=false"],
    "foreach AdamW (not fused)": ["optim.fused=false"],
    "separate reference model, not cached": ["reference.model=smollm2-135m-instruct", "reference.cache=false"],
    "separate reference model, cached": ["reference.model=smollm2-135m-instruct"],
}
FILL_CACHE_FIRST = {"separate reference model, cached"}  # an unmeasured run fills the cache first

CHILD = """
import json, resource, sys, time
from alignkit.train import Trainer, load_config
run = Trainer.prepare(load_config("recipes/demo_dpo_smollm2.yaml", sys.argv[1:]))
setup_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
seconds = []
while run.state.step < run.source.total_steps:
    started = time.perf_counter()
    run.step()
    seconds.append(time.perf_counter() - started)
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "setup_mb": setup_mb,
                  "s_per_step": sum(seconds[1:]) / len(seconds[1:])}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--only", default="", help="run the settings whose name contains this text")
    args = parser.parse_args()
    print(f"{'setting':<40} {'peak RSS':>10} {'setup peak':>11} {'s/step':>7}")
    for name, overrides in SETTINGS.items():
        if args.only not in name:
            continue
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-c", CHILD, f"max_steps={args.steps + 1}", f"output_dir={out}",
                       "progress=false", "report_to=none", "save_every=null", "overwrite=true", *overrides]
            if name in FILL_CACHE_FIRST:
                subprocess.run(command, capture_output=True, text=True, check=True)
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name:<40} {result['peak_mb']:>7.0f} MB {result['setup_mb']:>8.0f} MB {result['s_per_step']:>7.2f}",
              flush=True)


if __name__ == "__main__":
    main()
