"""Reference log-probs for a training run: precomputed once and cached on disk (then carried by the batches,
`FixedDataset`), or scored every step. Either way the trainer reads them from one callable,
`batch -> (sums, counts)` over the batch's K·B completions."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from typing import Callable, Sequence

import torch
from torch import nn

from alignkit.data import template_fingerprint
from alignkit.data.tokenization import TokenizedExample
from alignkit.models import load, resolve
from alignkit.models.loading import cache_root
from alignkit.models.logprobs import SCORER_INPUTS, CompletionScorer, grouped_logps
from alignkit.models.reference import (
    ReferenceLogpsCache,
    files_fingerprint,
    frozen_copy,
    policy_as_reference,
    reference_fingerprint,
)
from alignkit.train.config import TrainConfig

log = logging.getLogger(__name__)
Batch = dict[str, torch.Tensor]
Collate = Callable[[Sequence[TokenizedExample]], Batch]
ReferenceScores = Callable[[Batch], tuple[torch.Tensor, ...]]  # batch -> (sums, counts[, tokens]) [K·B]


def completions_per_example(examples: Sequence[TokenizedExample]) -> int:
    return sum(len(completions) for _, completions in examples[0].groups)


def scorer_inputs(batch: Batch) -> Batch:
    """The tensors of a batch that a scorer's forward takes (either layout)."""
    return {key: batch[key] for key in SCORER_INPUTS if key in batch}


def precomputed_reference(batch: Batch) -> tuple[torch.Tensor, ...]:
    """The reference log-probs a batch carries (`reference_sums`, `reference_counts`: [B, K]), in the K·B
    completion order, and their token log-probs (`reference_tokens`, [K·B, L]) where an online batch has them."""
    scores = batch["reference_sums"].T.reshape(-1), batch["reference_counts"].T.reshape(-1)
    return (*scores, batch["reference_tokens"]) if "reference_tokens" in batch else scores


def data_fingerprint(examples: Sequence[TokenizedExample]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        for prompt, completions in example.groups:
            digest.update(len(completions).to_bytes(4, "little"))
            for ids in (prompt, *completions):
                digest.update(len(ids).to_bytes(4, "little"))
                digest.update(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    return digest.hexdigest()


def external_reference(config: TrainConfig, device: torch.device) -> nn.Module | None:
    """The reference named in the config (`reference.model`), frozen; None means "the untrained policy"."""
    if config.reference.model is None:
        return None
    return frozen_copy(load(config.reference.model).model.to(device))


def online_reference(config: TrainConfig, policy: nn.Module, device: torch.device,
                     per_token: bool = False) -> ReferenceScores:
    """The reference scored every step by a model that stays fixed in training (with `per_token`, the token
    log-probs too: `(sums, counts, tokens)`).

    LoRA policies use themselves with adapters disabled (no second copy); full fine-tuning keeps a frozen
    copy of the initial weights.
    """
    fixed = external_reference(config, device)
    if fixed is None and not hasattr(policy, "disable_adapter"):
        fixed = frozen_copy(policy)

    def scores(batch: Batch) -> tuple[torch.Tensor, ...]:
        context = contextlib.nullcontext(fixed) if fixed is not None else policy_as_reference(policy)
        with context as model, torch.no_grad():
            return CompletionScorer(model, config.lm_head_chunk, per_token=per_token)(**scorer_inputs(batch))
    return scores


@torch.no_grad()
def score_examples(model: nn.Module, examples: Sequence[TokenizedExample], collate: Collate, batch_size: int,
                   device: torch.device, head_chunk: int | None = None) -> dict[str, torch.Tensor]:
    """Summed completion log-probs (`sums`) and token counts (`counts`), [N, K] in dataset order, for
    the K completions of each example."""
    per_example = completions_per_example(examples)
    sums, counts = [], []
    scorer = CompletionScorer(model, head_chunk)
    for start in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[start:start + batch_size]).items()}
        scores = grouped_logps(scorer, batch, per_example)
        sums.append(torch.stack([s.sum.float().cpu() for s in scores], 1))
        counts.append(torch.stack([s.count.float().cpu() for s in scores], 1))
    return {"sums": torch.cat(sums), "counts": torch.cat(counts)}


def precompute_reference(config: TrainConfig, policy: nn.Module, tokenizer, examples: Sequence[TokenizedExample],
                         policy_fingerprint: str, collate: Collate, device: torch.device) -> dict[str, torch.Tensor]:
    """Reference log-probs of every example, read from the on-disk cache when the fingerprint matches.

    A separate reference model (`reference.model`) is fingerprinted from its files and only loaded when
    the cache misses. Must run before the first optimizer step when the reference is the policy itself.
    """
    external = config.reference.model
    fingerprint = reference_fingerprint(
        weights=files_fingerprint(resolve(external)) if external is not None else policy_fingerprint,
        data=data_fingerprint(examples),
        template=template_fingerprint(tokenizer),
        settings={"max_length": config.data.max_length, "max_prompt_length": config.data.max_prompt_length,
                  "overlong": config.data.overlong, "mixed_precision": config.mixed_precision},
    )
    cache = ReferenceLogpsCache(cache_root() / "reference_logps")
    cache.clean_temporary()
    shape = (len(examples), completions_per_example(examples))
    if config.reference.cache and (cached := cache.load(fingerprint, shape)) is not None:
        log.info("reference log-probs: reused %s (reference model not loaded)", cache.path(fingerprint))
        return cached
    log.info("reference log-probs: computing for %d examples", len(examples))
    model = external_reference(config, device)
    with contextlib.nullcontext(model) if model is not None else policy_as_reference(policy) as reference:
        scores = score_examples(reference, examples, collate, config.batch_size, device, config.lm_head_chunk)
    if config.reference.cache:
        log.info("reference log-probs: cached at %s", cache.save(fingerprint, scores))
    return scores
