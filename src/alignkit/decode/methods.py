"""The decoding-time methods by name: the registry every preset enters, next to its function.

Each method is a configuration of the shared mechanisms (guided step: `guidance`; search driver: `search`;
sample-and-rerank: `rerank`; model collaboration: `nudging`; prompt: `urial`; activation hooks: `steering`),
with the signature `method(model, tokenizer, prompts, **parameters) -> list[Completion]`, registered where it
is defined with `register_method(Method(...))`. `alignkit generate --method NAME`, its `--list` and `--help`,
and `run_method` read the registry; importing `alignkit.decode` fills it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from alignkit.data.prompts import Prompt
from alignkit.decode.core import Completion

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Method:
    """A named decoding method. `needs` lists the keyword inputs that must be given (models, rewards, ...)."""

    name: str
    function: Callable[..., list[Completion]]
    mechanism: str
    needs: tuple[str, ...]
    source: str
    description: str

    def parameters(self) -> dict[str, Any]:
        """The function's keyword parameters and their defaults (required ones map to `inspect.Parameter.empty`)."""
        signature = inspect.signature(self.function)
        return {name: p.default for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add a method to `METHODS`; every name in `needs` must be a keyword parameter of its function."""
    missing = [need for need in method.needs if need not in method.parameters()]
    if missing:
        raise ValueError(f"decoding method {method.name!r} needs {missing}, which {method.function.__name__} "
                         "does not take")
    if method.name in METHODS:
        raise ValueError(f"decoding method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown decoding method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[name]


def run_method(name: str, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt],
               **parameters: Any) -> list[Completion]:
    """Run decoding method `name` on every prompt; unknown or missing parameters raise a ValueError naming them."""
    method = get_method(name)
    check_parameters(method, parameters)
    return method.function(model, tokenizer, list(prompts), **parameters)


def check_parameters(method: Method, given: Mapping[str, Any]) -> None:
    """Every given parameter exists and every required one (`needs`, and those without defaults) is given."""
    accepted = method.parameters()
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise ValueError(f"{method.name} has no parameter {', '.join(unknown)}; it takes: {', '.join(accepted)}")
    required = [name for name, default in accepted.items() if default is inspect.Parameter.empty]
    missing = [name for name in dict.fromkeys((*method.needs, *required)) if given.get(name) is None]
    if missing:
        raise ValueError(f"{method.name} needs {', '.join(missing)}")
