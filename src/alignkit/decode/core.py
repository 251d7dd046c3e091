"""What every decoding method shares: its result type, forward-pass counting, prompt encoding and seeding.

Every method in `alignkit.decode` has the signature

    method(model, tokenizer, prompts, **parameters) -> list[Completion]

and returns one `Completion` per prompt, in prompt order. `Completion.diagnostics` holds per-method numbers
(for example `forward_passes`, `reward_calls`, `nudged_fraction`); `forward_passes` counts rows: one model
call over a batch of k rows counts k, so `forward_passes / tokens` is the forward passes per generated token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from alignkit.lazy import lazy

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


class ForwardCounter:
    """Counts the rows that go through a model's forward (a call over a [k, t] batch adds k).

    Use as a context manager: hooks are removed on exit. Works for any `nn.Module`.
    """

    def __init__(self, *models: torch.nn.Module):
        self.models = models
        self.rows = 0
        self._handles: list = []

    def _hook(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (args[0] if args else None)
        if ids is None:
            ids = kwargs.get("inputs_embeds")
        self.rows += int(ids.shape[0]) if ids is not None else 1

    def __enter__(self) -> ForwardCounter:
        self._handles = [m.register_forward_pre_hook(self._hook, with_kwargs=True) for m in self.models]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def encode_left_padded(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                       device: torch.device | str) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` of the texts, left-padded (no special tokens added)."""
    previous = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        encoded = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = previous
    return {key: value.to(device) for key, value in encoded.items()}


def decode_new(tokenizer: PreTrainedTokenizerBase, new_ids: torch.Tensor) -> tuple[list[str], list[int]]:
    """Texts (special tokens skipped, stripped) and token counts (up to and including EOS) of new tokens."""
    texts = [text.strip() for text in tokenizer.batch_decode(new_ids, skip_special_tokens=True)]
    return texts, [generated_length(row, tokenizer) for row in new_ids]


def generated_length(row: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> int:
    """Generated tokens in one row of new ids: up to the first EOS (included), padding after it excluded."""
    eos = tokenizer.eos_token_id
    hits = (row == eos).nonzero() if eos is not None else row.new_zeros((0, 1))
    return int(hits[0, 0]) + 1 if len(hits) else int(row.shape[0])


@contextmanager
def seeded(seed: int | None, model: PreTrainedModel) -> Iterator[None]:
    """Run with `torch.manual_seed(seed)` (no-op for None); the global RNG state is restored afterwards."""
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield
