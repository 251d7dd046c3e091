"""The non-finite guard: a NaN or inf in a step's loss, its gradients (before clipping) or the parameters after
its update never reaches a checkpoint.

With `on_nonfinite=stop` (the default) the run ends with `NonFiniteError`, naming the step and the quantity,
before anything of that step is saved, so the last checkpoint is the last good state (and no later one can
prune it). With `on_nonfinite=skip` the step's update is not applied (for the parameter check: undone, from a
copy taken before the update — about three times the trainable parameters' memory while the run lasts), the
run goes on with the next batch, and `nonfinite_skipped` counts such steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class NonFiniteError(RuntimeError):
    """A step produced a NaN or inf; the message names the step, the quantity and the last checkpoint."""


def finite(value: torch.Tensor | float) -> bool:
    return bool(torch.isfinite(torch.as_tensor(value)).all())


@torch.no_grad()
def parameters_finite(parameters: Sequence[nn.Parameter]) -> bool:
    """Every value of every parameter is finite. The total norm (one fused pass, about 0.02 s for 135M
    parameters on 2 CPU cores) is finite exactly when every value is, unless huge finite values overflow it; only
    then is every tensor checked value by value (0.17 s)."""
    if finite(torch.nn.utils.get_total_norm([p.detach() for p in parameters])):
        return True
    return all(bool(torch.isfinite(p).all()) for p in parameters)


class UpdateSnapshot:
    """The trainable parameters and the optimizer state before an update, to put back if the update made the
    parameters non-finite."""

    def __init__(self, parameters: Sequence[nn.Parameter], optimizer: torch.optim.Optimizer):
        self.parameters = list(parameters)
        self.values = [p.detach().clone() for p in self.parameters]
        self.optimizer = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside accelerate's wrapper
        self.state = {p: {key: value.clone() if torch.is_tensor(value) else value for key, value in state.items()}
                      for p, state in self.optimizer.state.items()}

    @torch.no_grad()
    def restore(self) -> None:
        for parameter, value in zip(self.parameters, self.values):
            parameter.copy_(value)
        self.optimizer.state.clear()
        self.optimizer.state.update(self.state)
