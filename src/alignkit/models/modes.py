"""Model modes for inference: eval mode and no autograd, restored afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from alignkit.lazy import lazy

torch = lazy("torch")


@contextmanager
def evaluating(*models: torch.nn.Module) -> Iterator[None]:
    """Models in eval mode under `torch.inference_mode()`; training flags restored afterwards."""
    flags = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for m, flag in zip(models, flags):
            m.train(flag)
