"""Underlying distribution matching (UDM) for BCO: prompt density-ratio weights, computed once before training.

BCO's UDM (Jung et al. 2024, arXiv 2404.04656; TRL `BCOTrainer` with `embedding_func`) reweights undesirable
examples by w(x) = p(x)/(1 − p(x)), where p(x) is a classifier's probability that prompt x comes from the
desirable side. TRL fits scikit-learn's `LogisticRegression(class_weight="balanced")` on prompt embeddings;
this module fits the same model (L2-penalised, C = 1, unpenalised intercept, balanced class weights) with
torch's L-BFGS, so there is no scikit-learn dependency. The weights go into the `scores` column read by
the `bco_udm` objective.
"""

from __future__ import annotations

from alignkit.lazy import lazy

torch = lazy("torch")


def fit_prompt_classifier(
    desirable_embeddings: torch.Tensor,
    undesirable_embeddings: torch.Tensor,
    *,
    C: float = 1.0,
    max_iter: int = 300,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression desirable (1) vs undesirable (0) on embeddings [n, d]; returns (weight [d], bias).

    Minimises Σ_i c_i · BCE(w·x_i + b, y_i) + ||w||² / (2C) with balanced class weights
    c_i = n / (2 · n_{y_i}), the objective of scikit-learn's `LogisticRegression(class_weight="balanced")`.
    """
    if desirable_embeddings.ndim != 2 or undesirable_embeddings.ndim != 2:
        raise ValueError("embeddings must be [n, d] matrices")
    n_d, n_u = desirable_embeddings.size(0), undesirable_embeddings.size(0)
    if n_d == 0 or n_u == 0:
        raise ValueError(f"need prompts from both sides, got {n_d} desirable and {n_u} undesirable")
    x = torch.cat([desirable_embeddings, undesirable_embeddings]).detach().double().cpu()
    y = torch.cat([torch.ones(n_d, dtype=torch.float64), torch.zeros(n_u, dtype=torch.float64)])
    n = n_d + n_u
    sample_weight = torch.cat([torch.full((n_d,), n / (2 * n_d), dtype=torch.float64),
                               torch.full((n_u,), n / (2 * n_u), dtype=torch.float64)])
    weight = torch.zeros(x.size(1), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-12,
                                  tolerance_change=0.0, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = x @ weight + bias
        data = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, weight=sample_weight, reduction="sum")
        loss = data + weight.pow(2).sum() / (2 * C)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


def density_ratio_weights(
    desirable_embeddings: torch.Tensor,
    undesirable_embeddings: torch.Tensor,
    query_embeddings: torch.Tensor,
    min_ratio: float = 0.5,
    max_ratio: float = 10.0,
    *,
    C: float = 1.0,
    max_iter: int = 300,
) -> torch.Tensor:
    """w(x) = clamp(p(x) / (1 − p(x)), min_ratio, max_ratio) for each query embedding [q, d] → [q] (float32).

    p is the classifier fit on desirable vs undesirable prompt embeddings (`fit_prompt_classifier`). The
    ratio is computed as exp(logit), which equals p/(1 − p) exactly; TRL adds 1e-8 to the denominator,
    a difference far below the clamp bounds. Identical prompt distributions give w ≈ 1.
    """
    if min_ratio > max_ratio:
        raise ValueError(f"min_ratio {min_ratio} > max_ratio {max_ratio}")
    weight, bias = fit_prompt_classifier(desirable_embeddings, undesirable_embeddings, C=C, max_iter=max_iter)
    logits = query_embeddings.detach().double().cpu() @ weight + bias
    return logits.clamp(max=80.0).exp().clamp(min=min_ratio, max=max_ratio).float()
