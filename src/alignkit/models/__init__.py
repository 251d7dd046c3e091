"""Models: loading, frozen references, log-prob computation.

The names below are imported on first use (PEP 562), so importing a submodule such as `alignkit.models.logprobs`
does not load transformers' model classes.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["DEFAULT_MODEL", "Loaded", "ModelLoadError", "default_device", "load", "resolve", "save_model_atomically"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'alignkit.models' has no attribute {name!r}")
    return getattr(importlib.import_module("alignkit.models.loading"), name)
