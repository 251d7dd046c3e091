"""The sampler: N completions per prompt from a causal LM, batched with the KV cache.

Every method that needs plain samples goes through `draw_samples`: best-of-N and worst-of-N reranking, greedy
evaluation (`temperature=0`), and `alignkit sample` (D2O's K self-samples per prompt, Duan et al. 2024,
arXiv 2403.03419). Prompts are rendered (`alignkit.data.prompts.render_prompts`: a string prompt is one user
message through the chat template unless `chat_template=False`), sorted by token length into
batches (less padding), left-padded, and decoded under `torch.inference_mode()`; one `model.generate` call per
batch with `num_return_sequences=N` (transformers expands the rows before prefill, so the prefill runs over
N rows per prompt). `batched=False` instead makes N generate calls of one sample each (for the speed
comparison "N samples batched vs N sequential runs").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alignkit.data.prompts import ChatTemplate, Prompt, render_prompts
from alignkit.decode.core import ForwardCounter, encode_left_padded, generated_length, seeded
from alignkit.models.modes import evaluating
if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def generate_settings(tokenizer: PreTrainedTokenizerBase, temperature: float, top_p: float, max_new_tokens: int,
                      n: int) -> dict:
    """`generate` keywords: pure ancestral sampling (top_k off) at `temperature` with nucleus `top_p` and `n`
    samples per prompt row, or greedy decoding (one row per prompt) at temperature 0."""
    settings = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.eos_token_id}
    if temperature == 0:
        return {**settings, "do_sample": False, "temperature": None, "top_p": None, "top_k": None,
                "num_return_sequences": 1}
    return {**settings, "do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0,
            "num_return_sequences": n}


@dataclass
class Samples:
    """N completions of each of P prompts, as token ids and as text.

    `prompt_ids[p]`: the rendered prompt's ids (no padding); `completion_ids[p][i]`: sample i's generated ids,
    up to and including EOS (padding after it removed); `texts[p][i]`: its text (special tokens skipped,
    stripped); `passes[p]`: forward passes spent on prompt p (see `draw_samples`).
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[list[int]]]
    texts: list[list[str]]
    passes: list[float]

    @property
    def counts(self) -> list[list[int]]:
        """Generated tokens per sample (EOS included)."""
        return [[len(ids) for ids in row] for row in self.completion_ids]


def _sample_batch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], n: int,
                  settings: dict, batched: bool) -> tuple[list[list[int]], list[list[list[int]]]]:
    """(prompt ids, n completions' ids) for each text: one generate call with `num_return_sequences=n`, or n
    calls of one sample."""
    encoded = encode_left_padded(tokenizer, texts, model.device)
    width = encoded["input_ids"].shape[1]
    prompts = [row[mask.bool()].tolist() for row, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
    rows = settings["num_return_sequences"]

    def completions(output) -> list[list[int]]:
        return [row[:generated_length(row, tokenizer)].tolist() for row in output[:, width:]]

    if batched or not settings["do_sample"]:
        new = completions(model.generate(**encoded, **settings))
        repeat = n // rows  # greedy: the one completion stands for all n
        return prompts, [new[b * rows:(b + 1) * rows] * repeat for b in range(len(texts))]
    single = {**settings, "num_return_sequences": 1}
    runs = [completions(model.generate(**encoded, **single)) for _ in range(n)]
    return prompts, [[run[b] for run in runs] for b in range(len(texts))]


def sample_sequences(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *,
                     n: int, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 128,
                     batch_size: int = 8, seed: int | None = 0, chat_template: ChatTemplate = True,
                     batched: bool = True) -> Samples:
    """N samples per prompt with their token ids, in prompt order (the sampler; see `draw_samples`)."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    texts = render_prompts(tokenizer, prompts, chat_template)
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    settings = generate_settings(tokenizer, temperature, top_p, max_new_tokens, n)
    prompt_ids: list[list[int]] = [[] for _ in texts]
    completion_ids: list[list[list[int]]] = [[] for _ in texts]
    passes = [0.0] * len(texts)
    with seeded(seed, model), evaluating(model):
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            with ForwardCounter(model) as counter:
                batch_prompts, batch_ids = _sample_batch(model, tokenizer, [texts[i] for i in batch], n, settings,
                                                         batched)
            for k, index in enumerate(batch):
                prompt_ids[index], completion_ids[index] = batch_prompts[k], batch_ids[k]
                passes[index] = counter.rows / len(batch)
    decoded = [[text.strip() for text in tokenizer.batch_decode(row, skip_special_tokens=True)]
               for row in completion_ids]
    return Samples(prompt_ids, completion_ids, decoded, passes)


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
