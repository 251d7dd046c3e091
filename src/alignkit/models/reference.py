"""Reference models and their log-probs, treated as data: computed once, cached under a fingerprint.

The fingerprint covers everything the numbers depend on: the reference weights, the tokenized data
(which already reflects the template and truncation), the template itself, the truncation settings and
the version of the scoring code. Any change gives a new key, so a stale cache is never read.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)

SCORING_VERSION = "completion-logps/2"  # [N, K] sums and counts


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 over parameter and buffer names, dtypes, shapes and bytes (LoRA adapter weights excluded)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        if "lora_" in name:
            continue
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


WEIGHT_FILE_PATTERNS = ("config.json", "*.safetensors", "*.bin", "*.gguf")


def files_fingerprint(path: Path) -> str:
    """sha256 over the config and weight files of a model folder (or one `.gguf` file), names and bytes.

    Lets a cached reference be recognised without loading the model: the weights are the files.
    """
    files = [path] if path.is_file() else sorted({f for pattern in WEIGHT_FILE_PATTERNS for f in path.glob(pattern)})
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}|{file.stat().st_size}".encode())
        with file.open("rb") as handle:
            while block := handle.read(1 << 22):
                digest.update(block)
    return digest.hexdigest()


def reference_fingerprint(*, weights: str, data: str, template: str, settings: dict) -> str:
    payload = json.dumps(
        {"weights": weights, "data": data, "template": template, "settings": settings, "version": SCORING_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


class ReferenceLogpsCache:
    """Reference log-prob tensors stored as `<folder>/<fingerprint>.safetensors`, written atomically."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, fingerprint: str) -> Path:
        return self.folder / f"{fingerprint}.safetensors"

    def load(self, fingerprint: str, shape: tuple[int, int] | None = None) -> dict[str, torch.Tensor] | None:
        """The cached `sums` and `counts`, or None when there is none. A file that cannot be read (truncated by a
        killed write, say) or whose tensors are not `shape` is named in a warning, removed, and reported as
        missing, so the caller recomputes it."""
        path = self.path(fingerprint)
        if not path.exists():
            return None
        try:
            tensors = load_file(path)
            problem = None if {"sums", "counts"} <= tensors.keys() else "no sums or counts"
            if problem is None and shape is not None and any(tuple(t.shape) != shape for t in tensors.values()):
                problem = f"tensors of shape {tuple(tensors['sums'].shape)}, expected {shape}"
        except Exception as err:  # safetensors raises its own error types for a damaged file
            problem = f"unreadable ({err})"
        if problem is None:
            return tensors
        log.warning("reference log-probs cache %s is damaged (%s): removing it and computing them again", path,
                    problem)
        path.unlink(missing_ok=True)
        return None

    def clean_temporary(self, older_than_s: float = 600.0) -> None:
        """Remove temporary files of interrupted writes older than `older_than_s` (younger ones may belong to a
        write in progress in another process)."""
        now = time.time()
        for leftover in self.folder.glob(".*") if self.folder.exists() else ():  # cache files are not hidden
            with contextlib.suppress(FileNotFoundError):  # another process may have just removed it
                if now - leftover.stat().st_mtime > older_than_s:
                    leftover.unlink()

    def save(self, fingerprint: str, tensors: dict[str, torch.Tensor]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{fingerprint}.", suffix=".tmp", dir=self.folder)
        os.close(fd)
        try:
            save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
            os.replace(tmp, self.path(fingerprint))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return self.path(fingerprint)


def frozen_copy(model: nn.Module) -> nn.Module:
    """An independent, gradient-free copy of `model` in eval mode."""
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


@contextlib.contextmanager
def policy_as_reference(model: nn.Module) -> Iterator[nn.Module]:
    """Use the policy itself as the reference: with LoRA adapters disabled (PEFT), in eval mode, no grad.

    Without adapters this is only correct before the first optimizer step; the trainer uses it to
    precompute reference log-probs, so no second copy of the weights is ever held.
    """
    was_training = model.training
    adapters_off = model.disable_adapter() if hasattr(model, "disable_adapter") else contextlib.nullcontext()
    model.eval()
    try:
        with adapters_off, torch.no_grad():
            yield model
    finally:
        model.train(was_training)
