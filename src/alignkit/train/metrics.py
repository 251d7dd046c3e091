"""Training metrics: one JSON line per logged step in `metrics.jsonl`, the trackers of `report_to` (TensorBoard,
Weights & Biases, MLflow, through accelerate's trackers) and a progress bar.

Keys are logged as they are in `metrics.jsonl` (`loss`, `rewards/margins`, `eval/loss`, ...) and as `train/...`
(or `eval/...`) in the trackers. TensorBoard writes under `<output_dir>/tensorboard/`; wandb runs go to project
"alignkit", named after the output folder (offline with WANDB_MODE=offline); MLflow to experiment "alignkit"
(its store from MLFLOW_TRACKING_URI, e.g. `file:./mlruns`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from tqdm.auto import tqdm

PROGRESS_KEYS = {"loss": "loss", "rewards/margins": "margin", "rewards/accuracies": "acc", "eval/loss": "eval",
                 "reward": "reward", "kl": "kl", "tokens_per_s": "tok/s"}  # reward, kl: online objectives
PROJECT = "alignkit"


def tracker_dir(output_dir: Path) -> Path:
    """Where accelerate's file-based trackers (TensorBoard) write."""
    return Path(output_dir) / "tensorboard"


def _loggable(value: Any) -> Any:
    """A config value as the trackers' hyper-parameter tables take it (numbers, strings, booleans)."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


class MetricsLog:
    """Appends metrics to `<output_dir>/metrics.jsonl`, sends them to the trackers, and shows a tqdm bar.

    On resume from step k, lines for steps > k (written after that checkpoint) are dropped first, so the
    file reads as one uninterrupted run; TensorBoard purges its events after step k likewise.
    """

    def __init__(self, output_dir: Path, total_steps: int, start_step: int, *, accelerator: Accelerator,
                 trackers: list[str], config: dict[str, Any], progress: bool):
        self.enabled = accelerator.is_main_process
        self.accelerator = accelerator if trackers else None
        self.path = Path(output_dir) / "metrics.jsonl"
        self.bar = None
        if self.accelerator is not None:
            init = {"tensorboard": {"purge_step": start_step + 1},
                    "wandb": {"name": Path(output_dir).name, "dir": str(output_dir)},
                    "mlflow": {"run_name": Path(output_dir).name}}
            accelerator.init_trackers(PROJECT, config={k: _loggable(v) for k, v in config.items()},
                                      init_kwargs={name: init[name] for name in trackers})
        if not self.enabled:
            return
        self._truncate_after(start_step)
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)

    def _truncate_after(self, step: int) -> None:
        """Keep the lines of steps up to `step`; a line a killed write left unfinished is dropped."""
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.accelerator is not None:  # every process calls; accelerate logs on the main one
            self.accelerator.log({key if key.startswith("eval/") else f"train/{key}": value
                                  for key, value in metrics.items()}, step=step)
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def advance(self, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            shown = {short: f"{metrics[key]:.3g}" for key, short in PROGRESS_KEYS.items() if key in metrics}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        """Close the bar and end the trackers' runs; idempotent."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.accelerator is not None:
            self.accelerator.end_training()
            self.accelerator = None
