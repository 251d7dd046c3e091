"""`draw_samples`: the texts of N samples per prompt, for every decoding method and pipeline that needs plain
samples (best-of-N and worst-of-N reranking, greedy evaluation at `temperature=0`, `alignkit sample`: D2O's K
self-samples per prompt, Duan et al. 2024, arXiv 2403.03419). The sampler itself, `sample_sequences`, lives in
`alignkit.models.sampling` (online training samples with it too)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from alignkit.data.prompts import ChatTemplate, Prompt
from alignkit.models.sampling import sample_sequences

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def draw_samples(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *, n: int,
                 temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 128, batch_size: int = 8,
                 seed: int | None = 0, chat_template: ChatTemplate = True,
                 batched: bool = True) -> tuple[list[list[str]], list[list[int]], list[float]]:
    """(texts [P][N], token counts [P][N], forward passes per prompt) of N samples per prompt, in prompt order.

    Texts are stripped, special tokens skipped; a token count runs up to and including EOS. `temperature=0`
    decodes greedily once and repeats the completion N times. With `seed`, `torch.manual_seed(seed)` once (the
    same inputs, batch size and device reproduce); the global RNG state is restored afterwards. A prompt's
    forward passes are its batch's counted rows divided by the prompts in the batch: N rows per model call,
    finished rows included, i.e. N·T for a run of T tokens. Prompts (strings and message lists) are rendered
    with `render_prompts(tokenizer, prompts, chat_template)`: through the tokenizer's chat template by default,
    "chatml"/"zephyr"/a Jinja file for a tokenizer without one, the text as is with `chat_template=False`.
    `sample_sequences` returns the same samples with their token ids.
    """
    samples = sample_sequences(model, tokenizer, prompts, n=n, temperature=temperature, top_p=top_p,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                               chat_template=chat_template, batched=batched)
    return samples.texts, samples.counts, samples.passes
