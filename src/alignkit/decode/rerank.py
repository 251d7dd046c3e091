"""Mechanism (c): sample N completions per prompt, score them with a reward, keep one.

* Best-of-N (BoN): y* = argmax_{i ≤ N} r(x, y_i) with y_1..y_N i.i.d. ~ π(·|x); default N = 8 as in AISteer360's
  `best_of_n` [code: IBM/AISteer360 aisteer360/algorithms/output_control/best_of_n] and TRL's
  `trl.extras.BestOfNSampler`. Cost ≈ N forward passes per generated token plus N reward calls per prompt.
* Worst-of-N (WoN, the "best-of-N jailbreaking" setting of InfAlign, arXiv 2412.19792): an adversary keeps
  y* = argmin_i r(x, y_i) of a safety reward; `worst_of_n_attack_success` gives ASR@N. Not Hughes et al.'s
  prompt-augmentation attack.
* Calibrated BoN (InfAlign, Balashankar et al., ICML 2025, arXiv 2412.19792): the reward is replaced by its
  per-prompt empirical CDF under reference-policy samples, C(x, y) = P_{z∼π_ref}[r(x, z) < r(x, y)] + ½·P[=]
  (tie rule of `EmpiricalCDF`; the paper's exact rule is UNVERIFIED), optionally through a transform Φ.

Samples come from `alignkit.decode.sampling.draw_samples` (one `generate` call per batch of prompts with
`num_return_sequences=N`); all B·N candidates are scored in one reward call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alignkit.data.prompts import ChatTemplate, Content, Prompt, as_completion
from alignkit.decode.core import Completion
from alignkit.decode.methods import Method, register_method
from alignkit.decode.sampling import draw_samples
from alignkit.lazy import lazy
from alignkit.models.rewards import CalibratedReward, EmpiricalCDF, Reward, fit_reference_cdf

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

torch = lazy("torch")

SELECT_RULES = ("max", "min")
Calibration = CalibratedReward | EmpiricalCDF | Sequence[Sequence[Content]] | None


@dataclass
class Candidates:
    """All N candidates of every prompt: texts and token counts [P][N], rewards [P, N] (raw and, with a
    calibration, calibrated), per-prompt forward passes and reward calls."""

    texts: list[list[str]]
    tokens: list[list[int]]
    rewards: torch.Tensor
    calibrated: torch.Tensor | None
    forward_passes: list[float]
    reward_calls: list[int]


def _calibrated_reward(reward: Reward, calibration: Calibration,
                       prompts: Sequence[Prompt]) -> tuple[CalibratedReward | None, list[int]]:
    """The `CalibratedReward` to report and select with, and the reference completions scored per prompt.

    `calibration` is a `CalibratedReward` over `reward`, a fitted `EmpiricalCDF` of `reward`'s scores, or one
    list of reference-policy completions per prompt (scored with `reward` in one call, then fitted with the
    default `EmpiricalCDF()`, tie rule "mid"; pass an `EmpiricalCDF(tie="right")` for the P[≤] form).
    """
    if calibration is None:
        return None, [0] * len(prompts)
    if isinstance(calibration, CalibratedReward):
        if calibration.reward is not reward:
            raise ValueError("calibration must calibrate the same reward object that is passed as `reward`")
        return calibration, [0] * len(prompts)
    if isinstance(calibration, EmpiricalCDF):
        return CalibratedReward(reward, calibration), [0] * len(prompts)
    if len(calibration) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(calibration)} lists of reference completions")
    cdf = fit_reference_cdf(reward, list(zip(prompts, calibration)))
    return CalibratedReward(reward, cdf), [len(refs) for refs in calibration]


def score_samples(reward: Reward, prompts: Sequence[Prompt], texts: Sequence[Sequence[str]],
                  calibration: Calibration = None) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """(raw rewards [P, N], calibrated rewards Φ(C(x, r)) [P, N] or None, reward calls per prompt).

    All P·N candidates go through `reward` in one call; calibration reuses those raw scores (`EmpiricalCDF.
    calibrate`, then the `CalibratedReward`'s transform), so it costs no extra reward call on the candidates.
    """
    if reward.attributes:
        raise ValueError("reranking needs a scalar reward; scalarise first (Direction or WeightedSum)")
    n = len(texts[0]) if texts else 0
    flat_prompts = [p for p, row in zip(prompts, texts) for _ in row]
    flat = [as_completion(p, t) for p, row in zip(prompts, texts) for t in row]
    raw = reward(flat_prompts, flat).float().reshape(len(prompts), n)
    calibrated_reward, reference_calls = _calibrated_reward(reward, calibration, prompts)
    calibrated = None
    if calibrated_reward is not None:
        u = calibrated_reward.cdf.calibrate(flat_prompts, raw.reshape(-1))
        transform = calibrated_reward.transform
        calibrated = (u if transform is None else transform(u)).float().reshape(len(prompts), n)
    return raw, calibrated, [n + extra for extra in reference_calls]


def sample_candidates(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *,
                      reward: Reward, n: int, temperature: float = 1.0, top_p: float = 1.0,
                      calibration: Calibration = None, batched: bool = True, max_new_tokens: int = 128,
                      batch_size: int = 8, seed: int | None = 0,
                      chat_template: ChatTemplate = True) -> Candidates:
    """All N scored candidates per prompt (`draw_samples` then `score_samples`), e.g. for ASR@N curves."""
    texts, tokens, passes = draw_samples(model, tokenizer, prompts, n=n, temperature=temperature, top_p=top_p,
                                         max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                         chat_template=chat_template, batched=batched)
    raw, calibrated, calls = score_samples(reward, prompts, texts, calibration)
    return Candidates(texts, tokens, raw, calibrated, passes, calls)


def selected_indices(scores: torch.Tensor, select: str) -> torch.Tensor:
    """Per row of [P, N] scores, the index of the max ("max") or min ("min") score; ties go to the first."""
    if select not in SELECT_RULES:
        raise ValueError(f"select must be one of {SELECT_RULES}, got {select!r}")
    target = scores.amax(dim=1, keepdim=True) if select == "max" else scores.amin(dim=1, keepdim=True)
    return (scores == target).int().argmax(dim=1)  # argmax of a 0/1 row is its first 1


def rerank(candidates: Candidates, select: str) -> list[Completion]:
    """One `Completion` per prompt: the candidate with the best (`select`) calibrated reward when there is one,
    else raw reward; diagnostics as listed in `sample_and_rerank`."""
    scores = candidates.calibrated if candidates.calibrated is not None else candidates.rewards
    chosen = selected_indices(scores, select).tolist()
    completions = []
    for p, i in enumerate(chosen):
        tokens = candidates.tokens[p][i]
        diagnostics = {"forward_passes": candidates.forward_passes[p],
                       "forward_passes_per_token": candidates.forward_passes[p] / max(tokens, 1),
                       "reward_calls": candidates.reward_calls[p], "n": len(candidates.texts[p]),
                       "selected_index": i, "selected_reward": float(candidates.rewards[p, i]),
                       "mean_reward": float(candidates.rewards[p].mean())}
        if candidates.calibrated is not None:
            diagnostics["selected_reward_calibrated"] = float(candidates.calibrated[p, i])
            diagnostics["mean_reward_calibrated"] = float(candidates.calibrated[p].mean())
        completions.append(Completion(candidates.texts[p][i], tokens, diagnostics))
    return completions


def sample_and_rerank(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *,
                      reward: Reward, n: int, select: str, temperature: float = 1.0, top_p: float = 1.0,
                      calibration: Calibration = None, batched: bool = True, max_new_tokens: int = 128,
                      batch_size: int = 8, seed: int | None = 0,
                      chat_template: ChatTemplate = True) -> list[Completion]:
    """Draw N samples per prompt from π at (`temperature`, `top_p`), score them with `reward`, keep
    argmax (`select="max"`) or argmin (`"min"`) per prompt, ties to the first sample.

    Diagnostics: `forward_passes`, `forward_passes_per_token` (per selected token; ≈ N), `reward_calls`
    (N plus the reference completions scored for calibration), `n`, `selected_index`, `selected_reward` (raw),
    `mean_reward` (raw, over the N); with `calibration`, also `selected_reward_calibrated` and
    `mean_reward_calibrated`. For all N candidates use `sample_candidates` (then `rerank`). Prompts are rendered
    as in `draw_samples` (`chat_template`: a string prompt through the chat template unless False).
    """
    candidates = sample_candidates(model, tokenizer, prompts, reward=reward, n=n, temperature=temperature,
                                   top_p=top_p, calibration=calibration, batched=batched,
                                   max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                   chat_template=chat_template)
    return rerank(candidates, select)


def best_of_n(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *,
              reward: Reward, n: int = 8, temperature: float = 1.0, top_p: float = 1.0,
              calibration: Calibration = None, batched: bool = True, max_new_tokens: int = 128,
              batch_size: int = 8, seed: int | None = 0,
              chat_template: ChatTemplate = True) -> list[Completion]:
    """Best-of-N: the sample with the highest reward (n = 8: AISteer360 `best_of_n` / TRL `BestOfNSampler`).

    With `calibration` (InfAlign calibrated BoN) the selection score is Φ(C(x, r(x, y))), C the per-prompt
    empirical CDF of r under reference-policy samples. C is non-decreasing in r for a fixed prompt, so the
    calibrated pick has the same reward as the raw pick — it is the same sample unless the step-function CDF
    maps several top candidates to one value (then the first of them). Calibration therefore changes the
    reported `selected_reward_calibrated` (an estimate of the win probability against one π_ref sample), not
    the pick; it changes picks only when calibrated rewards are combined, e.g. `reward=WeightedSum` of
    several `CalibratedReward`s (then pass no `calibration`).
    """
    return sample_and_rerank(model, tokenizer, prompts, reward=reward, n=n, select="max", temperature=temperature,
                             top_p=top_p, calibration=calibration, batched=batched, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, seed=seed, chat_template=chat_template)


def worst_of_n(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *,
               reward: Reward, n: int = 8, temperature: float = 1.0, top_p: float = 1.0,
               calibration: Calibration = None, batched: bool = True, max_new_tokens: int = 128,
               batch_size: int = 8, seed: int | None = 0,
               chat_template: ChatTemplate = True) -> list[Completion]:
    """Worst-of-N (best-of-N jailbreaking, InfAlign arXiv 2412.19792): the adversary keeps the sample with the
    lowest (safety) reward. n = 8 mirrors `best_of_n`; the ASR@N curve uses N ∈ {1, 2, 4, …, 32}."""
    return sample_and_rerank(model, tokenizer, prompts, reward=reward, n=n, select="min", temperature=temperature,
                             top_p=top_p, calibration=calibration, batched=batched, max_new_tokens=max_new_tokens,
                             batch_size=batch_size, seed=seed, chat_template=chat_template)


def win_rate(a: torch.Tensor, b: torch.Tensor) -> float:
    """P(a beats b) with ties counted ½, over all pairs of the last dimension:

        W = mean_{i,j} ( 1[a_i > b_j] + ½·1[a_i = b_j] ),

    averaged over leading (prompt) dimensions: a [..., m] and b [..., k] hold the rewards of m and k samples of
    the two policies for the same prompts; for one paired sample per prompt use shapes [P, 1].
    """
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    a, b = a.unsqueeze(-1), b.unsqueeze(-2)
    return float(((a > b).double() + 0.5 * (a == b).double()).mean())


def worst_of_n_attack_success(scores: torch.Tensor, threshold: float, n: int | None = None) -> float:
    """ASR@N = mean over prompts of 1[min_{i ≤ N} s_i < threshold] for safety scores [prompts, N];
    with `n`, only the first n samples of each prompt count (one point of the ASR@N curve)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    if scores.dim() != 2:
        raise ValueError(f"scores must be [prompts, N], got shape {tuple(scores.shape)}")
    if n is not None:
        if not 1 <= n <= scores.shape[1]:
            raise ValueError(f"n must be in 1..{scores.shape[1]}, got {n}")
        scores = scores[:, :n]
    return float((scores.amin(dim=1) < threshold).double().mean())


register_method(Method(
    name="best_of_n", function=best_of_n, mechanism="sample-and-rerank", needs=("reward",),
    source="standard best-of-N; TRL BestOfNSampler, AISteer360 best_of_n (n=8); InfAlign calibration "
           "arXiv 2412.19792",
    description="N samples per prompt in one batch, keep the highest reward"))

register_method(Method(
    name="worst_of_n", function=worst_of_n, mechanism="sample-and-rerank", needs=("reward",),
    source="worst-of-N (BoN jailbreaking) evaluation, InfAlign arXiv 2412.19792",
    description="N samples per prompt, keep the lowest reward (an adversary's pick)"))
