"""Mechanism (a): a per-token guided step that combines several models' and rewards' next-token scores.

* `combine_logprobs`: the combination formula (log π_base + Σ_i w_i · term_i) / T.
* `GuidedLogits`: a logits processor (`generate(logits_processor=...)`) that applies it inside `model.generate`,
  with the next-token log-probs of guide models (each with its own incremental `DynamicCache`) and of arbitrary
  term callables.
* `genarm`: the GenARM preset (Xu et al., ICLR 2025, arXiv 2410.08193; official code Yuancheng-Xu/GenARM),
  π_decode(y_t | x, y_<t) ∝ π_base(y_t | x, y_<t) · Π_i π_arm_i(y_t | x, y_<t)^α_i.

Where the processor sits: in transformers 5.24 `GenerationMixin._get_logits_processor` merges user processors
after the default processors (min-length, suppress-tokens, ...) and *before* the sampling warpers (temperature,
top-k, top-p). `genarm` therefore calls `generate(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)` (no
warper is added) and divides by its own temperature inside the processor, so the formula acts on raw log-probs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from alignkit.data.prompts import ChatTemplate, Prompt, render_prompts
from alignkit.decode.core import Completion, ForwardCounter, decode_new, encode_left_padded, seeded
from alignkit.decode.methods import Method, register_method
from alignkit.lazy import lazy
from alignkit.models.modes import evaluating

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

torch = lazy("torch")

Term = Callable[["torch.Tensor"], "torch.Tensor"]


def combine_logprobs(base_logprobs: torch.Tensor, terms: Sequence[tuple[float, torch.Tensor]],
                     temperature: float = 1.0) -> torch.Tensor:
    """(log π_base + Σ_i w_i · term_i) / temperature, over the last dimension's tokens.

    `base_logprobs` and each term are [B, V] (or [B, k] over k candidate tokens); the result is a score
    to sample from with softmax or to take the argmax of.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    combined = base_logprobs.float()
    for weight, term in terms:
        if weight:
            combined = combined + weight * term.float()
    return combined / temperature


def vocabulary_size(model: PreTrainedModel) -> int:
    """The width of the model's next-token distribution (its text config's `vocab_size`)."""
    return int(model.config.get_text_config().vocab_size)


def check_same_vocabulary(model: PreTrainedModel, guides: Sequence[PreTrainedModel]) -> None:
    """Raise ValueError unless every guide scores the same vocabulary as `model` (token-level guidance
    adds log-probs token id by token id, so the guides must share the base tokenizer)."""
    expected = vocabulary_size(model)
    for index, guide in enumerate(guides):
        if vocabulary_size(guide) != expected:
            raise ValueError(f"guide {index} has a vocabulary of {vocabulary_size(guide)} tokens but the base model "
                             f"has {expected}: token-level guidance needs models that share the base tokenizer")


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded row as `generate` builds them: cumsum(mask) − 1, padding at 0."""
    return (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)


class GuidedLogits:
    """scores ← (log softmax(scores) + Σ_i w_i · log π_guide_i(·|ids) + Σ_j v_j · term_j(ids)) / temperature.

    `guides` are (weight, causal LM) pairs sharing the base vocabulary; `terms` are (weight, callable) pairs
    mapping the current `input_ids` [B, t] to [B, V] scores (e.g. a token-level reward). Each guide keeps its
    own `DynamicCache` and is fed only the tokens added since the previous call; left padding is handled by
    carrying the prompt attention mask (set with `for_prompts`, else all ones), extending it with ones for new
    tokens, and passing position ids cumsum(mask) − 1 exactly as `generate` does for the base model.
    `use_cache=False` recomputes each guide over the whole sequence at every step (reference path for tests).

    A call whose `input_ids` do not extend the previous call's (or the first call after `for_prompts`) starts a
    new generation, so one processor serves several `generate` calls (a beam reorder also falls back to a full
    recompute). Returns float32 scores.

    A plain class, not a subclass of `transformers.LogitsProcessor` (so that importing this module does not
    import transformers): `generate` only calls each processor of its `LogitsProcessorList` as
    `processor(input_ids, scores)` and checks no base class (transformers 5.24 `_get_logits_processor`,
    `_merge_criteria_processor_list`, `LogitsProcessorList.__call__`).
    """

    def __init__(self, guides: Sequence[tuple[float, PreTrainedModel]] = (), terms: Sequence[tuple[float, Term]] = (),
                 *, temperature: float = 1.0, use_cache: bool = True):
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        sizes = {vocabulary_size(guide) for _, guide in guides}
        if len(sizes) > 1:
            raise ValueError(f"the guides have different vocabulary sizes {sorted(sizes)}; they must share one")
        self.guides = list(guides)
        self.terms = list(terms)
        self.temperature = temperature
        self.use_cache = use_cache
        self._prompt_mask: torch.Tensor | None = None
        self._ids: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._caches: list[DynamicCache] = []

    def for_prompts(self, attention_mask: torch.Tensor) -> GuidedLogits:
        """Set the prompt attention mask of the next `generate` call (rows are repeated for
        `num_return_sequences`); the next call starts a new generation. Returns self."""
        self._prompt_mask = attention_mask
        self._ids = None
        return self

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.guides and scores.shape[-1] != vocabulary_size(self.guides[0][1]):
            raise ValueError(f"the base model scores {scores.shape[-1]} tokens but the guides have a vocabulary of "
                             f"{vocabulary_size(self.guides[0][1])}: guides must share the base tokenizer")
        with torch.no_grad():
            new_ids = self._advance(input_ids)
            terms = [(weight, self._guide_logprobs(index, guide, new_ids, input_ids).to(scores.device))
                     for index, (weight, guide) in enumerate(self.guides)]
            terms += [(weight, term(input_ids).to(scores.device)) for weight, term in self.terms]
            return combine_logprobs(scores.float().log_softmax(-1), terms, self.temperature)

    def _continues(self, input_ids: torch.Tensor) -> bool:
        """Whether `input_ids` extend the sequences of the previous call (same rows, longer, same prefix)."""
        previous = self._ids
        return (previous is not None and previous.shape[0] == input_ids.shape[0]
                and input_ids.shape[1] > previous.shape[1]
                and torch.equal(input_ids[:, :previous.shape[1]], previous))

    def _advance(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The tokens the guides have not seen; extends the carried mask, or resets state for a new generation."""
        if self._continues(input_ids):
            new_ids = input_ids[:, self._ids.shape[1]:]
            self._mask = torch.cat([self._mask, self._mask.new_ones(new_ids.shape)], dim=1)
        else:
            from transformers import DynamicCache

            new_ids = input_ids
            self._mask = self._start_mask(input_ids)
            self._caches = [DynamicCache(config=guide.config) for _, guide in self.guides]
        self._ids = input_ids
        return new_ids

    def _start_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The prompt attention mask for a new generation: the one set with `for_prompts`, else all ones."""
        mask = self._prompt_mask
        if mask is None:
            return torch.ones_like(input_ids)
        if mask.shape[1] != input_ids.shape[1] or input_ids.shape[0] % mask.shape[0]:
            raise ValueError(f"the prompt attention mask is {tuple(mask.shape)} but generation starts from "
                             f"{tuple(input_ids.shape)}; call for_prompts(attention_mask) before each generate")
        return mask.to(input_ids.device).repeat_interleave(input_ids.shape[0] // mask.shape[0], dim=0)

    def _guide_logprobs(self, index: int, guide: PreTrainedModel, new_ids: torch.Tensor,
                        input_ids: torch.Tensor) -> torch.Tensor:
        """log π_guide(· | input_ids) [B, V]: cached over the new tokens, or over all of them without cache."""
        ids = new_ids if self.use_cache else input_ids
        device = guide.device
        outputs = guide(input_ids=ids.to(device), attention_mask=self._mask.to(device),
                        position_ids=_positions(self._mask)[:, -ids.shape[1]:].to(device),
                        cache=self._caches[index] if self.use_cache else None,
                        use_cache=self.use_cache, logits_to_keep=1)
        return outputs.logits[:, -1].float().log_softmax(-1)


def _weights(alpha: float | Sequence[float], count: int) -> list[float]:
    """One α per ARM: a float is shared by all ARMs, a sequence must have one entry per ARM."""
    alphas = [float(alpha)] * count if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if len(alphas) != count:
        raise ValueError(f"got {len(alphas)} alphas for {count} ARMs")
    return alphas


def _distinct(*models: torch.nn.Module) -> list[torch.nn.Module]:
    """The models without repeats (an ARM may be the base model itself; count its forwards once per call)."""
    seen: dict[int, torch.nn.Module] = {}
    for model in models:
        seen.setdefault(id(model), model)
    return list(seen.values())


def genarm(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *,
           arm: PreTrainedModel | Sequence[PreTrainedModel], alpha: float | Sequence[float] = 1.0,
           temperature: float | None = None, do_sample: bool = True, top_k: int = 0, top_p: float = 1.0,
           max_new_tokens: int = 128, batch_size: int = 8, seed: int | None = 0,
           chat_template: ChatTemplate = True) -> list[Completion]:
    """GenARM guided decoding (Xu et al., arXiv 2410.08193): sample from
    scores = (log π_base(y_t|·) + Σ_i α_i log π_arm_i(y_t|·)) / T, i.e. π_base · Π_i π_arm_i^α_i at T = 1.

    `arm` is one autoregressive reward model or a list (multi-objective, `alpha` a float or one per ARM);
    ARMs must share the base tokenizer. Default T = 1/(1 + Σα): the official code builds the formula with
    model arithmetic (`M_base + alpha * M_arm`), whose `Sum` divides by the coefficient sum 1 + Σα, and its
    evaluation scripts set temperature 1/(1+α) (HH) / 1/(1+α_1+α_2) (PKU-SafeRLHF) [code: Yuancheng-Xu/GenARM
    @824e846]; with these defaults the model-arithmetic scores are sampled at temperature 1. `top_k`/`top_p`
    (defaults off, as in the official AlpacaEval run) filter the guided scores; `do_sample=False` is greedy.

    Diagnostics: `forward_passes` (rows through the base and ARM forwards for this prompt: 1 + #ARMs per
    generation step, padded steps after EOS in a batch included), `forward_passes_per_token`, `temperature`.
    """
    from transformers import LogitsProcessorList

    arms = [arm] if isinstance(arm, torch.nn.Module) else list(arm)
    alphas = _weights(alpha, len(arms))
    check_same_vocabulary(model, arms)
    temperature = 1.0 / (1.0 + sum(alphas)) if temperature is None else temperature
    processor = GuidedLogits(list(zip(alphas, arms)), temperature=temperature)
    settings: dict = {"max_new_tokens": max_new_tokens, "do_sample": do_sample,
                      "pad_token_id": tokenizer.pad_token_id, "eos_token_id": tokenizer.eos_token_id,
                      "temperature": 1.0 if do_sample else None, "top_k": top_k if do_sample else None,
                      "top_p": top_p if do_sample else None}
    texts = render_prompts(tokenizer, prompts, chat_template)
    order = sorted(range(len(texts)), key=lambda i: len(tokenizer(texts[i], add_special_tokens=False)["input_ids"]))
    results: list[Completion] = [None] * len(texts)  # type: ignore[list-item]
    models = _distinct(model, *arms)
    with seeded(seed, model), evaluating(*models):
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            encoded = encode_left_padded(tokenizer, [texts[i] for i in batch], model.device)
            guidance = LogitsProcessorList([processor.for_prompts(encoded["attention_mask"])])
            with ForwardCounter(*models) as counter:
                output = model.generate(**encoded, logits_processor=guidance, **settings)
            new_texts, lengths = decode_new(tokenizer, output[:, encoded["input_ids"].shape[1]:])
            passes = counter.rows / len(batch)
            for k, index in enumerate(batch):
                results[index] = Completion(new_texts[k], lengths[k], {
                    "forward_passes": passes, "forward_passes_per_token": passes / max(lengths[k], 1),
                    "temperature": temperature})
    return results


register_method(Method(
    name="genarm", function=genarm, mechanism="guided step", needs=("arm",),
    source="GenARM, Xu et al. ICLR 2025 (arXiv 2410.08193); Yuancheng-Xu/GenARM",
    description="sample from pi_base * pi_arm^alpha, token by token, both with KV caches"))
