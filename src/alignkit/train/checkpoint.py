"""Atomic, resumable checkpoints: `<output_dir>/checkpoints/step-000050/`.

Each checkpoint holds the model in Hugging Face format (or the LoRA adapter in PEFT format), the
tokenizer, the optimizer and scheduler states and `state.json`. A checkpoint is written to a temporary
folder and renamed into place, so a crash mid-write never leaves a half checkpoint that `--resume`
would pick up.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

CHECKPOINT_PREFIX = "step-"


@dataclass
class TrainingState:
    step: int  # optimizer steps completed
    tokens_seen: int = 0
    objective_state: dict = field(default_factory=dict)  # e.g. BCO's running reward mean


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:06d}"


def latest_checkpoint(output_dir: Path) -> Path | None:
    folder = Path(output_dir) / "checkpoints"
    done = sorted(p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.json").exists())
    return done[-1] if done else None


def save_checkpoint(output_dir: Path, model: nn.Module, tokenizer, optimizer, scheduler, state: TrainingState,
                    keep: int) -> Path:
    final = checkpoint_dir(output_dir, state.step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(torch.get_rng_state(), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps(state.__dict__))
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(final.parent, keep)
    return final


def _prune(folder: Path, keep: int) -> None:
    done = sorted(p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if (p / "state.json").exists())
    for old in done[: max(0, len(done) - keep)]:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, model: nn.Module, optimizer, scheduler) -> TrainingState:
    """Restore weights, optimizer, scheduler and RNG from `folder` into already-built objects."""
    folder = Path(folder)
    if (folder / "adapter_model.safetensors").exists():
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(folder / "adapter_model.safetensors"))
    else:  # the model's own class: a causal LM, or a sequence-classification reward model
        saved = type(model).from_pretrained(folder, dtype=next(model.parameters()).dtype)
        model.load_state_dict(saved.state_dict())
        del saved
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    torch.set_rng_state(torch.load(folder / "rng.pt", weights_only=True))
    return TrainingState(**json.loads((folder / "state.json").read_text()))
