"""Peak memory and speed of DPO on the default model with each memory lever, one process per setting.

    .venv/bin/python bench/memory_levers.py --steps 3

Each setting runs `alignkit train` on the shipped demo pairs (fp32, 4 pairs a step, reference log-probs
cached) in a fresh process and reports its peak resident memory (ru_maxrss) and seconds per step.
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
}

CHILD = """
import json, resource, sys, time
from alignkit.train import load_config, train
config = load_config("recipes/demo_dpo_smollm2.yaml", sys.argv[1:])
train(config)  # first run also fills the reference cache; steps are timed from the metrics
rows = [json.loads(line) for line in open(config.output_dir + "/metrics.jsonl")]
seconds = [row["tokens_in_step"] / row["tokens_per_s"] for row in rows[1:]]
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "s_per_step": sum(seconds) / len(seconds)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    print(f"{'setting':<40} {'peak RSS':>10} {'s/step':>7}")
    for name, overrides in SETTINGS.items():
        with tempfile.TemporaryDirectory() as out:
            command = [sys.executable, "-c", CHILD, f"max_steps={args.steps + 1}", f"output_dir={out}",
                       "progress=false", "tensorboard=false", "save_every=null", *overrides]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{name:<40} {result['peak_mb']:>7.0f} MB {result['s_per_step']:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
