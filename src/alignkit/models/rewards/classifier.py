"""Reward models stored as Hugging Face sequence classifiers (`AutoModelForSequenceClassification`).

num_labels = 1 gives a scalar reward [B] (the usual Bradley–Terry reward model); num_labels = k gives [B, k]
with `attributes` taken from `config.id2label` (a multi-objective reward such as DPA's, arXiv 2402.18571).

Rows are tokenized exactly as the trainer tokenizes them (`alignkit.data.tokenize_examples`: message lists
through the chat template, string completions followed by EOS) and the reward is read where training reads
it, at each completion's last token (`RewardScorer`), so a reward model scores at inference what it was
trained on. Batched, right-padded, under `torch.no_grad()`.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignkit.data import Example, TruncationConfig, collate_rows, tokenize_examples
from alignkit.data.prompts import Content
from alignkit.lazy import lazy
from alignkit.models.rewards.base import Reward, check_lengths

torch = lazy("torch")


class SequenceClassifierReward(Reward):
    """Scores from a sequence-classification model folder (or an already loaded `model` and `tokenizer`).

    `max_length` truncates over-long rows as training does: the prompt keeps its last tokens, then the
    completion is cut.
    """

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
        self.truncation = TruncationConfig.at_most(max_length)
        self.batch_size = batch_size

    def score(self, prompts: Sequence[Content], completions: Sequence[Content]) -> torch.Tensor:
        from alignkit.models.reward_head import RewardScorer

        with torch.no_grad():
            check_lengths(prompts, completions)
            for prompt, completion in zip(prompts, completions):
                if isinstance(prompt, str) != isinstance(completion, str):
                    raise ValueError("prompt and completion must both be strings, or both message lists")
            examples = [Example.single(p, c, f"row {i}") for i, (p, c) in enumerate(zip(prompts, completions), 1)]
            tokenized, _ = tokenize_examples(examples, self.tokenizer, self.truncation)
            device = next(self.model.parameters()).device
            scorer = RewardScorer(self.model)
            chunks = []
            for start in range(0, len(tokenized), self.batch_size):
                batch = collate_rows(tokenized[start:start + self.batch_size], self.tokenizer.pad_token_id)
                chunks.append(scorer(batch["input_ids"].to(device), batch["completion_mask"].to(device),
                                     batch["attention_mask"].to(device)).cpu())
            logits = torch.cat(chunks) if chunks else torch.empty(0, max(1, len(self.attributes)))
            return logits[:, 0] if not self.attributes else logits
