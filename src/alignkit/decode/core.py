"""What every decoding method shares: its result type, forward-pass counting, prompt encoding and seeding
(the last three from `alignkit.models.generation`).

Every method in `alignkit.decode` has the signature

    method(model, tokenizer, prompts, **parameters) -> list[Completion]

and returns one `Completion` per prompt, in prompt order. `Completion.diagnostics` holds per-method numbers
(for example `forward_passes`, `reward_calls`, `nudged_fraction`); `forward_passes` counts rows: one model
call over a batch of k rows counts k, so `forward_passes / tokens` is the forward passes per generated token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from alignkit.lazy import lazy
# The mechanics the decoding methods share with the sampler (which lives in `models`, for online training too).
from alignkit.models.generation import ForwardCounter, encode_left_padded, generated_length, seeded  # noqa: F401

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

torch = lazy("torch")


@dataclass
class Completion:
    """One prompt's output: the completion text, its number of generated tokens and per-method diagnostics."""

    text: str
    tokens: int
    diagnostics: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"completion": self.text, "tokens": self.tokens, **self.diagnostics}


def decode_new(tokenizer: PreTrainedTokenizerBase, new_ids: torch.Tensor) -> tuple[list[str], list[int]]:
    """Texts (special tokens skipped, stripped) and token counts (up to and including EOS) of new tokens."""
    texts = [text.strip() for text in tokenizer.batch_decode(new_ids, skip_special_tokens=True)]
    return texts, [generated_length(row, tokenizer) for row in new_ids]


