"""Transfer Q* (Chakraborty et al., arXiv 2405.20495, NeurIPS 2024) on the search driver.

Decoding rule: π(z | s_t) ∝ π_prior(z | s_t) · exp(α · Q̂(s_t, z)) over the prior's top-k tokens z, with
Q̂ the reward of a greedy rollout of the rollout model from [x, y_<t, z] (official code
Soumya1612-Rasha/Transfer-Q@32d0ffe direct.py / indirect.py, "adapted from ARGS").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from alignkit.data.prompts import ChatTemplate, Prompt
from alignkit.decode.core import Completion
from alignkit.decode.methods import Method, register_method
from alignkit.decode.search import SearchSettings, ValueFn, completions, reward_value, search
from alignkit.lazy import lazy
from alignkit.models.rewards import Reward

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

torch = lazy("torch")

MODES = ("greedy", "topk")


def transfer_value(reward: Reward, baseline_reward: Reward | None = None, inv_beta: float = 0.5) -> ValueFn:
    """Q̂ of a rollout text: direct transfer r(x, y) (baseline reward = target reward), or indirect transfer
    exp(inv_beta · (r − r_BL)) · r with the baseline model's reward r_BL.

    The indirect form is the official code's (`delta = r − r_BL; exp(0.5 · delta) · r` in indirect.py, where
    0.5 plays 1/β); UNVERIFIED: the paper's exact importance ratio was not checked.
    """
    direct = reward_value(reward)
    if baseline_reward is None:
        return direct
    baseline = reward_value(baseline_reward)

    def indirect(prompts: list[Prompt], texts: list[str]) -> torch.Tensor:
        r = direct(prompts, texts).float()
        return torch.exp(inv_beta * (r - baseline(prompts, texts).float())) * r
    return indirect


def check_rollout_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                        rollout_model: PreTrainedModel | None,
                        rollout_tokenizer: PreTrainedTokenizerBase | None) -> None:
    """Rollouts reuse the prior's token ids, so the rollout model must share its tokenizer: a given
    `rollout_tokenizer` must have the same vocabulary, and both models must embed every token id."""
    if rollout_model is None or rollout_model is model:
        return
    if rollout_tokenizer is not None and rollout_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError("rollout_model needs the same tokenizer as the prior (vocabularies differ)")
    sizes = [m.get_input_embeddings().weight.shape[0] for m in (model, rollout_model)]
    if min(sizes) < len(tokenizer):
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the models embed {sizes}")


def transfer_q(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *,
               reward: Reward, rollout_model: PreTrainedModel | None = None,
               rollout_tokenizer: PreTrainedTokenizerBase | None = None, k: int = 10, alpha: float = 1.0,
               lookahead: int = 20, mode: str = "greedy", temperature: float = 1.0,
               baseline_reward: Reward | None = None, inv_beta: float = 0.5, max_new_tokens: int = 128,
               batch_size: int = 1, seed: int | None = 0, chat_template: ChatTemplate = True,
               use_cache: bool = True) -> list[Completion]:
    """Transfer Q* decoding with `model` as the prior π_prior (Chakraborty et al., arXiv 2405.20495).

    Each step: prescreen the prior's top-k tokens z; roll each out `lookahead` tokens greedily with
    `rollout_model` (the baseline aligned model ρ_BL; default: the prior itself, from its own KV cache; a
    separate model keeps its own cache and must share the tokenizer); Q̂ = `transfer_value` of the rollout
    text; score = log π_prior(z) + α · Q̂ (`combine_logprobs`); mode "greedy" takes the argmax, "topk"
    samples from softmax(score / temperature). The official code adds α·Q̂ to raw logits instead of
    log-probs: they differ by a per-step constant, so the argmax and the softmax are the same.

    Defaults are the official example.config / CLI (`rm_weight` α=1, `topk`=10, greedy, 128 new tokens,
    rollout `max_new_tokens`=20 for direct transfer; indirect.py uses 5) and inv_beta=0.5 (hard-coded there).
    The paper's prior is π_sft, the code's the DPO model: pass whichever as `model`. Diagnostics: those of
    `search`, plus `baseline_reward_calls` with a baseline reward.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_rollout_model(model, tokenizer, rollout_model, rollout_tokenizer)
    settings = SearchSettings(k=k, lookahead=lookahead, weight=alpha, beams=1, cumulative=False,
                              temperature=temperature if mode == "topk" else None, use_cache=use_cache)
    hypotheses, diagnostics = search(model, tokenizer, prompts, value=transfer_value(reward, baseline_reward, inv_beta),
                                     settings=settings, rollout_model=rollout_model, max_new_tokens=max_new_tokens,
                                     batch_size=batch_size, seed=seed, chat_template=chat_template)
    if baseline_reward is not None:
        for extra in diagnostics:
            extra["baseline_reward_calls"] = extra["reward_calls"]
    return completions(tokenizer, hypotheses, diagnostics)


register_method(Method(
    name="transfer_q", function=transfer_q, mechanism="guided step + search rollouts", needs=("reward",),
    source="Transfer Q*, Chakraborty et al. NeurIPS 2024 (arXiv 2405.20495); Soumya1612-Rasha/Transfer-Q",
    description="prior top-k tokens re-weighted by exp(alpha * Q), Q the reward of a rollout"))
