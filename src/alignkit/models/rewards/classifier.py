"""Reward models stored as Hugging Face sequence classifiers (`AutoModelForSequenceClassification`).

num_labels = 1 gives a scalar reward [B] (the usual Bradley–Terry reward model); num_labels = k gives [B, k]
with `attributes` taken from `config.id2label` (a multi-objective reward such as DPA's, objectives.md §13).
Message-list prompts and completions are rendered together with the tokenizer's chat template; strings are
joined as prompt + completion. Batched, right- or left-padded as the tokenizer says, under `torch.no_grad()`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alignkit.models.rewards.base import Content, Reward, _check_lengths


class SequenceClassifierReward(Reward):
    """Scores from a sequence-classification model folder (or an already loaded `model` and `tokenizer`)."""

    def __init__(self, model_name_or_path: str | None = None, model=None, tokenizer=None, batch_size: int = 8,
                 max_length: int | None = None, device: str | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.model = model if model is not None else AutoModelForSequenceClassification.from_pretrained(model_name_or_path)
        self.tokenizer = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model_name_or_path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.eval()
        if device is not None:
            self.model.to(device)
        labels = int(self.model.config.num_labels)
        id2label = self.model.config.id2label or {}
        self.attributes = () if labels == 1 else tuple(str(id2label.get(i, f"LABEL_{i}")) for i in range(labels))
        self.batch_size, self.max_length = batch_size, max_length

    def render(self, prompt: Content, completion: Content) -> str:
        if isinstance(prompt, list) and isinstance(completion, list) and getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(prompt + completion, tokenize=False)
        if isinstance(prompt, str) and isinstance(completion, str):
            return prompt + completion
        raise ValueError("prompt and completion must both be strings, or both message lists (with a chat template)")

    @torch.no_grad()
    def score(self, prompts: Sequence[Content], completions: Sequence[Content]) -> torch.Tensor:
        _check_lengths(prompts, completions)
        texts = [self.render(p, c) for p, c in zip(prompts, completions)]
        device = next(self.model.parameters()).device
        chunks = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[i:i + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=self.max_length is not None, max_length=self.max_length,
                                 add_special_tokens=not isinstance(prompts[0], list))
            chunks.append(self.model(**enc.to(device)).logits.float().cpu())
        logits = torch.cat(chunks) if chunks else torch.empty(0, max(1, len(self.attributes)))
        return logits[:, 0] if not self.attributes else logits
