"""WhitenedCSE fine-tuning of all-MiniLM-L6-v2 on the sentences alignkit ships, measured before and after.

Method: Zhuo et al., "WhitenedCSE: Whitening-based Contrastive Learning of Sentence Embeddings" (ACL 2023,
arXiv 2305.17746), as `alignkit.represent.whitening` implements it. One training step, unsupervised: a
batch of B sentences goes through the encoder V times in train mode (dropout on: V views, SimCSE's noise),
each view is mean-pooled (MiniLM's own pooling; the official code pools BERT's [CLS]), shuffled-group
whitened, passed through the training-only head `tanh(W z + b)` (the code's `MLPLayer`: SGW, then `dense`,
then `tanh`; dropped at evaluation, its `--mlp_only_train`), and the multi-positive InfoNCE is minimised.
AdamW (weight decay 0) with a linear decay to 0 and no warm-up, the Hugging Face `Trainer` defaults the
official code trains with; inputs cut at 32 word pieces (its `--max_seq_length 32`).

Scaled for MiniLM: 64 groups of 6 channels for 384-d, the code's group size (128 groups of 6 for 768-d
BERT-base). Batch 64 and lr 3e-5 are SimCSE's BERT-base settings; the released `run_unsup_example.sh` uses
128 per device on two GPUs and lr 1e-5 (the paper's own table is UNVERIFIED here). eps = 1e-5, not the
code's 0: all-MiniLM-L6-v2 has three dead channels (127, 223 and 319, final LayerNorm gain below 2e-9, standard
deviation below 2e-9 over sentences), so the group holding each has a singular covariance and eps = 0 gives a
NaN loss at the first step; 1e-5 is about 0.1% of the smallest live group eigenvalue measured on a batch
(about 0.011; median 0.035). Default 20 steps (1280 sentences, under one epoch): a few CPU minutes.

Evaluation, honestly scoped: the shipped demo prompts are "{base task}. {instruction}" with three instruction
families (demo/README.md), so a base task stated with two different instructions is a real, if loose,
positive pair ("Describe a campfire. Answer in at most 15 words." / "Describe a campfire. Do not use any
commas in your answer."). Every base task with at least two distinct prompts is held out; training uses
`alignkit.represent.sentences.shipped_sentences()` minus every sentence that contains a held-out base task.
Reported, on MiniLM's normalised eval-mode embeddings: alignment over the same-task pairs (Wang & Isola,
arXiv 2005.10242, alpha = 2), uniformity over all held-out prompts (t = 2), same-task top-1 retrieval (is
a prompt's nearest other prompt one of its base task?) with its chance rate, and, separately, alignment
of two dropout views of each held-out prompt. These are not paraphrases; nothing here is an STS benchmark.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data import load_records
from alignkit.data.prompts import prompt_text
from alignkit.represent.encoders import MINILM_MAX_TOKENS, encode, load_minilm
from alignkit.represent.packages import minilm_folder
from alignkit.represent.sentences import shipped_sentences
from alignkit.represent.whitening import (COMBINES, SPLITS, alignment, multi_positive_info_nce, uniformity,
                                          whiten_views)

DEMO_PROMPTS = ("builtin:demo/train.jsonl", "builtin:demo/heldout.jsonl")


@dataclass(frozen=True)
class WhitenConfig:
    steps: int = 20
    batch_size: int = 64
    lr: float = 3e-5
    temperature: float = 0.05
    views: int = 3
    groups: int = 64
    eps: float = 1e-5
    split: str = "views"
    combine: str = "sum"
    detach_transform: bool = True
    max_tokens: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [(self.steps >= 1, "steps must be at least 1"),
                  (self.batch_size >= 2, "batch size must be at least 2"),
                  (self.lr > 0, "lr must be positive"), (self.temperature > 0, "temperature must be positive"),
                  (self.views >= 2, "views must be at least 2"), (self.groups >= 1, "groups must be at least 1"),
                  (self.eps >= 0, "eps must be non-negative"), (self.split in SPLITS, f"split must be one of {SPLITS}"),
                  (self.combine in COMBINES, f"combine must be one of {COMBINES}"),
                  (self.max_tokens >= 2, "max tokens must be at least 2")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def check_dimension(self, dim: int) -> None:
        """ValueError unless `groups` divides `dim` and, without eps, each whitened chunk has more rows than
        a group has channels (a chunk is `batch_size` rows in both splits)."""
        if dim % self.groups:
            raise ValueError(f"groups ({self.groups}) must divide the embedding width {dim}")
        if self.eps == 0 and self.batch_size <= dim // self.groups:
            raise ValueError(f"batch size {self.batch_size} cannot whiten groups of {dim // self.groups} "
                             "channels without eps: use a larger batch, more groups or eps > 0")


class HeldOut(NamedTuple):
    prompts: list[str]
    labels: list[int]  # the base task of each prompt, as an index


def base_task(prompt: str) -> str:
    """The base task of a demo prompt "{task}. {instruction}": the text before the first '. '."""
    return prompt.split(". ", 1)[0]


def demo_prompts() -> list[str]:
    """The unique user prompts of the shipped demo train and held-out sets, sorted."""
    return sorted({prompt_text(record.data["prompt"]) for source in DEMO_PROMPTS for record in load_records(source)})


def same_task_heldout(prompts: Sequence[str]) -> HeldOut:
    """The prompts whose base task has at least two distinct prompts, labelled by base task (sorted)."""
    tasks: dict[str, list[str]] = defaultdict(list)
    for prompt in sorted(set(prompts)):
        tasks[base_task(prompt)].append(prompt)
    kept = [group for _, group in sorted(tasks.items()) if len(group) >= 2]
    return HeldOut([p for group in kept for p in group], [k for k, group in enumerate(kept) for _ in group])


def training_sentences(sentences: Sequence[str], heldout: HeldOut) -> list[str]:
    """`sentences` without any that contains a held-out base task (case-insensitive)."""
    tasks = {base_task(prompt).lower() for prompt in heldout.prompts}
    return [s for s in sentences if not any(task in s.lower() for task in tasks)]


def positive_pairs(labels: Sequence[int]) -> tuple[list[int], list[int]]:
    """Every pair of indices i < j with the same label."""
    pairs = [(i, j) for i in range(len(labels)) for j in range(i + 1, len(labels)) if labels[i] == labels[j]]
    return [i for i, _ in pairs], [j for _, j in pairs]


def same_label_top1(embeddings: torch.Tensor, labels: Sequence[int]) -> float:
    """The fraction of rows whose nearest other row (cosine similarity) has the same label."""
    unit = nn.functional.normalize(embeddings, dim=-1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(float("-inf"))
    nearest = similarity.argmax(dim=1).tolist()
    return sum(labels[i] == labels[n] for i, n in enumerate(nearest)) / len(labels)


def chance_top1(labels: Sequence[int]) -> float:
    """The expected `same_label_top1` of a uniformly random neighbour: mean_i (n_label(i) - 1) / (N - 1)."""
    counts: dict[int, int] = defaultdict(int)
    for label in labels:
        counts[label] += 1
    return sum((counts[label] - 1) / (len(labels) - 1) for label in labels) / len(labels)


def dropout_views(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], views: int,
                  max_tokens: int) -> list[torch.Tensor]:
    """`views` mean-pooled embeddings [B, D] of `texts` from one forward pass in train mode (dropout on)."""
    model.train()
    pooled = encode(model, tokenizer, list(texts) * views, normalize=False, max_tokens=max_tokens,
                    batch_size=len(texts) * views)
    return list(pooled.reshape(views, len(texts), -1).unbind(0))


def whitened_head(dim: int, std: float = 0.02) -> nn.Module:
    """The training-only head after SGW, `tanh(W z + b)`, initialised as BERT initialises a linear layer."""
    dense = nn.Linear(dim, dim)
    nn.init.normal_(dense.weight, std=std)
    nn.init.zeros_(dense.bias)
    return nn.Sequential(dense, nn.Tanh())


def training_loss(model: PreTrainedModel, head: nn.Module, tokenizer: PreTrainedTokenizerBase,
                  texts: Sequence[str], config: WhitenConfig, generator: torch.Generator) -> torch.Tensor:
    """The WhitenedCSE loss of one batch: dropout views, SGW, head, multi-positive InfoNCE."""
    views = dropout_views(model, tokenizer, texts, config.views, config.max_tokens)
    whitened = whiten_views(views, config.groups, split=config.split, generator=generator, eps=config.eps,
                            detach_transform=config.detach_transform)
    projected = [head(view) for view in whitened]
    return multi_positive_info_nce(projected[0], projected[1:], temperature=config.temperature,
                                   combine=config.combine)


def batches(count: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[list[int]]:
    """`steps` batches of distinct indices below `count`: a fresh permutation each epoch, the last partial
    batch of an epoch dropped (so no sentence is its own negative)."""
    if batch_size > count:
        raise ValueError(f"batch size {batch_size} is larger than the {count} training sentences")
    made = 0
    while True:
        order = torch.randperm(count, generator=generator).tolist()
        for start in range(0, count - batch_size + 1, batch_size):
            if made == steps:
                return
            made += 1
            yield order[start:start + batch_size]


def train(model: PreTrainedModel, head: nn.Module, tokenizer: PreTrainedTokenizerBase, sentences: Sequence[str],
          config: WhitenConfig) -> list[float]:
    """Fine-tune `model` and `head` for `config.steps` steps; the loss of every step (FloatingPointError on a
    non-finite loss, before the update)."""
    generator = torch.Generator().manual_seed(config.seed)
    parameters = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / config.steps)
    losses = []
    for indices in batches(len(sentences), config.batch_size, config.steps, generator):
        loss = training_loss(model, head, tokenizer, [sentences[i] for i in indices], config, generator)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {len(losses) + 1}: the loss is {loss.item()}; a whitening group "
                                     "is singular (a constant channel?): use eps > 0")
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(round(loss.item(), 5))
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, heldout: HeldOut, seed: int = 0) -> dict:
    """Alignment, uniformity and same-task retrieval on the held-out prompts (module docstring)."""
    model.eval()
    embeddings = encode(model, tokenizer, heldout.prompts, normalize=True)
    first, second = positive_pairs(heldout.labels)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        view_a, view_b = dropout_views(model, tokenizer, heldout.prompts, 2, MINILM_MAX_TOKENS)
    model.eval()
    return {"same_task_alignment": round(alignment(embeddings[first], embeddings[second]).item(), 5),
            "uniformity": round(uniformity(embeddings).item(), 5),
            "same_task_top1": round(same_label_top1(embeddings, heldout.labels), 5),
            "dropout_alignment": round(alignment(view_a, view_b).item(), 5)}


def fine_tune(config: WhitenConfig, save: str | Path | None = None) -> dict:
    """The whole demonstration: data, MiniLM before, WhitenedCSE fine-tuning, MiniLM after (and `save`)."""
    started = time.perf_counter()
    config.check_dimension(AutoConfig.from_pretrained(minilm_folder()).hidden_size)  # before any slow work
    heldout = same_task_heldout(demo_prompts())
    sentences = training_sentences(shipped_sentences(), heldout)
    if config.batch_size > len(sentences):
        raise ValueError(f"batch size {config.batch_size} is larger than the {len(sentences)} training sentences")
    torch.manual_seed(config.seed)
    model, tokenizer = load_minilm()
    pairs = len(positive_pairs(heldout.labels)[0])
    before = evaluate(model, tokenizer, heldout, config.seed)
    head = whitened_head(model.config.hidden_size, model.config.initializer_range)
    training_started = time.perf_counter()
    losses = train(model, head, tokenizer, sentences, config)
    train_seconds = time.perf_counter() - training_started
    after = evaluate(model, tokenizer, heldout, config.seed)
    if save is not None:
        model.save_pretrained(save)
        tokenizer.save_pretrained(save)
    return {"method": "WhitenedCSE (Zhuo et al. 2023, arXiv 2305.17746)", "model": "all-MiniLM-L6-v2",
            "config": asdict(config),
            "data": {"train_sentences": len(sentences), "heldout_prompts": len(heldout.prompts),
                     "heldout_tasks": len(set(heldout.labels)), "same_task_pairs": pairs,
                     "same_task_top1_chance": round(chance_top1(heldout.labels), 5)},
            "positives": "held-out: two demo prompts of one base task with different instructions; "
                         "dropout_alignment: two dropout views of one held-out prompt",
            "before": before, "after": after, "losses": losses, "train_seconds": round(train_seconds, 1),
            "seconds": round(time.perf_counter() - started, 1), "saved": None if save is None else str(save)}
