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
import os
import tempfile
from pathlib import Path
from typing import Iterator

import torch
from safetensors.torch import load_file, save_file
from torch import nn

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

    def load(self, fingerprint: str) -> dict[str, torch.Tensor] | None:
        path = self.path(fingerprint)
        return load_file(path) if path.exists() else None

    def save(self, fingerprint: str, tensors: dict[str, torch.Tensor]) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{fingerprint}.", dir=self.folder)
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
