"""A light contrastive projection that makes two (then three) frozen embedding spaces meet: OneEncoder.

Faye, Azzag & Lebbah, "OneEncoder: A Lightweight Framework for Progressive Alignment of Modalities"
(arXiv 2409.11059), read with its official code (github.com/b-faye/OneEncoder, `contrastive learning/`):

* Each space `m` (a frozen encoder's output, cached) has an input adapter, the code's `ProjectionHead` /
  `AlignmentLayer`: `A_m(x) = LayerNorm(Dropout(W2 · GELU(W1 x + b1) + b2))`, from `d_m` to the width `P`.
* Each space has a learned modality token `t_m` in R^P, drawn from N(0, s^2) with s ~ U(0.1, 0.6) as the
  code's `ModalityTokenEncoder` does, and fused by addition (the code's default "addition" fusion).
* The Universal Projection `UP`, shared by every space: `h = A_m(x) + t_m`,
  `UP(h) = mean_seq(TransformerEncoder(LayerNorm(h)) + h)`; the output is L2-normalised.
* Step 1 trains the adapters, tokens and UP of the first pair with the symmetric InfoNCE loss of CLIP
  (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", arXiv 2103.00020,
  Figure 3): for L2-normalised a_i, b_i and logit scale s = 1/tau,
  `L = 1/2 [ -1/N sum_i log softmax_j(s a_i.b_j)_i  -  1/N sum_j log softmax_i(s a_i.b_j)_j ]`,
  as CLIP trains its image and text projections; UNITER (Chen et al., arXiv 1909.11740) is the
  image-text alignment framing (one joint space for paired modalities), not the loss used here.
* Step 2 (progressive alignment) freezes everything already aligned (UP, adapters, tokens, temperature) and
  trains only a new space's adapter and token against one or more aligned spaces (the code aligns audio
  against text only; the other pairs are then measured zero-shot).

Temperature: `log_scale` = log(1/tau), learnable or fixed (`ProjectorConfig.learn_temperature`), the scale
clipped at 100 as in CLIP (Sec. 2.5). In the official code the forward pass uses
`clamp(temperature.data, 2.5, 3.0)` as the log-scale, detached, so its temperature is in effect fixed at
scale exp(2.5) ~ 12.2 (tau ~ 0.082); `temperature=0.082, learn_temperature=False` reproduces that.

UNVERIFIED (only the paper's abstract and the official code were read): the paper's own equations, layer
sizes and hyper-parameters (defaults here are smaller: width 256, 2 UP layers, feed-forward 512, for CPU);
the code's older variant that maps a small token through an MLP is not implemented. Here each encoder's
output is one pooled sentence vector, so the UP's sequence has length 1 (its self-attention reduces to a
linear map of that position); the code feeds token sequences (ViT patches, BERT tokens) and averages them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

RECALL_KS = (1, 5)


@dataclass(frozen=True)
class ProjectorConfig:
    width: int = 256            # P, the shared space (the code uses 256 or 768)
    layers: int = 2             # UP transformer layers (the code: 1 or 4)
    heads: int = 4
    feedforward: int = 512
    dropout: float = 0.1
    temperature: float = 0.07   # initial tau (CLIP's initial value)
    learn_temperature: bool = True
    max_logit_scale: float = 100.0


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_size: int = 256
    lr: float = 1e-3            # the code's lr and weight decay (AdamW)
    weight_decay: float = 1e-3
    seed: int = 0


class InputAdapter(nn.Sequential):
    """OneEncoder's ProjectionHead / AlignmentLayer: LayerNorm(Dropout(W2 GELU(W1 x + b1) + b2)), d -> P."""

    def __init__(self, dim: int, config: ProjectorConfig):
        super().__init__(nn.Linear(dim, config.width), nn.GELU(), nn.Linear(config.width, config.width),
                         nn.Dropout(config.dropout), nn.LayerNorm(config.width))


class UniversalProjection(nn.Module):
    """OneEncoder's UP: h = x + token; mean over positions of TransformerEncoder(LayerNorm(h)) + h."""

    def __init__(self, config: ProjectorConfig):
        super().__init__()
        self.norm = nn.LayerNorm(config.width)
        layer = nn.TransformerEncoderLayer(config.width, config.heads, config.feedforward, config.dropout,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """`x` [B, P] (one pooled vector) or [B, L, P]; `token` [P]; returns [B, P] (not normalised)."""
        hidden = (x.unsqueeze(1) if x.dim() == 2 else x) + token
        return (self.encoder(self.norm(hidden)) + hidden).mean(dim=1)


class OneEncoderProjector(nn.Module):
    """Per-space adapters and modality tokens around one shared Universal Projection, plus the logit scale."""

    def __init__(self, dims: Mapping[str, int], config: ProjectorConfig = ProjectorConfig(), seed: int = 0):
        super().__init__()
        if not dims:
            raise ValueError("a projector needs at least one space")
        self.config, self.seed = config, seed
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.universal = UniversalProjection(config)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.temperature)),
                                      requires_grad=config.learn_temperature)
        self.adapters = nn.ModuleDict()
        self.tokens = nn.ParameterDict()
        for name, dim in dims.items():
            self.add_space(name, dim)

    def add_space(self, name: str, dim: int) -> None:
        """A new space: its adapter (d -> P) and modality token, seeded by the projector seed and its index."""
        if name in self.adapters:
            raise ValueError(f"space {name!r} is already in the projector")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + 1 + len(self.adapters))
            self.adapters[name] = InputAdapter(dim, self.config)
            spread = float(torch.rand(()) * 0.5 + 0.1)
            self.tokens[name] = nn.Parameter(torch.randn(self.config.width) * spread)

    def extend(self, name: str, dim: int) -> None:
        """OneEncoder step 2's set-up: freeze every parameter present now (the aligned spaces' adapters and
        tokens, the UP, the temperature), then add the space `name`, whose adapter and token stay trainable."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        self.add_space(name, dim)

    def trainable_spaces(self) -> set[str]:
        """The spaces with a trainable adapter or token."""
        return {name for name in self.adapters if self.tokens[name].requires_grad
                or any(parameter.requires_grad for parameter in self.adapters[name].parameters())}

    def universal_trainable(self) -> bool:
        """Whether any parameter of the UP or the temperature is trainable."""
        return self.log_scale.requires_grad or any(parameter.requires_grad for parameter in self.universal.parameters())

    def logit_scale(self) -> torch.Tensor:
        """s = exp(log_scale), clipped at `max_logit_scale` (CLIP Sec. 2.5)."""
        return self.log_scale.exp().clamp(max=self.config.max_logit_scale)

    def embed(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised shared-space embedding of `x` [B, d_name] (or [B, L, d_name])."""
        if name not in self.adapters:
            raise KeyError(f"unknown space {name!r}; the projector has {sorted(self.adapters)}")
        return F.normalize(self.universal(self.adapters[name](x), self.tokens[name]), dim=-1)


def symmetric_info_nce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """CLIP's loss (arXiv 2103.00020, Fig. 3): mean of the row- and column-wise cross-entropies of
    `logit_scale * a @ b.T` with the diagonal as the targets; `a`, `b` [N, P], already L2-normalised."""
    if a.shape != b.shape or a.dim() != 2:
        raise ValueError(f"a and b must be matching [N, P] matrices, got {tuple(a.shape)} and {tuple(b.shape)}")
    logits = logit_scale * a @ b.T
    targets = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def recall_at_k(similarity: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """R@k for queries = rows, the match of row i = column i: the fraction of rows whose match ranks among the
    top k, rank_i = #{j != i : S_ij >= S_ii} (ties count against the match, so a constant S scores 0)."""
    n = similarity.shape[0]
    if similarity.dim() != 2 or similarity.shape[1] != n:
        raise ValueError(f"similarity must be square [N, N], got {tuple(similarity.shape)}")
    diagonal = similarity.diagonal().unsqueeze(1)
    others = ~torch.eye(n, dtype=torch.bool, device=similarity.device)
    ranks = ((similarity >= diagonal) & others).sum(dim=1)
    return {f"R@{k}": float((ranks < k).float().mean()) for k in ks}


def retrieval(a: torch.Tensor, b: torch.Tensor, ks: Sequence[int] = RECALL_KS) -> dict[str, dict[str, float]]:
    """R@k both ways between paired embeddings: a->b (queries a, candidates b) and b->a, cosine similarity."""
    similarity = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T
    return {"a_to_b": recall_at_k(similarity, ks), "b_to_a": recall_at_k(similarity.T, ks)}


@torch.no_grad()
def embed_space(projector: OneEncoderProjector, name: str, x: torch.Tensor) -> torch.Tensor:
    """`projector.embed` in eval mode (dropout off), without gradients; the mode is restored."""
    was_training = projector.training
    projector.eval()
    try:
        return projector.embed(name, x)
    finally:
        projector.train(was_training)


def pair_retrieval(projector: OneEncoderProjector, spaces: Mapping[str, torch.Tensor], a: str, b: str,
                   ks: Sequence[int] = RECALL_KS) -> dict[str, dict[str, float]]:
    """R@k both ways between spaces `a` and `b` of `spaces` (rows paired) after projection."""
    return retrieval(embed_space(projector, a, spaces[a]), embed_space(projector, b, spaces[b]), ks)


def check_paired(spaces: Mapping[str, torch.Tensor], pairs: Sequence[tuple[str, str]], batch_size: int) -> int:
    """The number of paired rows; ValueError when the spaces differ in rows or a batch cannot hold 2 pairs."""
    rows = {name: tensor.shape[0] for name, tensor in spaces.items()}
    named = {name for pair in pairs for name in pair}
    if not pairs or not named <= rows.keys():
        raise ValueError(f"pairs {list(pairs)} must name spaces among {sorted(rows)}")
    counts = {rows[name] for name in named}
    if len(counts) != 1:
        raise ValueError(f"paired spaces must have the same rows, got {rows}")
    if batch_size < 2 or counts == {1}:
        raise ValueError("contrastive training needs a batch size and a row count of at least 2")
    return counts.pop()


def train_alignment(projector: OneEncoderProjector, spaces: Mapping[str, torch.Tensor],
                    pairs: Sequence[tuple[str, str]], config: TrainConfig = TrainConfig()) -> list[float]:
    """Train the projector's trainable parameters (only those with requires_grad) with the sum over `pairs` of
    the symmetric InfoNCE loss on random batches of paired rows (in-batch negatives); returns the losses.
    Batches and dropout are drawn from `config.seed` alone (the global RNG is left as it was), so a run
    repeats exactly whatever ran before it."""
    rows = check_paired(spaces, pairs, config.batch_size)
    trainable = [parameter for parameter in projector.parameters() if parameter.requires_grad]
    if not trainable:
        raise ValueError("the projector has no trainable parameters")
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    losses = []
    projector.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # dropout
        for _ in range(config.steps):
            batch = torch.randperm(rows, generator=generator)[:config.batch_size]
            loss = sum(symmetric_info_nce(projector.embed(a, spaces[a][batch]), projector.embed(b, spaces[b][batch]),
                                          projector.logit_scale()) for a, b in pairs)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    projector.eval()
    return losses


def align_new_space(projector: OneEncoderProjector, name: str, spaces: Mapping[str, torch.Tensor],
                    anchors: Sequence[str], config: TrainConfig = TrainConfig()) -> list[float]:
    """OneEncoder step 2: train only the adapter and token of `name` (added with `projector.extend`, so all
    else is frozen) against each of the already aligned `anchors`; returns the losses."""
    if projector.trainable_spaces() != {name} or projector.universal_trainable():
        raise ValueError(f"add {name!r} with projector.extend first: only its adapter and token may train")
    if not anchors or name in anchors or not set(anchors) <= set(projector.adapters):
        raise ValueError(f"anchors {list(anchors)} must be aligned spaces among {sorted(projector.adapters)}")
    return train_alignment(projector, spaces, [(name, anchor) for anchor in anchors], config)
