"""The decoding-time methods by name: which function runs each, what extra inputs it needs, and its source.

Each method is a configuration of the shared mechanisms (guided step: `guidance`; search driver: `search`;
sample-and-rerank: `rerank`; model collaboration: `nudging`; prompt: `urial`; activation hooks: `steering`),
with the signature `method(model, tokenizer, prompts, **parameters) -> list[Completion]`.
`alignkit generate --method NAME` and `run_method` look methods up here.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data.prompts import Prompt
from alignkit.decode.core import Completion


@dataclass(frozen=True)
class Method:
    """A named decoding method. `needs` lists the keyword inputs that must be given (models, rewards, ...)."""

    name: str
    target: str  # "module:function" under alignkit.decode
    mechanism: str
    needs: tuple[str, ...]
    source: str
    description: str

    @property
    def function(self) -> Callable[..., list[Completion]]:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(f"alignkit.decode.{module}"), name)

    def parameters(self) -> dict[str, Any]:
        """The function's keyword parameters and their defaults (required ones map to `inspect.Parameter.empty`)."""
        signature = inspect.signature(self.function)
        return {name: p.default for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("best_of_n", "rerank:best_of_n", "sample-and-rerank", ("reward",),
           "standard best-of-N; TRL BestOfNSampler, AISteer360 best_of_n (n=8); InfAlign calibration "
           "arXiv 2412.19792", "N samples per prompt in one batch, keep the highest reward"),
    Method("worst_of_n", "rerank:worst_of_n", "sample-and-rerank", ("reward",),
           "worst-of-N (BoN jailbreaking) evaluation, InfAlign arXiv 2412.19792",
           "N samples per prompt, keep the lowest reward (an adversary's pick)"),
    Method("urial", "urial:urial", "prompt", (),
           "URIAL, Lin et al. ICLR 2024 (arXiv 2312.01552); prompts from Re-Align/URIAL urial_prompts/",
           "a base model answers after URIAL's system prompt and three stylistic examples"),
    Method("nudging", "nudging:nudging", "model collaboration", ("guide",),
           "Nudging, Fei et al. arXiv 2410.09300; fywalter/nudging",
           "the base writes while its top-1 probability >= gamma, else a small aligned guide writes a word"),
    Method("deal", "search:deal", "search", ("reward",),
           "DeAL, Huang et al. arXiv 2402.06147 (no official code)",
           "top-k candidates, greedy lookahead, beams scored by log-prob + lambda * reward"),
    Method("transfer_q", "transfer_q:transfer_q", "guided step + search rollouts", ("reward",),
           "Transfer Q*, Chakraborty et al. NeurIPS 2024 (arXiv 2405.20495); Soumya1612-Rasha/Transfer-Q",
           "prior top-k tokens re-weighted by exp(alpha * Q), Q the reward of a rollout"),
    Method("genarm", "guidance:genarm", "guided step", ("arm",),
           "GenARM, Xu et al. ICLR 2025 (arXiv 2410.08193); Yuancheng-Xu/GenARM",
           "sample from pi_base * pi_arm^alpha, token by token, both with KV caches"),
    Method("steering", "steering:steering", "activation hooks", ("directions",),
           "representation engineering; Wolf et al. arXiv 2401.16332 (REPE_alignment_helpfulness_tradeoff)",
           "add coefficient * a unit direction to chosen layers' hidden states"),
)}


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
