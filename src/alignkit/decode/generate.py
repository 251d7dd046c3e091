"""Batched generation from Hugging Face causal LMs, for chat (message-list) and raw-text prompts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

Prompt = str | list[dict]


def render_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> str:
    """The text fed to the model: message lists go through the chat template; strings are used as is."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


@contextmanager
def _left_padding(tokenizer: PreTrainedTokenizerBase) -> Iterator[None]:
    """Temporarily pad on the left (needed for batched decoder-only generation)."""
    previous = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield
    finally:
        tokenizer.padding_side = previous


def _generate_batch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str],
                    settings: dict) -> list[str]:
    """Generate for one batch of rendered prompts; returns len(texts) * num_return_sequences completions."""
    encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    output = model.generate(**encoded, **settings)
    new_tokens = output[:, encoded["input_ids"].shape[1]:]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *,
             max_new_tokens: int = 64, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
             num_return_sequences: int = 1, batch_size: int = 16, seed: int | None = None) -> list[list[str]]:
    """Complete every prompt; returns, in prompt order, a list of `num_return_sequences` stripped completions.

    Prompts are sorted by length into batches (less padding), left-padded, and decoded with the KV cache
    under `torch.inference_mode()`. With `seed`, `torch.manual_seed(seed)` is called once so that a run
    with the same inputs and batch size reproduces.
    """
    if seed is not None:
        torch.manual_seed(seed)
    texts = [render_prompt(tokenizer, prompt) for prompt in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]))
    settings: dict = dict(max_new_tokens=max_new_tokens, do_sample=do_sample, num_return_sequences=num_return_sequences,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if do_sample:
        settings.update(temperature=temperature, top_p=top_p, top_k=0)
    else:
        settings.update(temperature=None, top_p=None, top_k=None)
    results: list[list[str]] = [[] for _ in texts]
    was_training = model.training
    model.eval()
    try:
        with _left_padding(tokenizer), torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = order[start:start + batch_size]
                completions = _generate_batch(model, tokenizer, [texts[i] for i in batch], settings)
                for k, index in enumerate(batch):
                    results[index] = completions[k * num_return_sequences:(k + 1) * num_return_sequences]
    finally:
        model.train(was_training)
    return results
