"""Training objectives as pure functions over per-example log-probs, with a registry.

    losses, metrics = alignkit.objectives.dpo(pc, pr, rc, rr, beta=0.1)
    objective = alignkit.objectives.get("dpo")
"""

from alignkit.objectives.dpo import dpo
from alignkit.objectives.registry import KNOWN_INPUTS, Objective, available, get, register

__all__ = ["KNOWN_INPUTS", "Objective", "available", "dpo", "get", "register"]
