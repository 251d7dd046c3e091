"""K sampled completions per prompt of a dataset (D2O's self-samples: K samples of the reference model,
Duan et al. 2024, arXiv 2403.03419)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from alignkit.data import Record, read_prompts
from alignkit.data.prompts import as_completion
from alignkit.decode.sampling import draw_samples
from alignkit.models.loading import Loaded, ensure_loaded


def sample_rows(records: Sequence[Record], model: str | os.PathLike | Loaded, *, k: int = 4,
                max_new_tokens: int = 128, temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 8,
                seed: int | None = 0, prompt_field: str = "prompt") -> list[dict]:
    """Each row plus `samples`: k completions of its prompt, in the prompt's format (strings for a string
    prompt, one-message lists `[{"role": "assistant", ...}]` for a message list), which is the `samples`
    data format. Prompts are checked (one DataError for every bad row) before the model is loaded;
    temperature 0 decodes greedily and repeats the completion k times."""
    prompts = read_prompts(records, prompt_field)
    loaded = ensure_loaded(model)
    texts, _, _ = draw_samples(loaded.model, loaded.tokenizer, prompts, n=k, temperature=temperature, top_p=top_p,
                               max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed)
    return [{**record.data, "samples": [as_completion(prompt, text) for text in samples]}
            for record, prompt, samples in zip(records, prompts, texts)]
