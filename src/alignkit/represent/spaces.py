"""Align two embedding spaces with a linear map, and evaluate it by word translation (retrieval).

Convention: rows are words. A source row x (width d_s) maps to W x, with W of shape [d_out, d_s]; on a matrix
of rows that is X Wᵀ. A target row y is compared as y itself, or as Pᵀ y when the target was reduced by PCA.

- Orthogonal Procrustes (Schönemann 1966; Conneau et al. 2018, "Word Translation Without Parallel Data",
  arXiv 1710.04087, Section 2, Eq. 2): W = argmin_{WᵀW = I} ‖X Wᵀ − Y‖_F = U Vᵀ, with U Σ Vᵀ the SVD of YᵀX over
  the dictionary pairs' source rows X and target rows Y. For d_s ≠ d_t the thin SVD gives a semi-orthogonal W
  (`reduction="semi-orthogonal"`). When d_t > d_s, W has orthonormal columns and is the exact least-squares
  solution among such maps (‖X Wᵀ‖ is then fixed, so minimising the residual = maximising tr(Wᵀ YᵀX)). When
  d_t < d_s, W has orthonormal rows and maximises Σ⟨W x_i, y_i⟩, which is not the least-squares minimum there
  (‖W x‖ varies with W). `reduction="pca"` instead projects the wider side onto the top principal directions
  of its dictionary rows and solves the square problem there.
- Least squares (Mikolov et al. 2013, "Exploiting Similarities among Languages for Machine Translation",
  arXiv 1309.4168, Eq. 2): W = argmin ‖X Wᵀ − Y‖_F, unconstrained.
- CSLS (Conneau et al. 2018, Section 2.3, Eq. 6): CSLS(Wx, y) = 2 cos(Wx, y) − r_T(Wx) − r_S(y), r_T(Wx) the mean
  cosine of Wx to its k nearest targets and r_S(y) the mean cosine of y to its k nearest mapped source words.
- Iterative Procrustes refinement (Conneau et al. 2018, Section 2.2; MUSE `dico_builder.py`, dico_build
  "S2T&T2S", dico_max_rank N): Procrustes on a seed dictionary, then repeatedly a new dictionary of the mutual
  CSLS nearest neighbours among the N most frequent words of each side and Procrustes on it. Without a
  dictionary the seed is the words spelled identically in both vocabularies (Smith et al. 2017, "Offline
  bilingual word vectors, orthogonal transformations and the inverted softmax", arXiv 1702.03859).

All similarities are computed in query batches, so memory stays at batch_size × vocabulary floats.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch

REDUCTIONS = ("semi-orthogonal", "pca")
PREPROCESS_STEPS = ("unit", "center")
MUSE_PREPROCESS = ("unit", "center", "unit")
CRITERIA = ("nn", "csls")


@dataclass(frozen=True)
class Alignment:
    """A linear map between spaces: source row x ↦ W x; target row y ↦ Pᵀ y (y itself when P is None)."""

    weight: torch.Tensor                       # W [d_out, d_source]
    target_basis: torch.Tensor | None = None   # P [d_target, d_out], orthonormal columns, or None

    def map_source(self, rows: torch.Tensor) -> torch.Tensor:
        """X Wᵀ: the source rows in the shared space."""
        return rows @ self.weight.T

    def map_target(self, rows: torch.Tensor) -> torch.Tensor:
        """Y P (or Y): the target rows in the shared space."""
        return rows if self.target_basis is None else rows @ self.target_basis


def preprocess(vectors: torch.Tensor, steps: Sequence[str] = MUSE_PREPROCESS) -> torch.Tensor:
    """Apply "unit" (rows to length 1) and "center" (subtract the mean row) in order.

    The usual chain is unit, center, unit: MUSE's `--normalize_embeddings renorm,center,renorm` and VecMap's
    (Artetxe et al. 2018, "A robust self-learning method for fully unsupervised cross-lingual mappings of word
    embeddings", arXiv 1805.06297, Section 3.1) length normalisation, mean centering, length normalisation.
    """
    out = vectors.float()
    for step in steps:
        if step == "unit":
            out = torch.nn.functional.normalize(out, dim=1)
        elif step == "center":
            out = out - out.mean(0, keepdim=True)
        else:
            raise ValueError(f"unknown preprocessing step {step!r}; choose from {', '.join(PREPROCESS_STEPS)}")
    return out


def random_orthogonal(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """A Haar-random [rows, cols] matrix with orthonormal columns (rows ≥ cols) or rows: QR of a Gaussian,
    signs fixed by diag(R) (Mezzadri 2007, "How to generate random matrices from the classical compact groups",
    arXiv math-ph/0609050, Section 5)."""
    generator = torch.Generator().manual_seed(seed)
    tall = torch.randn(max(rows, cols), min(rows, cols), generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(tall)
    q = q * torch.sign(torch.diagonal(r))
    return (q if rows >= cols else q.T).float()


def pca_basis(rows: torch.Tensor, width: int) -> torch.Tensor:
    """The top `width` principal directions [d, width] (orthonormal columns) of the centred rows [n, d]."""
    centred = rows.double() - rows.double().mean(0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[:width].T.float()


def orthogonal_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """W = U Vᵀ from the thin SVD U Σ Vᵀ = YᵀX: maximises tr(Wᵀ YᵀX) over (semi-)orthogonal W [d_t, d_s]."""
    u, _, vh = torch.linalg.svd(y.double().T @ x.double(), full_matrices=False)
    return (u @ vh).float()


def procrustes(x: torch.Tensor, y: torch.Tensor, reduction: str = "semi-orthogonal") -> Alignment:
    """Orthogonal Procrustes on dictionary rows x [n, d_s] ↔ y [n, d_t] (Conneau et al. 2018, Eq. 2).

    Equal widths: W = U Vᵀ, orthogonal. Different widths, `reduction`:
    - "semi-orthogonal": the same formula with the thin SVD; W [d_t, d_s] has orthonormal columns (d_t > d_s,
      the least-squares optimum among such maps) or orthonormal rows (d_t < d_s).
    - "pca": the wider side projected onto its `min(d_s, d_t)` principal directions (of its dictionary rows),
      then a square Procrustes; if the target is wider it is compared as Pᵀ y.
    """
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"procrustes needs the same positive number of rows, got {x.shape[0]} and {y.shape[0]}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose from {', '.join(REDUCTIONS)}")
    d_s, d_t = x.shape[1], y.shape[1]
    if reduction == "semi-orthogonal" or d_s == d_t:
        return Alignment(orthogonal_map(x, y))
    if d_t > d_s:
        basis = pca_basis(y, d_s)
        return Alignment(orthogonal_map(x, y @ basis), basis)
    basis = pca_basis(x, d_t)
    return Alignment(orthogonal_map(x @ basis, y) @ basis.T)


def least_squares(x: torch.Tensor, y: torch.Tensor) -> Alignment:
    """W = argmin ‖X Wᵀ − Y‖_F (Mikolov et al. 2013, Eq. 2) by `torch.linalg.lstsq`; = YᵀX (XᵀX)⁻¹ at full rank."""
    solution = torch.linalg.lstsq(x.double(), y.double()).solution  # Wᵀ [d_s, d_t]
    return Alignment(solution.T.float())


def cosine_factors(alignment: Alignment, source: torch.Tensor, target: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(queries, keys) with queries[i] · keys[j] = cos(W x_i, Pᵀ y_j), in the narrower of d_s and d_out.

    cos(Wx, t) = xᵀ(Wᵀ t̂) / ‖Wx‖, so when d_s < d_out the queries are x / ‖Wx‖ and the keys Wᵀ t̂; otherwise
    the queries are the unit rows of X Wᵀ and the keys the unit rows t̂.
    """
    keys = torch.nn.functional.normalize(alignment.map_target(target.float()), dim=1)
    mapped = alignment.map_source(source.float())
    if source.shape[1] < mapped.shape[1]:
        scale = mapped.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return source.float() / scale, keys @ alignment.weight
    return torch.nn.functional.normalize(mapped, dim=1), keys


def similarity_topk(a: torch.Tensor, b: torch.Tensor, k: int,
                    batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest a_i · b_j for every row of a: (values, indices), each [len(a), k], batched over a."""
    k = min(k, b.shape[0])
    values, indices = [], []
    for start in range(0, a.shape[0], batch_size):
        top = (a[start:start + batch_size] @ b.T).topk(k, dim=1)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)


def csls_penalties(queries: torch.Tensor, keys: torch.Tensor, k: int = 10,
                   batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(r_T [n_queries], r_S [n_keys]) of CSLS (Conneau et al. 2018, Eq. 6): each row's mean similarity to its k
    nearest rows of the other side."""
    r_target = similarity_topk(queries, keys, k, batch_size)[0].mean(1)
    r_source = similarity_topk(keys, queries, k, batch_size)[0].mean(1)
    return r_target, r_source


def csls_scores(queries: torch.Tensor, keys: torch.Tensor, r_target: torch.Tensor,
                r_source: torch.Tensor) -> torch.Tensor:
    """CSLS(Wx_i, y_j) = 2 cos − r_T(Wx_i) − r_S(y_j), [len(queries), len(keys)] (Conneau et al. 2018, Eq. 6)."""
    return 2 * queries @ keys.T - r_target[:, None] - r_source[None, :]


def retrieve(queries: torch.Tensor, keys: torch.Tensor, rows: torch.Tensor, *, criterion: str = "csls",
             depth: int = 10, csls_k: int = 10, batch_size: int = 1024) -> torch.Tensor:
    """The `depth` best keys [len(rows), depth] for queries[rows], by plain cosine ("nn") or CSLS ("csls").

    For CSLS r_S is computed against every query (the whole mapped source vocabulary), as in MUSE.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose from {', '.join(CRITERIA)}")
    chosen = queries[rows]
    if criterion == "nn":
        return similarity_topk(chosen, keys, depth, batch_size)[1]
    r_target = similarity_topk(chosen, keys, csls_k, batch_size)[0].mean(1)
    r_source = similarity_topk(keys, queries, csls_k, batch_size)[0].mean(1)
    depth = min(depth, keys.shape[0])
    best = [csls_scores(chosen[s:s + batch_size], keys, r_target[s:s + batch_size], r_source).topk(depth).indices
            for s in range(0, len(chosen), batch_size)]
    return torch.cat(best)


def gold_targets(pairs: torch.Tensor) -> tuple[torch.Tensor, list[set[int]]]:
    """Group dictionary pairs [m, 2] (source, target) by source: (distinct sources, their gold target sets)."""
    gold: dict[int, set[int]] = {}
    for source, target in pairs.tolist():
        gold.setdefault(source, set()).add(target)
    return torch.tensor(list(gold), dtype=torch.long), list(gold.values())


def precision_at_k(ranked: torch.Tensor, gold: Sequence[Collection[int]],
                   ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """P@k: the fraction of source words with any gold target among their k best ranked targets."""
    if len(gold) != ranked.shape[0] or not gold:
        raise ValueError(f"{ranked.shape[0]} ranked rows for {len(gold)} gold sets")
    lists = ranked.tolist()
    return {f"p@{k}": sum(bool(set(row[:k]) & set(g)) for row, g in zip(lists, gold)) / len(gold) for k in ks}


def evaluate(alignment: Alignment, source: torch.Tensor, target: torch.Tensor, test_pairs: torch.Tensor, *,
             ks: Sequence[int] = (1, 5, 10), csls_k: int = 10, batch_size: int = 1024) -> dict[str, dict[str, float]]:
    """Held-out word translation: P@k of every source word of `test_pairs` over the whole target vocabulary,
    by nearest neighbour and by CSLS."""
    queries, keys = cosine_factors(alignment, source, target)
    rows, gold = gold_targets(test_pairs)
    return {criterion: precision_at_k(retrieve(queries, keys, rows, criterion=criterion, depth=max(ks),
                                               csls_k=csls_k, batch_size=batch_size), gold, ks)
            for criterion in CRITERIA}


def identical_strings(source_words: Sequence[str], target_words: Sequence[str]) -> torch.Tensor:
    """Pairs [m, 2] (source index, target index) of the words spelled the same in both, in source order."""
    where = {word: index for index, word in reversed(list(enumerate(target_words)))}
    pairs = [(i, where[word]) for i, word in enumerate(source_words) if word in where]
    return torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)


def mutual_csls_dictionary(queries: torch.Tensor, keys: torch.Tensor, top_n: int, csls_k: int = 10,
                           batch_size: int = 1024) -> torch.Tensor:
    """Pairs (i, j), i and j among the first `top_n` rows (the most frequent words), where j is the CSLS-best key
    of query i over all keys and i the CSLS-best query of key j over all queries (MUSE S2T&T2S)."""
    r_target, r_source = csls_penalties(queries, keys, csls_k, batch_size)
    n_queries, n_keys = min(top_n, len(queries)), min(top_n, len(keys))
    forward = torch.cat([csls_scores(queries[s:min(s + batch_size, n_queries)], keys,
                                     r_target[s:min(s + batch_size, n_queries)], r_source).argmax(1)
                         for s in range(0, n_queries, batch_size)])
    backward = torch.cat([csls_scores(queries, keys[s:min(s + batch_size, n_keys)], r_target,
                                      r_source[s:min(s + batch_size, n_keys)]).argmax(0)
                          for s in range(0, n_keys, batch_size)])
    sources = torch.arange(n_queries)
    keep = (forward < n_keys) & (backward[forward.clamp_max(n_keys - 1)] == sources)
    return torch.stack([sources[keep], forward[keep]], dim=1)


def refine(source: torch.Tensor, target: torch.Tensor, seed_pairs: torch.Tensor, *, iterations: int = 5,
           top_n: int = 10000, csls_k: int = 10, reduction: str = "semi-orthogonal",
           batch_size: int = 1024) -> tuple[Alignment, list[torch.Tensor]]:
    """Iterative Procrustes (Conneau et al. 2018, Section 2.2): Procrustes on `seed_pairs`, then `iterations`
    times a new dictionary (`mutual_csls_dictionary` among the `top_n` first rows of each side, which must be
    in frequency order) and Procrustes on it. Returns the final map and every dictionary used, seed first."""
    if iterations < 0 or top_n < 1:
        raise ValueError(f"refine needs iterations ≥ 0 and top_n ≥ 1, got {iterations} and {top_n}")
    dictionaries = [seed_pairs]
    alignment = procrustes(source[seed_pairs[:, 0]], target[seed_pairs[:, 1]], reduction)
    for _ in range(iterations):
        pairs = mutual_csls_dictionary(*cosine_factors(alignment, source, target), top_n, csls_k, batch_size)
        if len(pairs) == 0:
            break
        dictionaries.append(pairs)
        alignment = procrustes(source[pairs[:, 0]], target[pairs[:, 1]], reduction)
    return alignment, dictionaries
