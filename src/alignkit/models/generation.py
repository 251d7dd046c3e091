"""Generation mechanics every sampler and decoding method shares: counting the rows that go through a model's
forward, left-padded prompt encoding, the generated length of a row, and seeding."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from alignkit.lazy import lazy

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

torch = lazy("torch")


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
