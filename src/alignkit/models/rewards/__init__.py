"""Rewards and verifiers behind one interface: `Reward.score(prompts, completions) -> Tensor[B] | Tensor[B, k]`."""

from alignkit.models.rewards.aspects import MULTI_ASPECTS, AspectJudge, SafetyJudge
from alignkit.models.rewards.base import CachedReward, Content, Direction, Reward, TextReward, WeightedSum
from alignkit.models.rewards.calibration import (CalibratedReward, EmpiricalCDF, best_of_n_transform, exponential,
                                                 fit_reference_cdf, signed_exponential, worst_of_n_transform)
from alignkit.models.rewards.classifier import SequenceClassifierReward
from alignkit.models.rewards.judge import (DEFAULT_PAIRWISE_TEMPLATE, DEFAULT_POINTWISE_TEMPLATE, LLMJudge,
                                           NextTokenJudge, PairwiseJudge)
from alignkit.models.rewards.verifiers import (ExactMatch, ForbiddenWords, InstructionChecks, JsonSchema, JsonValid,
                                               MaxChars, MaxWords, MinWords, Refusal, RegexMatch, RequiredWords)

__all__ = [
    "AspectJudge", "CachedReward", "CalibratedReward", "Content", "DEFAULT_PAIRWISE_TEMPLATE",
    "DEFAULT_POINTWISE_TEMPLATE", "Direction", "EmpiricalCDF", "ExactMatch", "ForbiddenWords", "InstructionChecks",
    "JsonSchema", "JsonValid", "LLMJudge", "MULTI_ASPECTS", "MaxChars", "MaxWords", "MinWords", "NextTokenJudge",
    "PairwiseJudge", "Refusal", "RegexMatch", "RequiredWords", "Reward", "SafetyJudge", "SequenceClassifierReward",
    "TextReward", "WeightedSum", "best_of_n_transform", "exponential", "fit_reference_cdf", "signed_exponential",
    "worst_of_n_transform",
]
