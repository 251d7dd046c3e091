"""K sampled completions per prompt of a dataset (D2O's self-samples: K samples of the reference model,
Duan et al. 2024, arXiv 2403.03419)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from alignkit.data import Record, read_prompts
from alignkit.data.prompts import ChatTemplate, as_completion, resolve_chat_template
from alignkit.decode.sampling import draw_samples
from alignkit.models.loading import Loaded, ensure_loaded


def sample_rows(records: Sequence[Record], model: str | os.PathLike | Loaded, *, k: int = 4,
                max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 8,
                seed: int | None = 0, prompt_field: str = "prompt", chat_template: ChatTemplate = True) -> list[dict]:
    """Each row plus `samples`: k completions of its prompt, in the prompt's format (strings for a string
    prompt, one-message lists `[{"role": "assistant", ...}]` for a message list), which is the `samples`
    data format. Prompts are checked (one DataError for every bad row) before the model is loaded;
    temperature 0 decodes greedily and repeats the completion k times.

    The model reads each prompt through its chat template, a string prompt as one user message (`chat_template`:
    "chatml", "zephyr" or a Jinja file for a model without one). Training tokenizes string prompts as raw text,
    so for string-prompt rows meant for training (D2O) on raw prompts pass `chat_template=False`: the samples are
    then drawn from the text training will see. Message-list prompts go through the template in training too
    and need no option."""
    prompts = read_prompts(records, prompt_field)
    chat_template = resolve_chat_template(chat_template)  # a missing template file is reported before loading
    loaded = ensure_loaded(model)
    texts, _, _ = draw_samples(loaded.model, loaded.tokenizer, prompts, n=k, temperature=temperature, top_p=top_p,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                               chat_template=chat_template)
    return [{**record.data, "samples": [as_completion(prompt, text) for text in samples]}
            for record, prompt, samples in zip(records, prompts, texts)]
