"""URIAL: a base model aligned by a prompt (Lin et al., "The Unlocking Spell on Base LLMs", ICLR 2024,
arXiv 2312.01552; official code Re-Align/URIAL).

The prompt is a fixed ~1k-token preamble (system text + K=3 stylistic examples, shipped verbatim in
`urial_prompts/`) followed by the conversation in the FastChat `urial_backticks` frame
[code: Re-Align/URIAL src/fastchat_conversation.py, `SeparatorStyle.URIAL`]:

    prompt = urial_text + Σ_i "\\n" + role_i + "\\n```\\n" + turn_i + "\\n```\\n" + "\\n# Answer:\\n```\\n",

roles alternating ("# Query:", "# Answer:"). The base model continues the open answer block until a stop
string ("# Query", "# User" [code: src/unified_infer.py, vLLM `stop=`]); the text is cut before the stop string
and cleaned as `clear_output` [code: src/unified_utils.py]: remove "```" and "<|endoftext|>", strip.

Cost: one forward of the base model per token. The preamble is the same for every
prompt, so it is prefilled once into a `DynamicCache` and every batch starts from a copy of it.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from alignkit.data.prompts import Prompt
from alignkit.data.rows import common_prefix_length
from alignkit.decode.core import Completion, ForwardCounter, seeded
from alignkit.models.modes import evaluating
from alignkit.decode.methods import Method, register_method
from alignkit.lazy import lazy

if TYPE_CHECKING:
    from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

torch = lazy("torch")

PROMPT_DIR = Path(__file__).with_name("urial_prompts")
ROLES = ("# Query:", "# Answer:")
FENCE = "```"
STOP_STRINGS = ("# Query", "# User")


def load_urial_text(prompt: str = "inst_1k_v4.help") -> str:
    """The verbatim URIAL preamble `urial_prompts/{prompt}.txt` (bytes decoded as UTF-8, no newline changes)."""
    path = PROMPT_DIR / f"{prompt}.txt"
    if not path.is_file():
        available = sorted(p.name[:-4] for p in PROMPT_DIR.glob("*.txt"))
        raise ValueError(f"unknown URIAL prompt {prompt!r}; available: {', '.join(available)}")
    return path.read_bytes().decode("utf-8")


def urial_prompt(turns: Sequence[str], prompt: str = "inst_1k_v4.help") -> str:
    """The full URIAL prompt for a conversation `turns = [q1, a1, q2, ...]` whose last turn is a query.

    FastChat `urial_backticks` assembly [code: Re-Align/URIAL src/fastchat_conversation.py]: each turn becomes
    "\\n" + role + "\\n```\\n" + message + "\\n```\\n", and the prompt ends with the open "\\n# Answer:\\n```\\n".
    """
    if len(turns) % 2 != 1:
        raise ValueError("URIAL turns must alternate query, answer, ... and end with a query")
    text = load_urial_text(prompt)
    for index, message in enumerate(turns):
        text += f"\n{ROLES[index % 2]}\n{FENCE}\n{message}\n{FENCE}\n"
    return text + f"\n{ROLES[1]}\n{FENCE}\n"


def conversation_turns(prompt: Prompt) -> list[str]:
    """A prompt as URIAL turns: a string is one query; a message list gives its user/assistant contents in
    order, a system message being put before the first query with a blank line (UNVERIFIED convention: the
    official scripts have no system turn; BiGGen-Bench's URIAL runner joins system prompt and input this way)."""
    if isinstance(prompt, str):
        return [prompt]
    system = "\n\n".join(m["content"] for m in prompt if m.get("role") == "system")
    turns = [m["content"] for m in prompt if m.get("role") in ("user", "assistant")]
    if system and turns:
        turns[0] = f"{system}\n\n{turns[0]}"
    return turns


def clear_output(text: str) -> str:
    """Official post-processing [code: Re-Align/URIAL src/unified_utils.py `clear_output`]."""
    return text.replace(FENCE, "").replace("<|endoftext|>", "").strip()


def cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """`text` before the first occurrence of any stop string, and whether one occurred."""
    hits = [text.find(s) for s in stop_strings if s in text]
    return (text[:min(hits)], True) if hits else (text, False)


def tokens_until_stop(tokenizer: PreTrainedTokenizerBase, new_ids: torch.Tensor,
                      stop_strings: Sequence[str]) -> int:
    """Generated tokens of one row: up to EOS (included) or the token completing a stop string, whichever is
    first; the rest of the row is the padding `generate` adds after a row finished. Text containment is
    monotone in the number of tokens, so the first stop is found by bisection over decoded prefixes."""
    eos = tokenizer.eos_token_id
    eos_hits = (new_ids == eos).nonzero() if eos is not None else new_ids.new_zeros((0, 1))
    end = int(eos_hits[0, 0]) + 1 if len(eos_hits) else int(new_ids.shape[0])

    def has_stop(length: int) -> bool:
        return cut_at_stop(tokenizer.decode(new_ids[:length], skip_special_tokens=True), stop_strings)[1]

    if not stop_strings or not has_stop(end):
        return end
    low, high = 1, end
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if has_stop(middle) else (middle + 1, high)
    return low


def shared_prefix_length(prefix_ids: list[int], rows: Sequence[list[int]]) -> int:
    """How many leading tokens of the preamble tokenization every row starts with (the cacheable part).
    Equal to `len(prefix_ids)` unless a BPE merge crosses the preamble/suffix boundary."""
    return min([len(prefix_ids)] + [common_prefix_length(prefix_ids, row[:-1]) for row in rows])


def prefill(model: PreTrainedModel, prefix_ids: list[int]) -> DynamicCache:
    """One forward over the preamble tokens (batch 1), returning its KV cache."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(torch.tensor([prefix_ids], device=model.device), cache=cache, use_cache=True)
    return cache


def batch_inputs(rows: Sequence[list[int]], shared: int, pad_id: int,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """Rows laid out as [shared prefix | left padding | own suffix]: the cached prefix stays aligned at the
    start and positions (attention-mask cumsum in `generate`) equal those of the unpadded row."""
    width = max(len(row) for row in rows) - shared
    ids, mask = [], []
    for row in rows:
        gap = width - (len(row) - shared)
        ids.append(row[:shared] + [pad_id] * gap + row[shared:])
        mask.append([1] * shared + [0] * gap + [1] * (len(row) - shared))
    return {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device)}


def sampling_settings(tokenizer: PreTrainedTokenizerBase, max_new_tokens: int, temperature: float, top_p: float,
                      repetition_penalty: float, stop_strings: Sequence[str]) -> dict:
    """`generate` settings: greedy at temperature 0 (the authors' MT-bench runs), else nucleus sampling
    without top-k (vLLM's default); HF's repetition penalty and stop strings."""
    settings: dict = dict(max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                          pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    if stop_strings:
        settings.update(stop_strings=list(stop_strings), tokenizer=tokenizer)
    if temperature > 0:
        settings.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        settings.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return settings


def urial(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *,
          prompt: str = "inst_1k_v4.help", max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
          repetition_penalty: float = 1.1, stop_strings: Sequence[str] = STOP_STRINGS, batch_size: int = 8,
          seed: int | None = 0, use_prefix_cache: bool = True, chat_template: bool = False) -> list[Completion]:
    """Answer every prompt with the base model after the URIAL preamble `prompt`.

    Defaults: prompt `inst_1k_v4.help`, greedy, repetition penalty 1.1 (README/legacy runs; MT-bench used
    1.15), stops "# Query"/"# User". The whole prompt is tokenized with the tokenizer's special tokens (as vLLM
    does); its first `prefix_tokens` tokens, shared by all prompts, come from one cached prefill
    (`use_prefix_cache=False` feeds every whole prompt instead: the reference path). `chat_template` must stay
    False (or "none"): the URIAL frame replaces the chat template, for string and message-list prompts alike.
    Diagnostics: `forward_passes` (rows per prompt, the prefill amortised over all prompts), `prefix_tokens`,
    `stopped_on_string` (1 if cut at a stop string).
    """
    if chat_template and chat_template != "none":
        raise ValueError("URIAL prompts a base model: its frame replaces the chat template (use chat_template=False)")
    texts = [urial_prompt(conversation_turns(p), prompt) for p in prompts]
    rows = [tokenizer(text)["input_ids"] for text in texts]
    prefix_ids = tokenizer(load_urial_text(prompt))["input_ids"]
    shared = shared_prefix_length(prefix_ids, rows) if use_prefix_cache else 0
    settings = sampling_settings(tokenizer, max_new_tokens, temperature, top_p, repetition_penalty, stop_strings)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    results: list[Completion | None] = [None] * len(rows)
    with evaluating(model), seeded(seed, model):
        with ForwardCounter(model) as counter:
            prefix_cache = prefill(model, prefix_ids[:shared]) if shared else None
        prefill_share = counter.rows / max(len(rows), 1)
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            inputs = batch_inputs([rows[i] for i in batch], shared, pad_id, model.device)
            cache = None
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(batch))
            with ForwardCounter(model) as counter:
                output = model.generate(**inputs, cache=cache, **settings)
            passes = prefill_share + counter.rows / len(batch)
            for k, index in enumerate(batch):
                new_ids = output[k, inputs["input_ids"].shape[1]:]
                length = tokens_until_stop(tokenizer, new_ids, stop_strings)
                text, stopped = cut_at_stop(tokenizer.decode(new_ids[:length], skip_special_tokens=True),
                                            stop_strings)
                results[index] = Completion(clear_output(text), length, {
                    "forward_passes": passes, "prefix_tokens": float(shared), "stopped_on_string": float(stopped)})
    return results


register_method(Method(
    name="urial", function=urial, mechanism="prompt", needs=(),
    source="URIAL, Lin et al. ICLR 2024 (arXiv 2312.01552); prompts from Re-Align/URIAL urial_prompts/",
    description="a base model answers after URIAL's system prompt and three stylistic examples"))
