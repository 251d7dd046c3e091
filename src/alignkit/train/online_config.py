"""The settings of objectives on `prompts` (sampled online) that a config check needs besides each key's own rule:
samples per prompt for the estimator, a reward, weights that fit; and the rule for one reward spec."""

from __future__ import annotations

from typing import Any, Optional

from alignkit.train.settings import TrainConfig

REWARD_TRANSFORMS = ("best_of_n", "worst_of_n")


def online_problem(config: TrainConfig) -> tuple[str, Any, str] | None:
    """(key, value, what is wrong) for the first bad online setting of an objective on `prompts` (None if all
    fit): samples per prompt in the range its estimator needs, at least one reward spec, one weight per spec.
    (Each spec's syntax and the transform have their own rules in `alignkit.train.config.RULES`.)"""
    from alignkit.objectives import get

    objective = get(config.objective.name)
    if objective.data_format != "prompts":
        return None
    low, high = objective.group
    k = config.online.k
    if k < low or (high is not None and k > high):
        needed = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
        return "online.k", k, f"{objective.name} needs {needed} samples per prompt"
    reward = config.reward
    if not reward.specs:
        return "reward.specs", reward.specs, (f"{objective.name} learns from a reward: name at least one spec, e.g. "
                                              "[verifier:checks=builtin:demo/train.jsonl] (any `alignkit score "
                                              "--reward` spec)")
    if reward.weights is not None and len(reward.weights) != len(reward.specs):
        return "reward.weights", reward.weights, f"needs one weight per spec ({len(reward.specs)})"
    return None


def spec_problem(spec: str) -> Optional[str]:
    """What is wrong with a reward spec, found without loading a model (verifiers are built, which is cheap)."""
    from alignkit.models.rewards.spec import KINDS, verifier_from_spec

    kind, sep, argument = str(spec).partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in ("aspects", "classifier", "judge", "safety", "verifier"):
        return f"not a reward spec; valid kinds: {', '.join(KINDS)}"
    if kind != "verifier":
        return None if argument.strip() else f"{kind}: needs a model"
    try:
        verifier_from_spec(argument)
    except ValueError as err:
        return str(err)
    return None
