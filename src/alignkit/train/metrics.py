"""Training metrics: one JSON line per logged step, TensorBoard scalars and a progress bar."""

from __future__ import annotations

import json
from pathlib import Path

from tqdm.auto import tqdm

PROGRESS_KEYS = {"loss": "loss", "rewards/margins": "margin", "rewards/accuracies": "acc", "tokens_per_s": "tok/s"}


class MetricsLog:
    """Appends metrics to `<output_dir>/metrics.jsonl` and TensorBoard; shows a tqdm bar.

    On resume from step k, lines for steps > k (written after that checkpoint) are dropped first, so the
    file reads as one uninterrupted run.
    """

    def __init__(self, output_dir: Path, total_steps: int, start_step: int, *, tensorboard: bool, progress: bool,
                 enabled: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self.writer = None
        self.bar = None
        if not enabled:
            return
        self._truncate_after(start_step)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"), purge_step=start_step + 1)
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
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(f"train/{key}", value, step)

    def advance(self, metrics: dict[str, float]) -> None:
        if self.bar is not None:
            shown = {short: f"{metrics[key]:.3g}" for key, short in PROGRESS_KEYS.items() if key in metrics}
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
