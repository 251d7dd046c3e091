"""The statistics every evaluation reports through: means with bootstrap intervals over prompts, win rates
with ties counted one half, and a paired sign-flip test.

Prompts are the unit of resampling: an evaluation draws n samples for each of P prompts, summarises each
prompt by one number (its mean reward, its win fraction, its compliance rate, ...) and resamples the P
prompts with replacement. The interval is the percentile bootstrap (Efron & Tibshirani 1993, "An Introduction
to the Bootstrap", ch. 13) with a fixed seed, so a rerun on the same inputs gives the same interval.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
CONFIDENCE = 0.95
SEED = 0


@dataclass(frozen=True)
class Estimate:
    """A mean over `n` units (prompts) and its bootstrap interval [low, high] at `confidence`."""

    value: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    def to_json(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n": self.n, "confidence": self.confidence}

    def covers(self, truth: float) -> bool:
        return self.low <= truth <= self.high

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}]"


def bootstrap_indices(n: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """[resamples, n] indices of n units drawn with replacement; the same seed gives the same draws, so every
    metric of one evaluation is resampled over the same prompt sets."""
    if n < 1:
        raise ValueError("a bootstrap needs at least one unit")
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def bootstrap_mean(values: Sequence[float] | np.ndarray, *, resamples: int = RESAMPLES,
                   confidence: float = CONFIDENCE, seed: int = SEED) -> Estimate:
    """The mean of per-unit `values` and its percentile-bootstrap interval. One unit gives a zero-width
    interval; non-finite values raise ValueError."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1 or data.size == 0:
        raise ValueError(f"expected a non-empty list of per-unit values, got shape {data.shape}")
    if not np.isfinite(data).all():
        raise ValueError("values to summarise must be finite")
    means = data[bootstrap_indices(data.size, resamples, seed)].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Estimate(float(data.mean()), float(low), float(high), int(data.size), confidence)


def bootstrap_ratio(numerators: Sequence[float] | np.ndarray, denominators: Sequence[float] | np.ndarray, *,
                    resamples: int = RESAMPLES, confidence: float = CONFIDENCE, seed: int = SEED) -> Estimate:
    """Σ numerators / Σ denominators over units (e.g. a KL summed over a prompt's tokens over its token count:
    the per-token mean over all tokens), with the percentile-bootstrap interval of the same ratio over
    resampled units (the same draws as `bootstrap_mean` with the same seed)."""
    top = np.asarray(numerators, dtype=np.float64)
    bottom = np.asarray(denominators, dtype=np.float64)
    if top.shape != bottom.shape or top.ndim != 1 or top.size == 0:
        raise ValueError("expected two non-empty lists of per-unit values of the same length")
    if not (np.isfinite(top).all() and np.isfinite(bottom).all()) or bottom.sum() <= 0:
        raise ValueError("a ratio needs finite values and a positive total denominator")
    draws = bootstrap_indices(top.size, resamples, seed)
    ratios = top[draws].sum(axis=1) / np.maximum(bottom[draws].sum(axis=1), np.finfo(np.float64).tiny)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratios, [alpha, 1.0 - alpha])
    return Estimate(float(top.sum() / bottom.sum()), float(low), float(high), int(top.size), confidence)


def win_fraction(scores: Sequence[float], against: Sequence[float]) -> float:
    """P(a > b) + ½ P(a = b) for a drawn from `scores` and b from `against` (all pairs, one prompt)."""
    a = np.asarray(scores, dtype=np.float64)[:, None]
    b = np.asarray(against, dtype=np.float64)[None, :]
    if a.size == 0 or b.size == 0:
        raise ValueError("a win fraction needs at least one score on each side")
    return float(((a > b) + 0.5 * (a == b)).mean())


def win_rate(scores: Sequence[Sequence[float]], against: Sequence[Sequence[float]], **bootstrap) -> Estimate:
    """The win rate of one system against another over prompts: the mean over prompts of each prompt's
    `win_fraction` (its samples against the other's samples of the same prompt), with the bootstrap interval
    over prompts. Ties count one half, so a system against itself has win rate exactly 0.5."""
    if len(scores) != len(against):
        raise ValueError(f"{len(scores)} prompts on one side but {len(against)} on the other")
    return bootstrap_mean([win_fraction(a, b) for a, b in zip(scores, against)], **bootstrap)


def paired_sign_test(differences: Sequence[float], *, resamples: int = 20000, seed: int = SEED) -> float:
    """Two-sided p-value that paired per-unit differences have mean zero, by flipping their signs.

    Under the null (the two conditions are exchangeable within a unit) each difference is as likely to have
    either sign; p = P(|mean(s·d)| ≥ |mean(d)|) over random signs s. Exact (all 2^m sign patterns of the m
    non-zero differences) for m ≤ 16, else a Monte-Carlo estimate with `resamples` draws and a fixed seed.
    With one binary outcome per condition it is the exact McNemar test on the discordant pairs.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[d != 0]
    if d.size == 0:
        return 1.0
    observed = abs(d.mean()) - 1e-12
    if d.size <= 16:
        signs = np.array(list(itertools.product((-1.0, 1.0), repeat=d.size)))
    else:
        signs = np.random.default_rng(seed).choice((-1.0, 1.0), size=(resamples, d.size))
    return float((np.abs((signs * d).mean(axis=1)) >= observed).mean())
