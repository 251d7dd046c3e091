"""Modules imported on first use, so that listing and help commands do not pay for torch and transformers.

    torch = lazy("torch")            # a stand-in: the first `torch.anything` imports torch
    F = lazy("torch.nn.functional")

Use it only in modules whose module-level code needs no attribute of the module (functions that call it are
fine); after the first access the cost is one dictionary lookup per attribute.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any


class LazyModule:
    """Stands in for module `name` until an attribute is read."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attribute: str) -> Any:
        module = sys.modules.get(self._name) or importlib.import_module(self._name)
        return getattr(module, attribute)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


def lazy(name: str) -> ModuleType:
    """`name` as it is when already imported, else a `LazyModule` that imports it on first use."""
    return sys.modules.get(name) or LazyModule(name)  # type: ignore[return-value]
