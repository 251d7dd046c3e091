"""Model soups: a model whose weights are the weighted average of N checkpoints' weights.

SALSA (Chegini et al., arXiv 2411.01798) uses the weight-space average of two independently fine-tuned SFT
models as the reference of the KL penalty. The paper's averaging weights are UNVERIFIED (not checked);
uniform (1/N each) is the default here. For every tensor name k:

    soup[k] = Σ_i w_i · θ_i[k]  with  w_i = weights_i / Σ_j weights_j,

computed in float32 and cast back to the first checkpoint's dtype. All checkpoints must have the same
tensor names and shapes; non-floating tensors (integer buffers) must be equal and are copied.

A soup saved with `save_soup` (or `alignkit data soup`) is an ordinary Hugging Face folder, so it works
as `reference.model=DIR` with every reference-based objective.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from alignkit.data.writing import OutputPathError
from alignkit.models.loading import Loaded, ModelLoadError, load, save_model_atomically

StateDict = Mapping[str, torch.Tensor]
Source = str | os.PathLike | StateDict


class SoupError(ModelLoadError):
    """The checkpoints cannot be averaged (different tensors or shapes), or the weights are invalid."""


def normalized_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    """`weights` scaled to sum to 1 (uniform when None); they must be finite, >= 0, one per model."""
    if count < 1:
        raise SoupError("a soup needs at least one model")
    if weights is None:
        return [1.0 / count] * count
    values = [float(w) for w in weights]
    if len(values) != count:
        raise SoupError(f"{len(values)} weights for {count} models; give one weight per model")
    if any(not math.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise SoupError(f"weights must be finite, non-negative and not all zero, got {values}")
    total = sum(values)
    return [w / total for w in values]


def _state_dict(source: Source, dtype: torch.dtype) -> tuple[StateDict, str]:
    """(state dict, name for messages) of a state dict or a model name/path (loaded with `load`)."""
    if isinstance(source, Mapping):
        return source, "state dict"
    return load(source, dtype=dtype).model.state_dict(), str(source)


def _check_compatible(first: StateDict, other: StateDict, first_name: str, name: str) -> None:
    missing, extra = sorted(set(first) - set(other)), sorted(set(other) - set(first))
    if missing or extra:
        raise SoupError(f"{name} has different tensors than {first_name}: missing {missing[:5]}, "
                        f"extra {extra[:5]}{' ...' if len(missing) > 5 or len(extra) > 5 else ''}; "
                        "a soup needs checkpoints of the same architecture")
    for key, tensor in first.items():
        if tuple(other[key].shape) != tuple(tensor.shape):
            raise SoupError(f"tensor '{key}' has shape {tuple(other[key].shape)} in {name} but "
                            f"{tuple(tensor.shape)} in {first_name}; a soup needs checkpoints of the same architecture")


def soup_state_dict(sources: Sequence[Source], weights: Sequence[float] | None = None, *,
                    dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The weighted average of the sources' state dicts (see the module docstring).

    Sources are state dicts or model names/paths; paths are loaded one at a time (with `dtype`), so
    memory holds the float32 running sum and one checkpoint.
    """
    w = normalized_weights(weights, len(sources))
    first, first_name = _state_dict(sources[0], dtype)
    total = {key: tensor.detach().float() * w[0] if tensor.is_floating_point() else tensor.detach().clone()
             for key, tensor in first.items()}
    dtypes = {key: tensor.dtype for key, tensor in first.items()}
    for weight, source in zip(w[1:], sources[1:]):
        other, name = _state_dict(source, dtype)
        _check_compatible(first, other, first_name, name)
        for key, tensor in other.items():
            if tensor.is_floating_point():
                total[key] += weight * tensor.detach().float().to(total[key].device)
            elif not torch.equal(tensor.cpu(), total[key].cpu()):
                raise SoupError(f"non-floating tensor '{key}' differs between {first_name} and {name}")
        del other
    return {key: tensor.to(dtypes[key]) for key, tensor in total.items()}


def load_soup(paths: Sequence[str | os.PathLike], weights: Sequence[float] | None = None, *,
              dtype: torch.dtype = torch.float32) -> Loaded:
    """A model whose weights are the soup of `paths`, with the first model's config and tokenizer."""
    if not paths:
        raise SoupError("a soup needs at least one model")
    first = load(paths[0], dtype=dtype)
    state = soup_state_dict([first.model.state_dict(), *paths[1:]], weights, dtype=dtype)
    first.model.load_state_dict(state)
    shares = normalized_weights(weights, len(paths))
    return Loaded(first.model, first.tokenizer, "soup of " + ", ".join(f"{p} ({s:.4g})" for p, s in zip(paths, shares)))


def save_soup(paths: Sequence[str | os.PathLike], out: str | os.PathLike, weights: Sequence[float] | None = None, *,
              dtype: torch.dtype = torch.float32, overwrite: bool = False) -> Path:
    """Write the soup as a loadable Hugging Face folder (atomically) with `soup.json` naming its recipe.

    `out` may not be one of the models, nor (without `overwrite`) an existing path: OutputPathError, before any
    model is loaded."""
    folder = Path(out)
    if any(folder.resolve() == Path(path).resolve() for path in paths):
        raise OutputPathError(f"{out}: is one of the models; write the soup to a new folder")
    if folder.exists() and not overwrite:
        raise OutputPathError(f"{out}: already exists; choose a new folder or pass --overwrite")
    soup = load_soup(paths, weights, dtype=dtype)
    save_model_atomically(soup.model, soup.tokenizer, folder)
    recipe = {"models": [str(p) for p in paths], "weights": normalized_weights(weights, len(paths)),
              "formula": "sum_i w_i * theta_i, weights normalized to sum 1, float32 accumulation"}
    (folder / "soup.json").write_text(json.dumps(recipe, indent=2) + "\n", encoding="utf-8")
    return folder
