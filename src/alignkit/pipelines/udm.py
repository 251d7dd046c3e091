"""BCO's underlying distribution matching weights for a dataset of unpaired rows (Jung et al. 2024,
arXiv 2404.04656; TRL `BCOTrainer` with `embedding_func`): w(x) = p(x)/(1 − p(x)) per row, p a classifier's
probability that prompt x comes from a desirable row, fit on mean-pooled prompt embeddings."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

from alignkit.data import DataError, Record, read_prompts
from alignkit.data.prompts import content_key
from alignkit.data.rows import read_labels
from alignkit.models.embeddings import prompt_embeddings
from alignkit.models.loading import Loaded, ensure_loaded
from alignkit.objectives.udm import density_ratio_weights


@dataclass(frozen=True)
class UDMSummary:
    """What the weights were fit on, and their range."""

    desirable: int  # prompts of desirable rows the classifier was fit on
    undesirable: int
    distinct_prompts: int  # prompts embedded (identical prompts are embedded once)
    min: float
    mean: float
    max: float


def udm_rows(records: Sequence[Record], model: str | os.PathLike | Loaded, *, prompt_field: str = "prompt",
             label_field: str = "label", sample_size: int = 1024, seed: int = 0, min_ratio: float = 0.5,
             max_ratio: float = 10.0, batch_size: int = 8) -> tuple[list[dict], UDMSummary]:
    """Each row plus `scores: [w(x)]` (an existing `scores` field is replaced), the column `bco_udm` trains on.

    The classifier is fit on the embeddings of up to `sample_size` prompts from each side (a `seed`-ed random
    sample; TRL's `prompt_sample_size`); every row's prompt is then weighted, w clamped to
    [min_ratio, max_ratio]. Rows are checked before the model is loaded.
    """
    if sample_size < 1 or batch_size < 1:
        raise ValueError(f"sample_size and batch_size must be at least 1, got {sample_size}, {batch_size}")
    if not 0 < min_ratio <= max_ratio:
        raise ValueError(f"need 0 < min_ratio <= max_ratio, got {min_ratio}, {max_ratio}")
    prompts = read_prompts(records, prompt_field)
    labels = read_labels(records, label_field)
    desirable = [i for i, label in enumerate(labels) if label]
    undesirable = [i for i, label in enumerate(labels) if not label]
    if not desirable or not undesirable:
        raise DataError(f"UDM needs rows with {label_field} true and rows with false, got {len(desirable)} true "
                        f"and {len(undesirable)} false")
    rng = random.Random(seed)
    fit_desirable = sorted(rng.sample(desirable, min(sample_size, len(desirable))))
    fit_undesirable = sorted(rng.sample(undesirable, min(sample_size, len(undesirable))))

    keys = [content_key(prompt) for prompt in prompts]
    first_row = {}  # prompt key -> row of its first occurrence: identical prompts are embedded once
    for row, key in enumerate(keys):
        first_row.setdefault(key, row)
    position = {key: i for i, key in enumerate(first_row)}
    loaded = ensure_loaded(model)
    embedded = prompt_embeddings(loaded.model, loaded.tokenizer, [prompts[row] for row in first_row.values()],
                                 batch_size)
    embeddings = embedded[[position[key] for key in keys]]
    weights = density_ratio_weights(embeddings[fit_desirable], embeddings[fit_undesirable], embeddings,
                                    min_ratio=min_ratio, max_ratio=max_ratio)
    rows = [{**record.data, "scores": [float(weight)]} for record, weight in zip(records, weights.tolist())]
    summary = UDMSummary(len(fit_desirable), len(fit_undesirable), len(first_row), float(weights.min()),
                         float(weights.mean()), float(weights.max()))
    return rows, summary
