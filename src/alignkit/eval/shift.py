"""Token distribution shift (TDS) between a base model and its aligned version, position by position.

Source: Lin et al., "The Unlocking Spell on Base LLMs: Rethinking Alignment via In-Context Learning", arXiv
2312.01552 (ICLR 2024), §2 "Alignment as token distribution shift"; official code Re-Align/AlignTDS
(`src/logit_analysis.py`: the base model's next-token distribution at each position of the aligned model's
answer; `src/compute_dist_diff.py`: the top-k KL; `src/demo/generate_html.py`: the three position classes).

The analysis (`analyze_shift`):

1. the aligned model answers each prompt greedily, o = (o_1, ..., o_T) (`sample_sequences`, temperature 0,
   through the aligned model's chat template by default); its token ids are kept as generated (AlignTDS
   re-tokenizes the decoded text instead; the trailing EOS is dropped, as the official answers are text);
2. the base model reads a context x_base (`frame`: the official zero-shot frame `urial_frame(query)`, the
   aligned model's own rendered prompt ids, or the prompt text as is) followed by o, and the aligned model
   reads its rendered prompt followed by o, each in ONE teacher-forced forward per batch (`answer_logprobs`;
   the official code runs one forward per prefix, which gives the same distributions);
3. at each answer position t: the rank of o_t under P_base(· | x_base, o_<t) (1-based, ties in favour of o_t:
   rank = #{v : log P_base(v) > log P_base(o_t)} + 1), its class (`position_class`: unshifted = rank 1,
   marginal = rank 2 or 3, shifted = rank > 3), P_base(o_t), and the top-k KL (`topk_kl`).

Summaries, the report and the plot are in `alignkit.eval.shift_report`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alignkit.data.prompts import ChatTemplate, Prompt, prompt_text, render_prompt
from alignkit.models.sampling import sample_sequences
from alignkit.lazy import lazy
from alignkit.models.modes import evaluating

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

torch = lazy("torch")

FRAMES = ("urial", "same", "plain")
UNSHIFTED, MARGINAL, SHIFTED = "unshifted", "marginal", "shifted"
CLASSES = (UNSHIFTED, MARGINAL, SHIFTED)
MARGINAL_MAX_RANK = 3  # AlignTDS generate_html.py: top_rank < 1 unshifted, < 3 marginal (0-based), else shifted
DEFAULT_TOP_K = 30  # AlignTDS logit_analysis.py --top_k: the candidates stored per position


def urial_frame(query: str) -> str:
    """The zero-shot frame the base model reads in AlignTDS (`src/logit_analysis.py`, `--enable_template`,
    the mode the README runs for base models): the query between triple backticks, then an open answer block.
    The answer's first token follows the final three backticks directly."""
    return f"# Query: \n ```{query}``` \n\n \n# Answer: \n ```"


def position_class(rank: int) -> str:
    """unshifted (rank 1: o_t is also the base's top token), marginal (rank 2 or 3), shifted (rank > 3)."""
    if rank < 1:
        raise ValueError(f"a rank is 1 or more, got {rank}")
    return UNSHIFTED if rank == 1 else MARGINAL if rank <= MARGINAL_MAX_RANK else SHIFTED


def check_same_vocabulary(base_tokenizer: PreTrainedTokenizerBase, aligned_tokenizer: PreTrainedTokenizerBase,
                          base_label: str = "the base model", aligned_label: str = "the aligned model") -> None:
    """ValueError unless both tokenizers map the same strings to the same ids (the analysis compares the two
    models' distributions token id by token id)."""
    base_vocab, aligned_vocab = base_tokenizer.get_vocab(), aligned_tokenizer.get_vocab()
    if base_vocab == aligned_vocab:
        return
    differing = sorted(set(base_vocab.items()) ^ set(aligned_vocab.items()), key=lambda item: item[1])
    example = f"; e.g. token {differing[0][0]!r} (id {differing[0][1]}) is in one only" if differing else ""
    raise ValueError(f"{base_label} ({len(base_vocab)} tokens) and {aligned_label} ({len(aligned_vocab)} tokens) "
                     f"have different vocabularies{example}; the shift analysis needs a base and an aligned "
                     "model that share one tokenizer")


def base_context_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, frame: str,
                     aligned_prompt_ids: Sequence[int]) -> list[int]:
    """The ids the base model reads before the answer.

    `urial`: `urial_frame(prompt_text(prompt))` (for a message list, its last user message, as AlignTDS's
    `pure_input`), encoded with the tokenizer's special tokens (`add_special_tokens=True`, as AlignTDS);
    `same`: exactly the aligned model's rendered prompt ids; `plain`: the prompt text as is (a message list:
    its last user message), with the tokenizer's special tokens.
    """
    if frame == "same":
        return list(aligned_prompt_ids)
    if frame == "urial":
        text = urial_frame(prompt_text(prompt))
    elif frame == "plain":
        text = render_prompt(tokenizer, prompt, chat_template=False)
    else:
        raise ValueError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
    return list(tokenizer(text, add_special_tokens=True)["input_ids"])


def _accepts_logits_to_keep(model: PreTrainedModel) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


def answer_logprobs(model: PreTrainedModel, contexts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]],
                    pad_id: int) -> torch.Tensor:
    """log P(· | context_b, answer_b[:t]) for every answer position t, [B, T, V] (T = the longest answer;
    rows past an answer's end are padding), from ONE forward over the batch.

    Contexts are left-padded and answers right-padded, so every answer starts at the same column C (the
    longest context); position ids count real tokens only. The logits at columns C-1 .. C+T-2 predict answer
    tokens 1 .. T; with `logits_to_keep` the LM head only runs on those columns.
    """
    if any(len(context) == 0 for context in contexts):
        raise ValueError("a context is empty: the first answer token needs at least one token before it")
    width_context, width_answer = max(map(len, contexts)), max(max(map(len, answers)), 1)
    rows = len(contexts)
    ids = torch.full((rows, width_context + width_answer), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, (context, answer) in enumerate(zip(contexts, answers, strict=True)):
        ids[row, width_context - len(context):width_context] = torch.tensor(list(context))
        ids[row, width_context:width_context + len(answer)] = torch.tensor(list(answer), dtype=torch.long)
        mask[row, width_context - len(context):width_context + len(answer)] = 1
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
    inputs = {key: value.to(model.device) for key, value in inputs.items()}
    if _accepts_logits_to_keep(model):
        logits = model(**inputs, logits_to_keep=width_answer + 1).logits[:, :width_answer]
    else:
        logits = model(**inputs).logits[:, width_context - 1:width_context + width_answer - 1]
    return logits.float().log_softmax(-1)


def token_ranks(logprobs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """1-based rank of `tokens` [...] under `logprobs` [..., V], ties in favour of the token:
    rank = #{v : logp(v) > logp(token)} + 1."""
    chosen = logprobs.gather(-1, tokens.unsqueeze(-1))
    return (logprobs > chosen).sum(-1) + 1


def topk_kl(base_logprobs: torch.Tensor, aligned_logprobs: torch.Tensor, k: int = DEFAULT_TOP_K) -> torch.Tensor:
    """AlignTDS's top-k KL at each position ([..., V] each → [...]), `compute_similarity(base, aligned, "KL")`
    in `src/compute_dist_diff.py` over the k candidates `src/logit_analysis.py` stores:

        KL_k = Σ_{v ∈ top_k(P_base) ∩ top_k(P_aligned)} p̃_base(v) · log(p̃_base(v) / p̃_aligned(v)),

    direction base ‖ aligned; p̃_m is model m's distribution renormalised over ITS OWN top-k list (softmax of its
    top-k logits, `norm_prob`); the sum runs only over tokens in both lists (tokens in one list only are skipped,
    as in the official code, so KL_k can be negative; it is 0 for identical distributions). Tokens are matched by
    id (the official code matches decoded token strings). The official code stores k = 30 and calls "KL" with
    top_k=50 (all 30 stored); its "KL@10" takes the first 10 of lists renormalised over 30 (not computed here).
    """
    base_top, base_ids = base_logprobs.topk(k, dim=-1)
    aligned_top, aligned_ids = aligned_logprobs.topk(k, dim=-1)
    base_norm, aligned_norm = base_top.log_softmax(-1), aligned_top.log_softmax(-1)
    match = base_ids.unsqueeze(-1) == aligned_ids.unsqueeze(-2)  # [..., k (base), k (aligned)]
    shared = match.any(-1)
    aligned_at_base = (aligned_norm.unsqueeze(-2) * match).sum(-1)
    terms = base_norm.exp() * (base_norm - aligned_at_base)
    return torch.where(shared, terms, torch.zeros_like(terms)).sum(-1)


@dataclass
class AnswerShift:
    """One prompt's answer, position by position: `answer_ids[t]` = o_t (EOS dropped), its text `tokens[t]`,
    `ranks[t]` under the base, `base_probs[t]` = P_base(o_t), `kls[t]` (`topk_kl`), and the base's own top
    token `base_top[t]` (text)."""

    prompt: Prompt
    answer: str
    answer_ids: list[int]
    tokens: list[str]
    ranks: list[int]
    base_probs: list[float]
    kls: list[float]
    base_top: list[str]

    @property
    def classes(self) -> list[str]:
        return [position_class(rank) for rank in self.ranks]


@dataclass
class ShiftAnalysis:
    """The answers of every prompt, in prompt order, and the settings they were computed with."""

    answers: list[AnswerShift]
    frame: str
    top_k: int

    @property
    def positions(self) -> int:
        return sum(len(answer.ranks) for answer in self.answers)


def _without_eos(ids: Sequence[int], eos_id: int | None) -> list[int]:
    return list(ids[:-1]) if ids and eos_id is not None and ids[-1] == eos_id else list(ids)


def score_answers(base: PreTrainedModel, aligned: PreTrainedModel, base_contexts: Sequence[Sequence[int]],
                  aligned_contexts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], *, pad_id: int,
                  top_k: int = DEFAULT_TOP_K) -> list[dict[str, list]]:
    """Per answer: `ranks`, `base_probs`, `kls`, `base_top_ids`, from one base and one aligned forward."""
    base_lp = answer_logprobs(base, base_contexts, answers, pad_id)
    aligned_lp = answer_logprobs(aligned, aligned_contexts, answers, pad_id).to(base_lp.device)
    width = base_lp.shape[1]
    tokens = torch.tensor([list(a) + [0] * (width - len(a)) for a in answers], device=base_lp.device)
    ranks = token_ranks(base_lp, tokens).tolist()
    probs = base_lp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1).exp().tolist()
    kls = topk_kl(base_lp, aligned_lp, top_k).tolist()
    tops = base_lp.argmax(-1).tolist()
    return [{"ranks": ranks[b][:len(a)], "base_probs": probs[b][:len(a)], "kls": kls[b][:len(a)],
             "base_top_ids": tops[b][:len(a)]} for b, a in enumerate(answers)]


def analyze_shift(base: PreTrainedModel, base_tokenizer: PreTrainedTokenizerBase, aligned: PreTrainedModel,
                  aligned_tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt], *, frame: str = "urial",
                  chat_template: ChatTemplate = True, max_new_tokens: int = 96, batch_size: int = 8,
                  top_k: int = DEFAULT_TOP_K) -> ShiftAnalysis:
    """The token distribution shift from `base` to `aligned` on the aligned model's greedy answers to `prompts`
    (module docstring). `chat_template` renders prompts for the aligned model (`render_prompt`); `frame`
    ("urial", "same", "plain") is what the base reads (`base_context_ids`). Arguments are checked (frame,
    top_k, prompts, one vocabulary) before anything is generated."""
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {', '.join(FRAMES)}, got {frame!r}")
    if top_k < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError(f"top_k, batch_size and max_new_tokens must be at least 1, got {top_k}, {batch_size}, "
                         f"{max_new_tokens}")
    if not prompts:
        raise ValueError("no prompts to analyse")
    check_same_vocabulary(base_tokenizer, aligned_tokenizer,
                          f"the base model {base_tokenizer.name_or_path}",
                          f"the aligned model {aligned_tokenizer.name_or_path}")
    samples = sample_sequences(aligned, aligned_tokenizer, prompts, n=1, temperature=0, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, chat_template=chat_template)
    answers = [_without_eos(ids[0], aligned_tokenizer.eos_token_id) for ids in samples.completion_ids]
    base_contexts = [base_context_ids(base_tokenizer, prompt, frame, ids)
                     for prompt, ids in zip(prompts, samples.prompt_ids)]
    order = sorted(range(len(prompts)), key=lambda i: len(answers[i]) + len(base_contexts[i]))
    scores: list[dict] = [{} for _ in prompts]
    pad_id = aligned_tokenizer.pad_token_id if aligned_tokenizer.pad_token_id is not None else 0
    with evaluating(base, aligned):
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            scored = score_answers(base, aligned, [base_contexts[i] for i in batch],
                                   [samples.prompt_ids[i] for i in batch], [answers[i] for i in batch],
                                   pad_id=pad_id, top_k=top_k)
            for index, score in zip(batch, scored):
                scores[index] = score
    return ShiftAnalysis([_answer_shift(aligned_tokenizer, prompt, samples.texts[i][0], answers[i], scores[i])
                          for i, prompt in enumerate(prompts)], frame, top_k)


def _answer_shift(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, text: str, ids: list[int],
                  score: dict[str, list]) -> AnswerShift:
    def texts(token_ids: list[int]) -> list[str]:
        return tokenizer.batch_decode([[token] for token in token_ids])

    return AnswerShift(prompt, text, ids, texts(ids), score["ranks"], score["base_probs"], score["kls"],
                       texts(score["base_top_ids"]))
