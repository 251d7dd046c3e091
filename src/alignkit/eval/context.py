"""Context grounding on held-out context rows (the `context` format): does the model answer from the passage?

For Re-Align's rDPO in text form (Xing et al. 2025, arXiv 2502.13146): each row has a question, a passage c
that states the answer, a distractor passage c̃ that does not, the right answer y_w and a wrong one y_l. With
completion log-probs summed over the answer's tokens, exactly as training scores them:

* answer preferred: the fraction of rows with log π(y_w | c) > log π(y_l | c) (what DPO trains);
* context preferred: the fraction with log π(y_w | c) > log π(y_w | c̃) (what rDPO's second term adds);
* context margin: the mean of log π(y_w | c) − log π(y_w | c̃), in nats;
* exact match: with an `answer` field, the fraction of greedy answers under c that contain it
  (case-insensitive), i.e. whether generation uses the passage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignkit.data import Example
from alignkit.decode.sampling import draw_samples
from alignkit.models.likelihood import completion_likelihoods


@dataclass(frozen=True)
class Grounding:
    rows: int
    answer_preferred: float
    context_preferred: float
    context_margin: float
    exact_match: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def context_grounding(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example],
                      answers: Sequence[str] | None = None, *, max_new_tokens: int = 24,
                      batch_size: int = 8) -> Grounding:
    """The four measures above for `examples` (rows of the `context` format) under `model`."""
    if not examples:
        raise ValueError("no context rows to evaluate")
    singles = []
    for example in examples:
        (right, (chosen, rejected)), (distractor, _) = example.groups
        singles += [Example.single(right, chosen, example.where), Example.single(right, rejected, example.where),
                    Example.single(distractor, chosen, example.where)]
    _, sums = completion_likelihoods(model, tokenizer, singles, batch_size=batch_size)
    chosen, rejected, distracted = sums[0::3], sums[1::3], sums[2::3]
    count = len(examples)
    exact = None
    if answers is not None:
        texts, _, _ = draw_samples(model, tokenizer, [example.prompt for example in examples], n=1, temperature=0.0,
                                   max_new_tokens=max_new_tokens, batch_size=batch_size)
        exact = sum(answer.lower() in text[0].lower() for answer, text in zip(answers, texts)) / count
    return Grounding(rows=count,
                     answer_preferred=sum(c > r for c, r in zip(chosen, rejected)) / count,
                     context_preferred=sum(c > d for c, d in zip(chosen, distracted)) / count,
                     context_margin=sum(c - d for c, d in zip(chosen, distracted)) / count,
                     exact_match=exact)
