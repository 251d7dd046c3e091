"""Shuffled group whitening and the multi-positive InfoNCE of WhitenedCSE; alignment and uniformity metrics.

Zhuo, Sun, Wang, Zhu & Yang, "WhitenedCSE: Whitening-based Contrastive Learning of Sentence Embeddings"
(ACL 2023, arXiv 2305.17746), read with its official code (github.com/SupstarZh/WhitenedCSE,
`whitenedcse/shuffled_group_whitening.py` and `whitenedcse/models.py`; only the paper's abstract was read):

* Shuffled group whitening (SGW) of one view `X` [N, D] (N sentences): draw a random channel permutation
  `pi`, split the permuted channels into G contiguous groups of D/G, centre each group over the batch and
  whiten it with ZCA, `Z_g = X_g Sigma_g^{-1/2}`, `Sigma_g = X_g^T X_g / N` (biased, as the code),
  `Sigma_g^{-1/2} = U diag((s + eps)^{-1/2}) U^T` from the eigendecomposition `Sigma_g = U diag(s) U^T`;
  then undo the permutation (`pi^{-1}`), so channel d of the output is whitened channel d of the input.
  Each view gets its own permutation and its own statistics, so the views of one sentence are distorted
  differently ("by shuffling the group division, we derive multiple distortions of a single sample").
* Multi-positive InfoNCE over V views h^0 (the anchor) ... h^{V-1} [B, D], cosine similarity, temperature tau:
  `L = sum_{v=1}^{V-1} (1/B) sum_i -log( exp(cos(h^0_i, h^v_i)/tau) / sum_j exp(cos(h^0_i, h^v_j)/tau) )`,
  i.e. the code's `loss1 + loss2` for three views: each positive view is contrasted against the other
  sentences of that same view only.

Read from the code, and parameters here:
* `eps` (default 0): the code adds none. `detach_transform` (default True): the code builds the matrix from
  `torch.tensor(covs)`, a detached copy, so no gradient flows through Sigma^{-1/2}, only through the
  centring and the product; whether that is intended is UNVERIFIED. The eigendecomposition runs in float64.
* `split`: "views" (default) whitens each view separately, the reading of the abstract. "rows" reproduces
  the released code literally: its layer receives the batch flattened sentence-major (sentence 0's views,
  then sentence 1's, ...) and whitens its first, second and third thirds of the rows separately, so each
  chunk mixes views and the views of one sentence share a permutation. Which one the paper's results used is
  UNVERIFIED (the released `train.py` builds only two views for unsupervised data, and the released
  `models.py` has a constructor call that does not parse).
* `combine` in `multi_positive_info_nce`: "sum" (the code) or "mean" over the positives; the paper's own
  equation is UNVERIFIED.

Alignment and uniformity: Wang & Isola, "Understanding Contrastive Representation Learning through Alignment
and Uniformity on the Hypersphere" (ICML 2020, arXiv 2005.10242), Sec. 4.1, on L2-normalised f:
`L_align = E_{(x, x+)} ||f(x) - f(x+)||^alpha` (alpha = 2) and
`L_uniform = log E_{x, y} exp(-t ||f(x) - f(y)||^2)` (t = 2) over all distinct pairs, as the code's
`align_loss` and `uniform_loss` (which uses `torch.pdist`) compute them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

SPLITS = ("views", "rows")
COMBINES = ("sum", "mean")


def channel_permutation(dim: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random permutation of the `dim` channel indices (a bijection of 0..dim-1)."""
    return torch.randperm(dim, generator=generator)


def inverse_permutation(permutation: torch.Tensor) -> torch.Tensor:
    """`inverse` with `inverse[permutation[k]] = k`, so `x[:, permutation][:, inverse]` is `x`."""
    inverse = torch.empty_like(permutation)
    inverse[permutation] = torch.arange(permutation.numel(), device=permutation.device)
    return inverse


def zca_matrices(covariances: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    """`Sigma^{-1/2} = U diag((s + eps)^{-1/2}) U^T` of each symmetric matrix in `covariances` [G, g, g].

    Computed in float64 (`torch.linalg.eigh`) and returned in the input's dtype.
    """
    values, vectors = torch.linalg.eigh(covariances.double())
    scale = (values + eps).rsqrt()
    return ((vectors * scale.unsqueeze(-2)) @ vectors.transpose(-1, -2)).to(covariances.dtype)


def group_whiten(x: torch.Tensor, groups: int, *, eps: float = 0.0, detach_transform: bool = True) -> torch.Tensor:
    """ZCA-whiten `x` [N, D] within each of `groups` contiguous channel groups, over the batch (dim 0).

    Every group of the output has zero mean and (biased) covariance `Sigma_g (Sigma_g + eps I)^{-1}`, the
    identity when eps = 0. ValueError when D is not a multiple of `groups`, or when eps = 0 and N is not
    larger than the group size (the centred covariance is then singular).
    """
    rows, dim = x.shape
    if groups < 1 or dim % groups:
        raise ValueError(f"groups must divide the dimension {dim}, got {groups}")
    size = dim // groups
    if eps == 0 and rows <= size:
        raise ValueError(f"{rows} rows cannot whiten groups of {size} channels without eps: need more rows")
    centred = x - x.mean(dim=0, keepdim=True)
    blocks = centred.reshape(rows, groups, size).transpose(0, 1)  # [G, N, g]
    covariances = blocks.transpose(1, 2) @ blocks / rows
    transform = zca_matrices(covariances.detach() if detach_transform else covariances, eps)
    return (blocks @ transform).transpose(0, 1).reshape(rows, dim)


def shuffled_group_whitening(x: torch.Tensor, groups: int, *, permutation: torch.Tensor | None = None,
                             generator: torch.Generator | None = None, eps: float = 0.0,
                             detach_transform: bool = True) -> torch.Tensor:
    """SGW of one view `x` [N, D]: permute the channels (`permutation`, else a random one), whiten
    `groups` groups (`group_whiten`), and undo the permutation."""
    if permutation is None:
        permutation = channel_permutation(x.shape[1], generator).to(x.device)
    whitened = group_whiten(x[:, permutation], groups, eps=eps, detach_transform=detach_transform)
    return whitened[:, inverse_permutation(permutation)]


def whiten_views(views: Sequence[torch.Tensor], groups: int, *, split: str = "views",
                 generator: torch.Generator | None = None, eps: float = 0.0,
                 detach_transform: bool = True) -> list[torch.Tensor]:
    """SGW of V views [B, D] (row i of every view is sentence i), each chunk with its own permutation.

    split "views": chunk v is view v. split "rows": the views flattened sentence-major ([B * V, D], rows
    i*V .. i*V+V-1 are sentence i) and cut into V contiguous chunks of B rows, as the released code does.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if len(views) < 2 or len({tuple(view.shape) for view in views}) != 1:
        raise ValueError("need at least two views of the same shape [B, D]")

    def whiten(chunk: torch.Tensor) -> torch.Tensor:
        return shuffled_group_whitening(chunk, groups, generator=generator, eps=eps,
                                        detach_transform=detach_transform)

    if split == "views":
        return [whiten(view) for view in views]
    batch, dim = views[0].shape
    rows = torch.stack(list(views), dim=1).reshape(batch * len(views), dim)
    whitened = torch.cat([whiten(chunk) for chunk in rows.split(batch)])
    return list(whitened.reshape(batch, len(views), dim).unbind(dim=1))


def multi_positive_info_nce(anchor: torch.Tensor, positives: Sequence[torch.Tensor], *,
                            temperature: float = 0.05, combine: str = "sum") -> torch.Tensor:
    """The multi-positive InfoNCE of the module docstring: one cross-entropy term per positive view.

    `anchor` [B, D] is view 0; `positives` are views 1..V-1, row i of each the positive of anchor row i, the
    other rows of that view its negatives. The terms are summed (`combine="sum"`, the code) or averaged.
    """
    if combine not in COMBINES:
        raise ValueError(f"combine must be one of {COMBINES}, got {combine!r}")
    if not positives or temperature <= 0:
        raise ValueError("need at least one positive view and a positive temperature")
    anchor = F.normalize(anchor, dim=-1)
    labels = torch.arange(anchor.shape[0], device=anchor.device)
    terms = [F.cross_entropy(anchor @ F.normalize(view, dim=-1).T / temperature, labels) for view in positives]
    total = torch.stack(terms).sum()
    return total if combine == "sum" else total / len(terms)


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """`E_i ||f(x_i) - f(y_i)||^alpha` over positive pairs (row i of `x` and of `y`), L2-normalised first."""
    if x.shape != y.shape or x.shape[0] == 0:
        raise ValueError(f"positive pairs need two non-empty tensors of one shape, got {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    return (F.normalize(x, dim=-1) - F.normalize(y, dim=-1)).norm(dim=-1).pow(alpha).mean()


def uniformity(x: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """`log E_{i<j} exp(-t ||f(x_i) - f(x_j)||^2)` over all distinct pairs of rows, L2-normalised first."""
    if x.shape[0] < 2:
        raise ValueError("uniformity needs at least two points")
    return torch.pdist(F.normalize(x, dim=-1), p=2).pow(2).mul(-t).exp().mean().log()
