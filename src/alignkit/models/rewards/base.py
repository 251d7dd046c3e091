"""One scoring interface for rewards, verifiers and judges.

A reward maps a batch of (prompt, completion) pairs to a float tensor: shape [B] for a scalar reward,
[B, k] for a reward with k named attributes (`attributes`, length k). Prompts and completions are plain
strings or TRL-style message lists (`[{"role": ..., "content": ...}, ...]`); `alignkit.data.prompts`
(`text_of`, `prompt_text`) turns either into text.

Combinators:

* `CachedReward(reward)` memoises scores per (prompt, completion) and scores only the misses, in one batch.
* `WeightedSum(rewards, weights)`: r = Σ_i w_i · r_i for scalar rewards.
* `Direction(reward, v)`: r = vᵀ r̃(x, y) with v / ‖v‖₂ a unit vector in the space of a multi-attribute
  reward r̃ — the scalarisation of Directional Preference Alignment (Wang et al., ACL'24, arXiv 2402.18571).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from alignkit.data.prompts import Content, content_key, text_of
from alignkit.lazy import lazy

torch = lazy("torch")


def cache_key(prompt: Content, completion: Content) -> tuple[str, str]:
    """A hashable key of a (prompt, completion) pair (`content_key` of each)."""
    return content_key(prompt), content_key(completion)


class Reward:
    """Abstract reward. Subclasses implement `score(prompts, completions) -> Tensor[B] or Tensor[B, k]`.

    `attributes` is `()` for a scalar reward and the k attribute names for a vector reward.
    """

    attributes: tuple[str, ...] = ()

    def score(self, prompts: Sequence[Content], completions: Sequence[Content]) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, prompts: Sequence[Content], completions: Sequence[Content]) -> torch.Tensor:
        check_lengths(prompts, completions)
        return self.score(prompts, completions)


def check_lengths(prompts: Sequence, completions: Sequence) -> None:
    """One completion per prompt, or a ValueError."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")


class TextReward(Reward):
    """A scalar reward computed from each completion's text alone (`check(text) -> float`)."""

    def check(self, text: str) -> float:
        raise NotImplementedError

    def score(self, prompts: Sequence[Content], completions: Sequence[Content]) -> torch.Tensor:
        check_lengths(prompts, completions)
        return torch.tensor([float(self.check(text_of(c))) for c in completions], dtype=torch.float32)


class CachedReward(Reward):
    """Memoises `reward` per (prompt, completion); a call scores only the pairs not seen before, in one batch.

    The cache is an unbounded dict (`clear()` empties it); keys come from `cache_key`.
    """

    def __init__(self, reward: Reward):
        self.reward = reward
        self.attributes = reward.attributes
        self.cache: dict[tuple[str, str], torch.Tensor] = {}

    def clear(self) -> None:
        self.cache.clear()

    def score(self, prompts: Sequence[Content], completions: Sequence[Content]) -> torch.Tensor:
        check_lengths(prompts, completions)
        keys = [cache_key(p, c) for p, c in zip(prompts, completions)]
        missing: dict[tuple[str, str], int] = {}
        for i, key in enumerate(keys):
            if key not in self.cache and key not in missing:
                missing[key] = i
        if missing:
            rows = list(missing.values())
            fresh = self.reward.score([prompts[i] for i in rows], [completions[i] for i in rows])
            for key, value in zip(missing, fresh):
                self.cache[key] = value.detach().clone()
        if not keys:
            return torch.empty((0, len(self.attributes)) if self.attributes else (0,))
        return torch.stack([self.cache[key] for key in keys])


class WeightedSum(Reward):
    """r(x, y) = Σ_i w_i · r_i(x, y) over scalar rewards r_i."""

    def __init__(self, rewards: Sequence[Reward], weights: Sequence[float]):
        if len(rewards) != len(weights) or not rewards:
            raise ValueError(f"need as many weights as rewards (got {len(rewards)} rewards, {len(weights)} weights)")
        if any(r.attributes for r in rewards):
            raise ValueError("WeightedSum takes scalar rewards; use Direction for a multi-attribute reward")
        self.rewards = list(rewards)
        self.weights = [float(w) for w in weights]

    def score(self, prompts: Sequence[Content], completions: Sequence[Content]) -> torch.Tensor:
        total = torch.zeros(len(completions))
        for reward, weight in zip(self.rewards, self.weights):
            total = total + weight * reward.score(prompts, completions).float()
        return total


class Direction(Reward):
    """DPA scalarisation (Wang et al., arXiv 2402.18571): r(x, y) = vᵀ r̃(x, y), with v normalised to ‖v‖₂ = 1.

    `v` is a sequence aligned with `reward.attributes`, or a mapping from attribute name to weight (attributes
    left out weigh 0). Unknown names, a length mismatch or a zero vector raise `ValueError`. E.g. DPA's
    helpfulness/verbosity trade-off is v = (cos θ, sin θ).
    """

    def __init__(self, reward: Reward, v: Sequence[float] | Mapping[str, float]):
        names = tuple(reward.attributes)
        if not names:
            raise ValueError("Direction needs a multi-attribute reward (reward.attributes is empty)")
        self.reward = reward
        self.v = unit_direction(names, v)

    def score(self, prompts: Sequence[Content], completions: Sequence[Content]) -> torch.Tensor:
        scores = self.reward.score(prompts, completions).float()
        if scores.dim() != 2 or scores.shape[1] != len(self.v):
            raise ValueError(f"reward returned shape {tuple(scores.shape)}, expected [B, {len(self.v)}]")
        return scores @ self.v


def unit_direction(names: tuple[str, ...], v: Sequence[float] | Mapping[str, float]) -> torch.Tensor:
    """v over `names` as a unit float tensor (see `Direction`)."""
    if isinstance(v, Mapping):
        unknown = sorted(set(v) - set(names))
        if unknown:
            raise ValueError(f"unknown attributes {unknown}; the reward has {list(names)}")
        vector = torch.tensor([float(v.get(name, 0.0)) for name in names])
    else:
        if len(v) != len(names):
            raise ValueError(f"direction has {len(v)} entries but the reward has {len(names)} attributes {list(names)}")
        vector = torch.tensor([float(x) for x in v])
    norm = vector.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise ValueError("direction must be a finite non-zero vector")
    return vector / norm
