"""What a self-alignment preset is: a function that makes one round's training rows from the current model, its
parameters, and the train recipe its rows go to. The loop (`alignkit.loops.driver`) runs the rounds; presets
(`alignkit.loops.presets`) only label.

A round's rows are written as a dataset (`round-N/data.jsonl`) that a plain `alignkit train` reads: the rows
must be in the data format of the recipe's objective (sft rows `{prompt, completion}` for SFT, preference rows
`{prompt, chosen, rejected}` for DPO, list rows for ranking objectives).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from alignkit.data import Record
from alignkit.data.prompts import Prompt
from alignkit.decode.sampling import draw_samples

if TYPE_CHECKING:
    from alignkit.models.loading import Loaded


@dataclass
class Sampling:
    """How a round samples from the current model (`sample` in a loop config)."""

    k: int = 4  # samples per prompt
    max_new_tokens: int = 96
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 8


@dataclass(frozen=True)
class RoundContext:
    """Everything a preset's labeller sees in round `round` (1-based).

    `model` is the current model (the base model in round 1, else the previous round's trained model);
    `reference` the model it was trained from (None in round 1); `records` the loop's prompt rows (each a
    `Record` with `.data` and `.where`); `params` the preset's parameters (its defaults overridden by the
    loop config's `params`); `seed` this round's seed; `folder` the round's folder, for caches.
    """

    round: int
    model: Loaded
    reference: str | None
    records: Sequence[Record]
    params: Mapping[str, Any]
    sampling: Sampling
    seed: int
    folder: Path

    def sample(self, prompts: Sequence[Prompt], *, k: int | None = None, temperature: float | None = None,
               max_new_tokens: int | None = None, chat_template: bool = True) -> list[list[str]]:
        """k completions of each prompt from the current model under this round's sampling settings (each
        keyword overrides one), seeded by the round's seed; temperature 0 is greedy."""
        settings = self.sampling
        texts, _, _ = draw_samples(self.model.model, self.model.tokenizer, list(prompts), n=k or settings.k,
                                   temperature=settings.temperature if temperature is None else temperature,
                                   top_p=settings.top_p, batch_size=settings.batch_size, seed=self.seed,
                                   max_new_tokens=max_new_tokens or settings.max_new_tokens,
                                   chat_template=chat_template)
        return texts


Labeller = Callable[[RoundContext], list[dict]]


@dataclass(frozen=True)
class Preset:
    """A self-alignment method as a configuration of the loop.

    `label` makes a round's training rows; `recipe` is the train recipe they go to (a shipped recipe name or a
    path; the loop config's `train.recipe` replaces it); `defaults` the parameters with the paper's values;
    `required` the `params` keys a loop config must set (checked before the first round, naming the key);
    `seed_rows` (optional) makes round 0's rows from `params` alone, without sampling (SPA's labelled seed),
    trained from the base model before round 1."""

    name: str
    label: Labeller
    recipe: str
    source: str
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    check: Callable[[Mapping[str, Any]], None] | None = None  # raises ValueError naming a bad `params` key
    seed_rows: Callable[[Mapping[str, Any]], list[dict]] | None = None
