"""The sampler: N completions per prompt from a causal LM, batched with the KV cache — what best-of-N, greedy
evaluation, `alignkit sample` and online training (`alignkit.train.online`) all sample with.

Prompts are rendered (`alignkit.data.prompts.render_prompts`: a string prompt is one user message through the
chat template unless `chat_template=False`), sorted by token length into batches (less padding), left-padded and
decoded by `decode`: the prefill runs once over the P prompts (the LM head only at each prompt's last position),
the KV cache is repeated N times, and a row leaves the batch (its cache, mask and position) as soon as it emits
EOS, so every later forward runs over live rows only; `model.generate(num_return_sequences=N)` instead repeats
each prompt N times before its prefill and keeps finished rows to the end (`engine="generate"`, for
comparison). Sampling is ancestral at `temperature` with nucleus `top_p` (`temperature=0`: greedy); the entropy
of each next-token distribution a sample was drawn from (after temperature, before top-p) is kept with it.
`batched=False` makes N decodes of one sample each (for the comparison "N samples batched vs N sequential").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alignkit.data.prompts import ChatTemplate, Prompt, render_prompts
from alignkit.lazy import lazy
from alignkit.models.generation import ForwardCounter, encode_left_padded, generated_length, seeded
from alignkit.models.modes import evaluating

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

torch = lazy("torch")


@dataclass
class Decoded:
    """Per row (prompt p's sample i is row p·n + i): the new token ids (EOS included, if reached) and the
    summed entropy (nats) of the distributions they were drawn from; `forwards` counts rows × model calls."""

    ids: list[list[int]]
    entropy: list[float]
    forwards: int


def draw(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: per row of `probs` [R, V] (unnormalised, non-negative), the first index whose
    cumulative mass exceeds u·total for that row's u in `uniform` [R] ∈ [0, 1). A zero-mass index is never
    drawn (its cumulative mass equals its predecessor's). One cumsum and one binary search per row, where
    `torch.multinomial` draws an exponential variate for every vocabulary entry (15% of a decoding step at
    SmolLM2's 49k vocabulary)."""
    mass = probs.cumsum(-1)
    total = mass[:, -1:]
    target = torch.minimum(uniform.unsqueeze(-1) * total, total.nextafter(torch.zeros_like(total)))
    return torch.searchsorted(mass, target, right=True).squeeze(-1)


def next_tokens(logits: torch.Tensor, temperature: float, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sampled ids [R], entropies [R]) from last-position logits [R, V]: greedy at temperature 0, else a draw
    (`draw`, one uniform per row from the global torch RNG) from softmax(logits / temperature) restricted to
    the smallest set of tokens whose mass reaches `top_p`."""
    logits = logits.float()
    if temperature == 0:
        logps = logits.log_softmax(-1)
        return logits.argmax(-1), -(logps.exp() * logps).sum(-1)
    logps = (logits / temperature).log_softmax(-1)
    probs = logps.exp()
    entropy = -(probs * logps).sum(-1)
    uniform = torch.rand(logits.size(0), device=logits.device)
    if top_p == 1:
        return draw(probs, uniform), entropy
    sorted_probs, order = probs.sort(-1, descending=True)
    mass_before = sorted_probs.cumsum(-1) - sorted_probs
    nucleus = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
    return order.gather(-1, draw(nucleus, uniform).unsqueeze(-1)).squeeze(-1), entropy


def decode(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, n: int, max_new_tokens: int,
           eos_token_id: int | None, temperature: float = 1.0, top_p: float = 1.0) -> Decoded:
    """n completions of each left-padded prompt row (`input_ids`, `attention_mask`: [P, T]); see the module
    docstring. Uses the global torch RNG (seed it around the call for reproducible samples)."""
    with torch.inference_mode():
        return _decode(model, input_ids, attention_mask, n, max_new_tokens, eos_token_id, temperature, top_p)


def _decode(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, n: int, max_new_tokens: int,
            eos_token_id: int | None, temperature: float, top_p: float) -> Decoded:
    positions = attention_mask.long().cumsum(-1) - 1
    output = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions.clamp(min=0),
                   use_cache=True, logits_to_keep=1)
    cache, logits = output.cache, output.logits[:, -1]
    forwards = input_ids.size(0)
    if n > 1:
        cache.batch_repeat_interleave(n)
        logits, attention_mask = logits.repeat_interleave(n, 0), attention_mask.repeat_interleave(n, 0)
    live = torch.arange(attention_mask.size(0), device=input_ids.device)  # original row of each batch row
    position = attention_mask.long().sum(-1)  # the position id of each row's next token
    ids: list[list[int]] = [[] for _ in range(live.numel())]
    entropy = [0.0] * live.numel()
    for step in range(max_new_tokens):
        tokens, entropies = next_tokens(logits, temperature, top_p)
        for row, token, h in zip(live.tolist(), tokens.tolist(), entropies.tolist()):
            ids[row].append(token)
            entropy[row] += h
        done = tokens == eos_token_id if eos_token_id is not None else torch.zeros_like(tokens, dtype=torch.bool)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            live, tokens, position, attention_mask = live[keep], tokens[keep], position[keep], attention_mask[keep]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.size(0), 1)], dim=1)
        output = model(input_ids=tokens.unsqueeze(-1), attention_mask=attention_mask, position_ids=position.unsqueeze(-1),
                       cache=cache, use_cache=True)
        forwards += live.numel()
        cache, logits, position = output.cache, output.logits[:, -1], position + 1
    return Decoded(ids, entropy, forwards)


def generate_settings(tokenizer: PreTrainedTokenizerBase, temperature: float, top_p: float, max_new_tokens: int,
                      n: int) -> dict:
    """`generate` keywords: pure ancestral sampling (top_k off) at `temperature` with nucleus `top_p` and `n`
    samples per prompt row, or greedy decoding (one row per prompt) at temperature 0."""
    settings = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.eos_token_id}
    if temperature == 0:
        return {**settings, "do_sample": False, "temperature": None, "top_p": None, "top_k": None,
                "num_return_sequences": 1}
    return {**settings, "do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0,
            "num_return_sequences": n}


@dataclass
class Samples:
    """N completions of each of P prompts, as token ids and as text.

    `prompt_ids[p]`: the rendered prompt's ids (no padding); `completion_ids[p][i]`: sample i's generated ids,
    up to and including EOS (padding after it removed); `texts[p][i]`: its text (special tokens skipped,
    stripped); `passes[p]`: forward passes spent on prompt p (see `draw_samples`).
    """

    prompt_ids: list[list[int]]
    completion_ids: list[list[list[int]]]
    texts: list[list[str]]
    passes: list[float]
    entropies: list[list[float]]  # [p][i]: summed entropy of the distributions sample i was drawn from (NaN: generate)

    @property
    def counts(self) -> list[list[int]]:
        """Generated tokens per sample (EOS included)."""
        return [[len(ids) for ids in row] for row in self.completion_ids]


def _sample_batch(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: list[str], n: int,
                  settings: dict, batched: bool, engine: str) -> tuple[list[list[int]], list[list[list[int]]], list[list[float]]]:
    """(prompt ids, n completions' ids, their summed token entropies) for each text: one `decode` with n
    samples per prompt (`batched`) or n decodes of one sample; `engine="generate"` uses `model.generate`
    instead (no entropies: NaN), for speed comparisons."""
    encoded = encode_left_padded(tokenizer, texts, model.device)
    width = encoded["input_ids"].shape[1]
    prompts = [row[mask.bool()].tolist() for row, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
    rows = settings["num_return_sequences"]
    runs = [n] if batched or not settings["do_sample"] else [1] * n
    ids: list[list[list[int]]] = [[] for _ in texts]
    entropies: list[list[float]] = [[] for _ in texts]
    for samples in runs:
        per_prompt = min(samples, rows)  # greedy: one completion stands for all n
        if engine == "generate":
            output = model.generate(**encoded, **{**settings, "num_return_sequences": per_prompt})
            new = [row[:generated_length(row, tokenizer)].tolist() for row in output[:, width:]]
            entropy = [float("nan")] * len(new)
        else:
            decoded = decode(model, encoded["input_ids"], encoded["attention_mask"], n=per_prompt,
                             max_new_tokens=settings["max_new_tokens"], eos_token_id=tokenizer.eos_token_id,
                             temperature=settings["temperature"] or 0.0, top_p=settings["top_p"] or 1.0)
            new, entropy = decoded.ids, decoded.entropy
        for b in range(len(texts)):
            repeat = samples // per_prompt
            ids[b].extend(new[b * per_prompt:(b + 1) * per_prompt] * repeat)
            entropies[b].extend(entropy[b * per_prompt:(b + 1) * per_prompt] * repeat)
    return prompts, ids, entropies


def sample_sequences(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *,
                     n: int, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 128,
                     batch_size: int = 8, seed: int | None = 0, chat_template: ChatTemplate = True,
                     batched: bool = True, engine: str = "decode") -> Samples:
    """N samples per prompt with their token ids, in prompt order (the sampler; see `draw_samples`).
    `engine="decode"` (`decode`: one prefill per prompt, finished rows leave the batch)
    or "generate" (`model.generate`, for comparison)."""
    if engine not in ("decode", "generate"):
        raise ValueError(f"engine must be 'decode' or 'generate', got {engine!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    texts = render_prompts(tokenizer, prompts, chat_template)
    lengths = [len(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    settings = generate_settings(tokenizer, temperature, top_p, max_new_tokens, n)
    prompt_ids: list[list[int]] = [[] for _ in texts]
    completion_ids: list[list[list[int]]] = [[] for _ in texts]
    entropies: list[list[float]] = [[] for _ in texts]
    passes = [0.0] * len(texts)
    with seeded(seed, model), evaluating(model):
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            with ForwardCounter(model) as counter:
                batch_prompts, batch_ids, batch_entropies = _sample_batch(
                    model, tokenizer, [texts[i] for i in batch], n, settings, batched, engine)
            for k, index in enumerate(batch):
                prompt_ids[index], completion_ids[index] = batch_prompts[k], batch_ids[k]
                entropies[index] = batch_entropies[k]
                passes[index] = counter.rows / len(batch)
    decoded = [[text.strip() for text in tokenizer.batch_decode(row, skip_special_tokens=True)]
               for row in completion_ids]
    return Samples(prompt_ids, completion_ids, decoded, passes, entropies)
