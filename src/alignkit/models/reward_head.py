"""Scalar (or k-attribute) reward heads over a causal LM backbone: loading and batched scoring.

A reward model here is a transformers `AutoModelForSequenceClassification` built from a causal LM
checkpoint (the backbone's weights, a new linear `score` head with `num_labels` outputs). It saves and
loads with plain transformers. Its reward for (prompt, completion) is the head applied to the hidden
state of the completion's last token, found from the batch layout rather than from pad-token ids, so an
EOS that doubles as the pad token cannot confuse it.
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from alignkit.models.loading import Loaded, load_tokenizer, resolve
from alignkit.models.logprobs import segment_attention_mask


def load_reward_model(name_or_path: str | os.PathLike, num_labels: int = 1,
                      dtype: torch.dtype = torch.float32) -> Loaded:
    """A sequence-classification model with `num_labels` outputs from any causal LM (or a trained reward
    model); a new head is initialised when the checkpoint has none."""
    folder = resolve(name_or_path)
    if folder.is_file():
        raise ValueError(f"{folder}: a reward model needs a Hugging Face folder; load the GGUF once with "
                         "alignkit.models.load and save it, or use a built-in name")
    tokenizer = load_tokenizer(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=num_labels, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    return Loaded(model, tokenizer, str(folder))


def reward_parts(model: PreTrainedModel) -> tuple[nn.Module, nn.Module]:
    """The backbone and the `score` head of a sequence-classification model (through PEFT wrappers)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(base, "score", None)
    if head is None:
        raise TypeError(f"{type(base).__name__} has no `score` head; expected an AutoModelForSequenceClassification")
    return getattr(base, base.base_model_prefix), head


class RewardScorer(nn.Module):
    """Rewards [N, k] of the N completions of a batch from `collate_pairs` (plain rows) or
    `collate_shared_prefix` (N = K·B, in the same order as `CompletionScorer`'s sequences)."""

    def __init__(self, model: PreTrainedModel):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, completion_mask: torch.Tensor,
                attention_mask: torch.Tensor | None = None, **shared_prefix: torch.Tensor) -> torch.Tensor:
        backbone, head = reward_parts(self.model)
        if shared_prefix:
            slots = shared_prefix["slots"]
            mask = segment_attention_mask(shared_prefix["segment_ids"], shared_prefix["context_ids"],
                                          next(self.model.parameters()).dtype)
            hidden = backbone(input_ids=input_ids, attention_mask=mask, position_ids=shared_prefix["position_ids"],
                              use_cache=False).last_hidden_state
        else:
            rows = torch.arange(input_ids.size(0), device=input_ids.device).unsqueeze(1).expand_as(input_ids)
            slots = torch.where(completion_mask.bool(), rows, -1)
            hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        row, column = (slots >= 0).nonzero(as_tuple=True)
        slot = slots[row, column]
        count = int(slot.max()) + 1
        last = torch.full((count,), -1, dtype=torch.long, device=input_ids.device)
        flat = row * input_ids.size(1) + column
        last = last.scatter_reduce(0, slot, flat, reduce="amax")
        chosen = hidden.reshape(-1, hidden.size(-1))[last]
        return head(chosen).float()
