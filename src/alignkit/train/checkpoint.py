"""Atomic, verified, resumable checkpoints: `<output_dir>/checkpoints/step-000050/`.

Each checkpoint holds the model in Hugging Face format (or the LoRA adapter in PEFT format), the tokenizer,
the optimizer, scheduler and RNG states, `state.json`, the `config.yaml` that produced it, and — written
last — `manifest.json`, the size and sha256 of every other file. A checkpoint is written to a temporary
folder and renamed into place; it counts as complete only with its manifest, and resuming verifies the
manifest and falls back to the newest intact checkpoint, saying which it skipped and why. Pruning deletes
an old checkpoint's manifest first, so a half-deleted checkpoint never looks complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from alignkit.models.export import ADAPTER_CONFIG, set_adapter_base

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "step-"
MANIFEST = "manifest.json"
TEMPORARY_PREFIX = ".tmp-"
SOURCE_STATE = "source.pt"


@dataclass
class TrainingState:
    step: int  # optimizer steps completed
    tokens_seen: int = 0
    objective_state: dict = field(default_factory=dict)  # e.g. BCO's running reward mean
    nonfinite_skipped: int = 0  # steps skipped for a NaN or inf (on_nonfinite=skip)
    data_fingerprint: str = ""  # of the tokenized training examples
    world_size: int = 1  # processes (the global batch is batch_size · world_size)
    optimizer_saved: bool = True  # whether the checkpoint holds the optimizer state (save_optimizer)


def checkpoint_dir(output_dir: Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{step:06d}"


def _step_folders(output_dir: Path) -> list[Path]:
    """Checkpoint folders (`step-NNNNNN`), oldest first; anything else in `checkpoints/` is not ours."""
    folder = Path(output_dir) / "checkpoints"
    return sorted(p for p in folder.glob(f"{CHECKPOINT_PREFIX}*")
                  if p.is_dir() and p.name[len(CHECKPOINT_PREFIX):].isdigit())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    manifest = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def problem_with(folder: Path, hashes: bool = True) -> str | None:
    """Why `folder` is not a complete checkpoint (no or unreadable manifest, a file missing, truncated or
    changed), or None. Without `hashes` only presence and sizes are checked."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        return "no manifest.json (the checkpoint was not finished)"
    except (OSError, ValueError) as err:
        return f"manifest.json is unreadable ({err})"
    for name, expected in manifest.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {expected['bytes']}"
        if hashes and _sha256(path) != expected["sha256"]:
            return f"{name} does not match its sha256 in the manifest"
    return None


def has_checkpoint(output_dir: Path) -> bool:
    """Whether `output_dir` holds a finished checkpoint (presence and sizes only, no hashing)."""
    return any(problem_with(folder, hashes=False) is None for folder in _step_folders(output_dir))


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint that verifies against its manifest; every newer one is skipped with a warning
    naming it and why."""
    for folder in reversed(_step_folders(output_dir)):
        problem = problem_with(folder)
        if problem is None:
            return folder
        log.warning("resume: skipping checkpoint %s: %s", folder, problem)
    return None


def save_checkpoint(output_dir: Path, model: nn.Module, tokenizer, optimizer, scheduler, state: TrainingState,
                    keep: int, config_yaml: str, save_optimizer: bool = True, adapter_base: str | None = None,
                    source_state: dict | None = None) -> Path:
    """Write the checkpoint of `state.step` and prune to the newest `keep`; without `save_optimizer` the
    optimizer state is left out (about twice the model's size for AdamW), and `state.json` says so. A LoRA
    adapter names `adapter_base` (the model as the user named it) as its base. A data source's state (e.g. the
    online sampler's generation in use) goes to `source.pt`."""
    final = checkpoint_dir(output_dir, state.step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=TEMPORARY_PREFIX, dir=final.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if adapter_base is not None and (tmp / ADAPTER_CONFIG).exists():
            set_adapter_base(tmp, adapter_base)
        if save_optimizer:
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(torch.get_rng_state(), tmp / "rng.pt")
        if source_state:
            torch.save(source_state, tmp / SOURCE_STATE)
        state.optimizer_saved = save_optimizer
        (tmp / "state.json").write_text(json.dumps(state.__dict__))
        (tmp / "config.yaml").write_text(config_yaml)
        _write_manifest(tmp)
        if final.exists():
            _remove(final)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    size = sum(p.stat().st_size for p in final.rglob("*") if p.is_file())
    log.info("checkpoint %s: %.0f MB, %s optimizer state", final.name, size / 2**20,
             "with" if save_optimizer else "without")
    _prune(output_dir, keep)
    return final


def _remove(folder: Path) -> None:
    """Delete a checkpoint: its manifest first, so a half-deleted one is never taken for complete."""
    (folder / MANIFEST).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _prune(output_dir: Path, keep: int) -> None:
    complete = [folder for folder in _step_folders(output_dir) if problem_with(folder, hashes=False) is None]
    for old in complete[: max(0, len(complete) - keep)]:
        _remove(old)


def remove_checkpoints(output_dir: Path) -> None:
    """Every checkpoint alignkit wrote in `output_dir` (step folders and temporary folders), nothing else."""
    for folder in _step_folders(output_dir):
        _remove(folder)
    clean_temporary(output_dir)


def clean_temporary(output_dir: Path) -> list[Path]:
    """Remove what killed writes left behind: temporary checkpoint folders and `final/` staging folders."""
    output_dir = Path(output_dir)
    leftovers = [*(output_dir / "checkpoints").glob(f"{TEMPORARY_PREFIX}*"), *output_dir.glob(".final.*")]
    for path in leftovers:
        log.info("removing %s, left by an interrupted write", path)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return leftovers


def checkpoint_config(folder: Path) -> str:
    """The `config.yaml` text of the run that wrote the checkpoint."""
    return (Path(folder) / "config.yaml").read_text()


def checkpoint_state(folder: Path) -> TrainingState:
    """The `state.json` of a checkpoint."""
    return TrainingState(**json.loads((Path(folder) / "state.json").read_text()))


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
    if (folder / "optimizer.pt").exists():
        optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    else:
        log.warning("resume: %s holds no optimizer state (save_optimizer=false): the optimizer starts afresh "
                    "(AdamW's moments at zero), so the run will not equal an uninterrupted one", folder)
    scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=True))
    torch.set_rng_state(torch.load(folder / "rng.pt", weights_only=True))
    return checkpoint_state(folder)


def load_source_state(folder: Path) -> dict:
    """The data source's state saved with a checkpoint ({} if none)."""
    path = Path(folder) / SOURCE_STATE
    return torch.load(path, weights_only=True) if path.exists() else {}
