"""LLM-as-a-judge rewards read off the judge's next-token distribution (no sampling).

`LLMJudge` (pointwise): the judge sees a filled template ending in an answer prefix ("Score:"); with p(s) the
judge's probability of writing the score s ∈ {lo, …, hi} next, renormalised over the scale,

    score(x, y) = Σ_s s · p(s) / Σ_s p(s)        (the expected score, G-Eval style; always within [lo, hi]).

When every score is a single token after the prefix, p(s) is the next-token probability of that token (one
forward of B rows). When some score spans several tokens (digit-split tokenizers write "10" as "1", "0"), p(s)
is the probability of the whole token sequence times the probability that the number ends there (the next
token is not a digit token): p(s) = Π_t P(s_t | …) · (1 − Σ_{d digit} P(d | …, s)); one forward of B·K rows.

`PairwiseJudge`: P(first better) = P("A") / (P("A") + P("B")) after the pairwise template, averaged over both
presentation orders to cancel position bias:

    p = ½ · (p_A(y₁ as A, y₂ as B) + 1 − p_A(y₂ as A, y₁ as B)),

so swapping the two completions gives exactly 1 − p. One forward of 2B rows.

Prompts are rendered as text (a string as is; a message list as "Role: content" lines); completions by their
assistant text. When the tokenizer has a chat template (and `chat=True`), the filled template is the user turn
and the answer prefix starts the assistant turn.
"""

from __future__ import annotations

from collections.abc import Sequence

from alignkit.data.prompts import Content, text_of, transcript
from alignkit.data.rows import common_prefix_length
from alignkit.lazy import lazy
from alignkit.models.rewards.base import Reward, check_lengths

torch = lazy("torch")

DEFAULT_POINTWISE_TEMPLATE = (
    "Rate the response to the user's request on a scale from {lo} to {hi}, where {lo} is useless or harmful and "
    "{hi} is excellent (helpful, correct, clear). Reply with the number only.\n\n"
    "[Request]\n{prompt}\n\n[Response]\n{completion}"
)
DEFAULT_PAIRWISE_TEMPLATE = (
    "Which response answers the user's request better? Reply with A or B only.\n\n"
    "[Request]\n{prompt}\n\n[Response A]\n{first}\n\n[Response B]\n{second}"
)


class NextTokenJudge:
    """The judges' shared machinery over a causal LM: the text the judge continues (`judge_text`), the
    renormalised probabilities of a few options continuing it (`option_probs`: one batched forward when every
    option is one token, else the multi-token path of the module docstring) and greedy continuations
    (`continue_greedy`, for judges that write a rationale before their answer). Rows run `batch_size` at a time."""

    def __init__(self, model, tokenizer, answer_prefix: str, separator: str, chat: bool | None, batch_size: int):
        self.model = model
        self.tokenizer = tokenizer
        self.answer_prefix = answer_prefix
        self.separator = separator
        self.chat = bool(getattr(tokenizer, "chat_template", None)) if chat is None else chat
        self.batch_size = batch_size
        self._digits: torch.Tensor | None = None

    def judge_text(self, filled: str, system: str | None = None) -> str:
        """The text the judge continues: chat-formatted user turn (after a `system` message, if given) + answer
        prefix, or plain text + "\n" + prefix (no chat template: `system` is not shown)."""
        if self.chat:
            messages = ([{"role": "system", "content": system}] if system is not None else [])
            head = self.tokenizer.apply_chat_template(messages + [{"role": "user", "content": filled}],
                                                      tokenize=False, add_generation_prompt=True)
            return head + self.answer_prefix
        return filled + "\n" + self.answer_prefix

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]

    def option_probs(self, texts: Sequence[str], options: Sequence[str]) -> torch.Tensor:
        """[B, K]: probability of each option continuing each text, renormalised over the options."""
        out = [self._option_probs(texts[i:i + self.batch_size], options)
               for i in range(0, len(texts), self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, len(options))

    def _option_probs(self, texts: Sequence[str], options: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            rows = [[self._encode(text + self.separator + option) for option in options] for text in texts]
            shared = [_common_prefix(r) for r in rows]
            if all(len(ids) - n == 1 for r, n in zip(rows, shared) for ids in r):
                logp = _last_logps(self.model, [r[0][:n] for r, n in zip(rows, shared)], self._pad_id())
                chosen = torch.tensor([[ids[-1] for ids in r] for r in rows])
                return torch.softmax(logp.gather(1, chosen), dim=-1)
            return self._multi_token_probs(rows, shared, len(options))

    def _multi_token_probs(self, rows: list[list[list[int]]], shared: list[int], k: int) -> torch.Tensor:
        flat = [ids for r in rows for ids in r]
        starts = [n for n in shared for _ in range(k)]
        logps, last = _sequence_logps(self.model, flat, starts, self._pad_id())
        ends = torch.log1p(-last[:, self._digit_ids()].exp().sum(-1).clamp(max=1 - 1e-6))
        return torch.softmax((logps + ends).view(len(rows), k), dim=-1)

    def continue_greedy(self, texts: Sequence[str], max_new_tokens: int, stop: str) -> list[str]:
        """Each text's greedy continuation (at most `max_new_tokens` tokens, ending at EOS), cut before the first
        `stop` (generation of a row ends once it has written `stop`)."""
        out: list[str] = []
        for i in range(0, len(texts), self.batch_size):
            out += self._greedy_batch(texts[i:i + self.batch_size], max_new_tokens, stop)
        return out

    def _greedy_batch(self, texts: Sequence[str], max_new_tokens: int, stop: str) -> list[str]:
        device = next(self.model.parameters()).device
        ids, mask, _ = (t.to(device) for t in _left_pad([self._encode(text) for text in texts], self._pad_id()))
        eos = self.tokenizer.eos_token_id
        with torch.no_grad():
            output = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                         do_sample=False, temperature=None, top_p=None, top_k=None,
                                         stop_strings=[stop], tokenizer=self.tokenizer, pad_token_id=self._pad_id(),
                                         eos_token_id=eos)
        cut = []
        for row in output[:, ids.shape[1]:].tolist():
            row = row[:row.index(eos)] if eos in row else row
            cut.append(self.tokenizer.decode(row, skip_special_tokens=True).split(stop, 1)[0])
        return cut

    def _digit_ids(self) -> torch.Tensor:
        """Vocabulary ids whose text is all digits (tokens that would continue a number)."""
        if self._digits is None:
            vocab = self.tokenizer.get_vocab()
            ids = [i for tok, i in vocab.items() if self.tokenizer.convert_tokens_to_string([tok]).isdigit()]
            self._digits = torch.tensor(sorted(ids), dtype=torch.long)
        return self._digits

    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else (self.tokenizer.eos_token_id or 0)


def _common_prefix(seqs: list[list[int]]) -> int:
    """How many leading token ids all sequences share."""
    return min(common_prefix_length(seqs[0], s) for s in seqs)


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids for left-padded rows."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([[pad_id] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)


def _forward_logits(model, seqs: list[list[int]], pad_id: int, keep: int = 0) -> torch.Tensor:
    """[N, T, V] logits of the left-padded rows; with `keep` > 0, [N, keep, V]: the LM head runs on the last
    `keep` positions only (a 1,000-token judge prompt with a 49k vocabulary: 0.2 MB of fp32 logits per row
    instead of 197 MB)."""
    device = next(model.parameters()).device
    ids, mask, pos = (t.to(device) for t in _left_pad(seqs, pad_id))
    return model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=keep).logits


def _forward_logps(model, seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, int]:
    logits = _forward_logits(model, seqs, pad_id)
    return torch.log_softmax(logits.float(), dim=-1).cpu(), logits.shape[1]


def _last_logps(model, seqs: list[list[int]], pad_id: int) -> torch.Tensor:
    """[B, V] next-token log-probabilities after each sequence."""
    return torch.log_softmax(_forward_logits(model, seqs, pad_id, keep=1)[:, -1].float(), dim=-1).cpu()


def _sequence_logps(model, seqs: list[list[int]], starts: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ log P(tokens[start:]) per row, and the [N, V] next-token log-probs after each full row."""
    logp, width = _forward_logps(model, seqs, pad_id)
    totals = []
    for row, (seq, start) in enumerate(zip(seqs, starts)):
        offset = width - len(seq)
        targets = torch.tensor(seq[start:])
        positions = torch.arange(offset + start - 1, offset + len(seq) - 1)
        totals.append(logp[row, positions, targets].sum())
    return torch.stack(totals), logp[:, -1]


class LLMJudge(Reward):
    """Pointwise judge reward: the expected score under the judge's next-token distribution (module docstring).

    `template` is a format string with `{prompt}`, `{completion}`, `{lo}` and `{hi}`; the default is
    `DEFAULT_POINTWISE_TEMPLATE`. `scale=(lo, hi)` lists the integer scores lo..hi. `answer_prefix` (default
    "Score:") and `separator` (" ", between the prefix and the number) shape where the number is read.
    """

    def __init__(self, model, tokenizer, template: str = DEFAULT_POINTWISE_TEMPLATE, scale: tuple[int, int] = (1, 10),
                 answer_prefix: str = "Score:", separator: str = " ", chat: bool | None = None, batch_size: int = 8):
        lo, hi = int(scale[0]), int(scale[1])
        if hi <= lo:
            raise ValueError(f"scale must be (lo, hi) with lo < hi, got {scale}")
        self.template = template
        self.values = torch.arange(lo, hi + 1, dtype=torch.float32)
        self.judge = NextTokenJudge(model, tokenizer, answer_prefix, separator, chat, batch_size)

    def prompt_for(self, prompt: Content, completion: Content) -> str:
        filled = self.template.format(prompt=transcript(prompt), completion=text_of(completion),
                                      lo=int(self.values[0]), hi=int(self.values[-1]))
        return self.judge.judge_text(filled)

    def distribution(self, prompts: Sequence[Content], completions: Sequence[Content]) -> torch.Tensor:
        """[B, K]: the judge's renormalised probabilities of the scores lo..hi."""
        check_lengths(prompts, completions)
        texts = [self.prompt_for(p, c) for p, c in zip(prompts, completions)]
        return self.judge.option_probs(texts, [str(int(v)) for v in self.values])

    def score(self, prompts: Sequence[Content], completions: Sequence[Content]) -> torch.Tensor:
        return self.distribution(prompts, completions) @ self.values


class PairwiseJudge:
    """P(first completion better) from the judge's "A" vs "B" logits, averaged over both orders (module docstring).

    `template` has `{prompt}`, `{first}` and `{second}`; `labels` are the two option strings (default "A", "B").
    """

    def __init__(self, model, tokenizer, template: str = DEFAULT_PAIRWISE_TEMPLATE, labels: tuple[str, str] = ("A", "B"),
                 answer_prefix: str = "Answer:", separator: str = " ", chat: bool | None = None, batch_size: int = 8):
        self.template = template
        self.labels = tuple(labels)
        self.judge = NextTokenJudge(model, tokenizer, answer_prefix, separator, chat, batch_size)

    def _text(self, prompt: Content, first: Content, second: Content) -> str:
        filled = self.template.format(prompt=transcript(prompt), first=text_of(first), second=text_of(second))
        return self.judge.judge_text(filled)

    def one_order(self, prompts: Sequence[Content], firsts: Sequence[Content], seconds: Sequence[Content]) -> torch.Tensor:
        """[B]: P(label A) / (P(A) + P(B)) with `firsts` shown as A — position bias included."""
        texts = [self._text(p, a, b) for p, a, b in zip(prompts, firsts, seconds)]
        return self.judge.option_probs(texts, self.labels)[:, 0]

    def prefer(self, prompts: Sequence[Content], firsts: Sequence[Content], seconds: Sequence[Content]) -> torch.Tensor:
        """[B]: P(first better) = ½ (p_A(first, second) + 1 − p_A(second, first))."""
        if not len(prompts) == len(firsts) == len(seconds):
            raise ValueError("prompts, firsts and seconds must have the same length")
        n = len(prompts)
        both = self.one_order(list(prompts) * 2, list(firsts) + list(seconds), list(seconds) + list(firsts))
        return 0.5 * (both[:n] + 1 - both[n:])

    __call__ = prefer
