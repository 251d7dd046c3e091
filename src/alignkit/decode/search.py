"""Mechanism (b): candidate search with KV-cached lookahead rollouts, and the DeAL preset (arXiv 2402.06147).

At each step every live beam proposes the top-k next tokens of the model. Each candidate is rolled out
L tokens greedily from a fork of the beam's KV cache (`copy.deepcopy` + `DynamicCache.batch_repeat_interleave`,
the prefix is never re-run), the text beam + candidate + rollout is scored by a value function h (a reward,
or Transfer Q*'s transformed reward), and the candidates are ranked by

    c = [Σ log P(beam tokens so far)] + log P(candidate) + λ · h          (the bracket only when `cumulative`)

computed with `alignkit.decode.guidance.combine_logprobs`. The best `beams` hypotheses are kept (their caches
with `DynamicCache.batch_select_indices`), or, with a sampling temperature (one beam), one candidate is drawn
from softmax(c / temperature). A finished hypothesis (its last token is EOS) stays in its prompt's beam set
and competes with the next steps' candidates; decoding stops when no beam is live or at `max_new_tokens`,
and the best-scored hypothesis of the final set is returned.

Cost per step and live beam: 1 forward of the chosen token + k·L rollout token-steps (rows), plus the same
1 forward for a separate rollout model, and k value calls. `SearchSettings.use_cache=False` recomputes every
forward over the whole sequence (same rows, same counts); it exists to test the cached path.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alignkit.data.prompts import ChatTemplate, Prompt, render_prompts, resolve_chat_template
from alignkit.decode.core import Completion, ForwardCounter, encode_left_padded, generated_length, seeded
from alignkit.models.modes import evaluating
from alignkit.decode.guidance import combine_logprobs
from alignkit.decode.methods import Method, register_method
from alignkit.lazy import lazy
from alignkit.models.rewards import Reward

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

torch = lazy("torch")

ValueFn = Callable[[list[Prompt], list[str]], "torch.Tensor"]


class Prefix:
    """Rows of left-padded token ids under one model, with their KV cache (`cache=None`: recompute each call).

    Positions are counted over real tokens (`attention_mask.cumsum - 1`), as `generate` does for left padding.
    """

    def __init__(self, model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache | None):
        self.model, self.ids, self.mask, self.cache = model, ids, mask, cache

    @classmethod
    def start(cls, model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor,
              use_cache: bool) -> tuple[Prefix, torch.Tensor]:
        """The prefix of the prompt rows and its next-token logits [R, V] (one forward over the prompts)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config) if use_cache else None
        prefix = cls(model, ids.to(model.device), mask.to(model.device), cache)
        return prefix, prefix._next_logits(prefix.ids.shape[1])

    def _next_logits(self, new_tokens: int) -> torch.Tensor:
        positions = (self.mask.long().cumsum(-1) - 1).clamp(min=0)
        if self.cache is None:
            out = self.model(input_ids=self.ids, attention_mask=self.mask, position_ids=positions, use_cache=False,
                             logits_to_keep=1)
        else:
            out = self.model(input_ids=self.ids[:, -new_tokens:], attention_mask=self.mask,
                             position_ids=positions[:, -new_tokens:], cache=self.cache, use_cache=True,
                             logits_to_keep=1)
        return out.logits[:, -1].float()

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row [R]; returns the next-token logits [R, V] (one forward of the new tokens)."""
        tokens = tokens.to(self.ids.device)
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(tokens), 1))], dim=1)
        return self._next_logits(1)

    def select(self, rows: torch.Tensor) -> None:
        """Keep the given rows (in that order; a row may repeat), cache included."""
        rows = rows.to(self.ids.device)
        self.ids, self.mask = self.ids[rows], self.mask[rows]
        if self.cache is not None:
            self.cache.batch_select_indices(rows)

    def fork(self, copies: int) -> Prefix:
        """A copy with each row repeated `copies` times (row r → rows r·copies … r·copies + copies − 1)."""
        cache = None
        if self.cache is not None:
            cache = copy.deepcopy(self.cache)
            cache.batch_repeat_interleave(copies)
        return Prefix(self.model, self.ids.repeat_interleave(copies, dim=0),
                      self.mask.repeat_interleave(copies, dim=0), cache)


def rollout(prefix: Prefix, candidates: torch.Tensor, length: int, eos_token_id: int | None,
            pad_token_id: int) -> torch.Tensor:
    """Greedy continuations of `length` tokens after each candidate; returns [R·k, length] token ids.

    `candidates` is [R, k]; row r·k + j continues prefix row r with candidate [r, j]. The prefix is forked k
    ways and left untouched: only the candidates and rollout tokens go through the model, batched over all
    R·k rows (`length` forwards of R·k rows). A row stops at EOS (later positions hold `pad_token_id`); the
    loop ends early once every row has stopped.
    """
    rows, k = candidates.shape
    out = torch.full((rows * k, length), pad_token_id, dtype=torch.long, device=prefix.ids.device)
    if length == 0:
        return out
    branch = prefix.fork(k)
    tokens = candidates.reshape(-1).to(prefix.ids.device)
    done = tokens == eos_token_id if eos_token_id is not None else torch.zeros_like(tokens, dtype=torch.bool)
    for step in range(length):
        if bool(done.all()):
            break
        tokens = torch.where(done, pad_token_id, branch.extend(tokens).argmax(-1))
        out[:, step] = tokens
        if eos_token_id is not None:
            done = done | (tokens == eos_token_id)
    return out


@dataclass(frozen=True)
class SearchSettings:
    """k candidates, L lookahead tokens, weight λ of h, beams kept, whether c adds Σ log P of the beam so far,
    and a sampling temperature (None: keep the best `beams`; else sample one candidate, `beams` must be 1)."""

    k: int
    lookahead: int
    weight: float
    beams: int = 1
    cumulative: bool = True
    temperature: float | None = None
    use_cache: bool = True

    def check(self) -> None:
        if self.k < 1 or self.lookahead < 0 or self.beams < 1:
            raise ValueError(f"need k >= 1, lookahead >= 0, beams >= 1; got {self.k}, {self.lookahead}, {self.beams}")
        if self.temperature is not None and (self.temperature <= 0 or self.beams != 1):
            raise ValueError("sampling needs a positive temperature and beams == 1")


@dataclass
class Hypothesis:
    """A partial or finished answer of prompt `owner` (index in its batch): tokens, Σ log P, search score."""

    tokens: list[int]
    logp: float
    score: float
    owner: int


def search(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *,
           value: ValueFn, settings: SearchSettings, rollout_model: PreTrainedModel | None = None,
           max_new_tokens: int = 128, batch_size: int = 1, seed: int | None = 0,
           chat_template: ChatTemplate = True) -> tuple[list[Hypothesis], list[dict[str, float]]]:
    """The search driver (module docstring): best hypothesis and diagnostics per prompt, in prompt order.

    `value(prompts, texts)` scores the decoded text of beam + candidate + rollout (special tokens skipped,
    stripped) for the original prompts. Rollouts run on `rollout_model` (default: the model itself, from its
    own cache); a separate rollout model keeps a second cache in step with the beams. Diagnostics:
    `forward_passes` (rows through every model, `core.ForwardCounter`), `reward_calls` (texts scored), and
    both per generated token. With `batch_size` > 1 they are the batch's totals shared evenly by its prompts.
    """
    settings.check()
    chat_template = resolve_chat_template(chat_template)  # once, not per batch (a template file is read here)
    rollout_model = None if rollout_model is model else rollout_model
    models = [model] + ([rollout_model] if rollout_model is not None else [])
    hypotheses: list[Hypothesis] = []
    diagnostics: list[dict[str, float]] = []
    with evaluating(*models), seeded(seed, model):
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start:start + batch_size])
            with ForwardCounter(*models) as counter:
                best, value_calls = _search_batch(model, rollout_model, tokenizer, batch, value, settings,
                                                  max_new_tokens, chat_template)
            tokens = max(sum(len(h.tokens) for h in best), 1)
            for hypothesis in best:
                hypotheses.append(hypothesis)
                diagnostics.append({"forward_passes": counter.rows / len(batch),
                                    "forward_passes_per_token": counter.rows / tokens,
                                    "reward_calls": value_calls / len(batch),
                                    "reward_calls_per_token": value_calls / tokens})
    return hypotheses, diagnostics


def _search_batch(model: PreTrainedModel, rollout_model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase,
                  prompts: list[Prompt], value: ValueFn, settings: SearchSettings, max_new_tokens: int,
                  chat_template: ChatTemplate) -> tuple[list[Hypothesis], int]:
    """Search for one batch of prompts; returns the best hypothesis per prompt and the number of value calls."""
    encoded = encode_left_padded(tokenizer, render_prompts(tokenizer, prompts, chat_template), model.device)
    prior, logits = Prefix.start(model, encoded["input_ids"], encoded["attention_mask"], settings.use_cache)
    roller = prior
    if rollout_model is not None and settings.lookahead > 0:
        roller, _ = Prefix.start(rollout_model, encoded["input_ids"], encoded["attention_mask"], settings.use_cache)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos if eos is not None else 0)
    live = [Hypothesis([], 0.0, 0.0, owner) for owner in range(len(prompts))]
    finished: list[list[Hypothesis]] = [[] for _ in prompts]
    value_calls = 0
    for step in range(max_new_tokens):
        candidate_logp, candidate_ids = logits.log_softmax(-1).topk(settings.k, dim=-1)
        continuations = rollout(roller, candidate_ids, settings.lookahead, eos, pad).cpu()
        texts = _candidate_texts(tokenizer, live, candidate_ids.cpu(), continuations)
        h = value([prompts[hyp.owner] for hyp in live for _ in range(settings.k)], texts)
        value_calls += len(texts)
        h = h.float().to(logits.device).view(len(live), settings.k)
        base = candidate_logp
        if settings.cumulative:
            base = base + torch.tensor([hyp.logp for hyp in live], device=logits.device)[:, None]
        scores = combine_logprobs(base, [(settings.weight, h)], settings.temperature or 1.0)
        kept = _select(live, finished, scores, candidate_logp, candidate_ids, settings, eos)
        if not kept or step == max_new_tokens - 1:
            live = [hyp for _, hyp in kept]
            break
        parents = torch.tensor([row for row, _ in kept])
        live = [hyp for _, hyp in kept]
        chosen = torch.tensor([hyp.tokens[-1] for hyp in live])
        prior.select(parents)
        logits = prior.extend(chosen)
        if roller is not prior:
            roller.select(parents)
            roller.extend(chosen)
    final = [finished[owner] + [hyp for hyp in live if hyp.owner == owner] for owner in range(len(prompts))]
    return [max(pool, key=lambda hyp: hyp.score) for pool in final], value_calls


def _candidate_texts(tokenizer: PreTrainedTokenizerBase, live: list[Hypothesis], candidate_ids: torch.Tensor,
                     continuations: torch.Tensor) -> list[str]:
    """Decoded text of beam + candidate + rollout (cut after EOS) for row r·k + j; special tokens skipped."""
    k = candidate_ids.shape[1]
    sequences = []
    for row, hyp in enumerate(live):
        for j in range(k):
            tail = torch.cat([candidate_ids[row, j:j + 1], continuations[row * k + j]])
            sequences.append(hyp.tokens + tail[:generated_length(tail, tokenizer)].tolist())
    return [text.strip() for text in tokenizer.batch_decode(sequences, skip_special_tokens=True)]


def _select(live: list[Hypothesis], finished: list[list[Hypothesis]], scores: torch.Tensor,
            candidate_logp: torch.Tensor, candidate_ids: torch.Tensor, settings: SearchSettings,
            eos: int | None) -> list[tuple[int, Hypothesis]]:
    """Each prompt's next beam set: the best `beams` of its candidates and its finished hypotheses (or one
    sampled candidate). Finished ones go to `finished[owner]` (replaced); live ones are returned with the row
    of their parent."""
    kept: list[tuple[int, Hypothesis]] = []
    for owner in sorted({hyp.owner for hyp in live}):
        rows = [row for row, hyp in enumerate(live) if hyp.owner == owner]
        if settings.temperature is not None:
            pick = int(torch.multinomial(scores[rows[0]].softmax(-1), 1))
            pool = [(rows[0], _child(live[rows[0]], rows[0], pick, scores, candidate_logp, candidate_ids))]
        else:
            pool = [(row, _child(live[row], row, j, scores, candidate_logp, candidate_ids))
                    for row in rows for j in range(settings.k)]
            pool += [(-1, hyp) for hyp in finished[owner]]
            pool = sorted(pool, key=lambda item: -item[1].score)[:settings.beams]
        finished[owner] = [hyp for row, hyp in pool if row < 0 or hyp.tokens[-1] == eos]
        kept += [(row, hyp) for row, hyp in pool if row >= 0 and hyp.tokens[-1] != eos]
    return kept


def _child(parent: Hypothesis, row: int, j: int, scores: torch.Tensor, candidate_logp: torch.Tensor,
           candidate_ids: torch.Tensor) -> Hypothesis:
    return Hypothesis(parent.tokens + [int(candidate_ids[row, j])], parent.logp + float(candidate_logp[row, j]),
                      float(scores[row, j]), parent.owner)


def completions(tokenizer: PreTrainedTokenizerBase, hypotheses: list[Hypothesis],
                diagnostics: list[dict[str, float]]) -> list[Completion]:
    """`Completion`s of the search results: text with special tokens skipped and stripped, tokens incl. EOS."""
    texts = tokenizer.batch_decode([hyp.tokens for hyp in hypotheses], skip_special_tokens=True)
    return [Completion(text.strip(), len(hyp.tokens), extra)
            for text, hyp, extra in zip(texts, hypotheses, diagnostics)]


def reward_value(reward: Reward) -> ValueFn:
    """h = reward(prompt, text) for a scalar `alignkit.models.rewards.Reward`."""
    if reward.attributes:
        raise ValueError(f"need a scalar reward, got attributes {reward.attributes}; wrap it in Direction")
    return lambda prompts, texts: reward(prompts, texts)


def deal(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *, reward: Reward,
         k: int = 5, lookahead: int = 10, lam: float = 1.0, beams: int = 1, max_new_tokens: int = 128,
         batch_size: int = 1, seed: int | None = 0, chat_template: ChatTemplate = True,
         use_cache: bool = True) -> list[Completion]:
    """DeAL, decoding as heuristic-guided search (Huang et al., arXiv 2402.06147, ACL 2025).

    Each step: top-k tokens of the LM as actions, a greedy lookahead of l tokens from each, and
    c(y_t) = log P(y_{1:t} | p) + λ · h(y_{1:t+l}, p) with h = `reward` on the lookahead-completed text; keep
    the best `beams` (beams=1: argmax); repeat to EOS. No official code; the paper's k, l, λ and search
    variant are UNVERIFIED (not recovered from the paper). Defaults: k=5 and l=10 are AISteer360's DeAL
    numbers (`init_beams=5`, `lookahead=10` [code: IBM/AISteer360 aisteer360/algorithms/output_control/deal]),
    λ=1 weighs log-probs and reward equally, and one beam keeps the cost at 1 + k·l = 51 forwards per token,
    within the 22–55× slowdown reported (secondary).
    An alignment prompt ("start-state adaptation") is part of `prompts`. Diagnostics: see `search`.
    """
    settings = SearchSettings(k=k, lookahead=lookahead, weight=lam, beams=beams, cumulative=True,
                              use_cache=use_cache)
    hypotheses, diagnostics = search(model, tokenizer, prompts, value=reward_value(reward), settings=settings,
                                     max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed,
                                     chat_template=chat_template)
    return completions(tokenizer, hypotheses, diagnostics)


register_method(Method(
    name="deal", function=deal, mechanism="search", needs=("reward",),
    source="DeAL, Huang et al. arXiv 2402.06147 (no official code)",
    description="top-k candidates, greedy lookahead, beams scored by log-prob + lambda * reward"))
