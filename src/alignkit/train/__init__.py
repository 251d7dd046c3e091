"""One training loop for every objective: `train(load_config("recipe.yaml", ["key=value"]))`.

The names below are imported on first use (PEP 562): `alignkit.train.config` alone does not load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {"ConfigError": "config", "TrainConfig": "config", "load_config": "config", "Trainer": "loop",
          "TrainResult": "loop", "train": "loop", "DataSource": "sources", "FixedDataset": "sources"}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'alignkit.train' has no attribute {name!r}")
    return getattr(importlib.import_module(f"alignkit.train.{_HOMES[name]}"), name)
