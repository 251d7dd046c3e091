"""Sentence encoders whose spaces the representation methods align: all-MiniLM-L6-v2 and a causal LM.

MiniLM embeds as sentence-transformers' all-MiniLM-L6-v2 does: the mean of the last hidden state over the
real tokens (its `1_Pooling` config), L2-normalised (its `Normalize` module), inputs cut at 256 word pieces
(its `max_seq_length`). A causal LM (SmolLM2) embeds a plain sentence, without a chat template, as the mean of
its last hidden state over the sentence's tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignkit.represent.packages import minilm_folder

MINILM_MAX_TOKENS = 256


def load_minilm() -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """all-MiniLM-L6-v2 (a BERT encoder, 384-d) and its tokenizer, from the `represent` extra, in eval mode."""
    folder = minilm_folder()
    model = AutoModel.from_pretrained(folder, dtype=torch.float32)
    return model.eval(), AutoTokenizer.from_pretrained(folder)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `hidden` [B, T, D] over the positions where `mask` [B, T] is 1."""
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def encode(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], *,
           normalize: bool, max_tokens: int = MINILM_MAX_TOKENS, batch_size: int = 32) -> torch.Tensor:
    """Mean-pooled last hidden states of `texts` [N, D] (float32, CPU), L2-normalised when `normalize`.

    Gradients flow when called under grad (fine-tuning); wrap in `torch.no_grad()` to only embed. Right
    padding is masked out of the mean, so an embedding does not depend on its batch up to rounding.
    """
    if not texts:
        raise ValueError("no texts to encode")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    pooled = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[start:start + batch_size]), padding=True, truncation=True,
                          max_length=max_tokens, return_tensors="pt").to(model.device)
        hidden = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       output_hidden_states=True).hidden_states[-1]
        pooled.append(mean_pool(hidden, batch["attention_mask"]).float())
    embeddings = torch.cat(pooled).cpu()
    return torch.nn.functional.normalize(embeddings, dim=-1) if normalize else embeddings
