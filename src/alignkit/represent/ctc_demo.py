"""Plain CTC against CTC + the low-latency property loss of Align With Purpose (Segev et al. 2023, "Align With
Purpose: Optimize Desired Properties in CTC Models with a General Plug-and-Play Framework", arXiv 2307.01715),
on the synthetic speech of `alignkit.represent.synthetic_speech`.

The model is causal: one unidirectional GRU layer and a linear layer to the labels (blank = silence = 0), so
frame t sees frames 0..t only. Such a model has to wait for evidence before it can name a token, and CTC,
indifferent to where in its span a token is emitted, lets it wait: it emits late, which is where low latency
matters. Both runs start from the same seed, see the same batches and take the same steps; the property run
trains with plain CTC for `warmup` steps (sampled paths of an untrained model are noise) and then with
L_CTC + weight * L_prop.

Metrics on held-out utterances, from the greedy CTC path (the argmax label of each frame, runs collapsed,
blanks removed):
    token error rate = sum edit distance(reference, hypothesis) / sum reference length
    emission offset  = mean over correctly recognised tokens of (emission frame - true onset frame), the
                       emission frame being the first frame of the token's run in the greedy path and a token
                       correct when the edit-distance alignment matches it to an equal reference token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch

from alignkit.represent.ctc_property import ctc_property_loss
from alignkit.represent.synthetic_speech import SILENCE, SpeechConfig, SyntheticSpeech, Utterance, pad_batch


@dataclass(frozen=True)
class DemoSettings:
    steps: int = 1200            # optimiser steps of each run
    warmup: int = 400            # plain-CTC steps before the property loss is added
    batch: int = 32              # utterances per step (fresh ones each step, the same in both runs)
    hidden: int = 64             # GRU width
    lr: float = 3e-3             # Adam
    weight: float = 0.03         # weight of L_prop
    margin: float = 0.0          # hinge margin (nats)
    samples: int = 5             # N sampled paths per utterance
    test_utterances: int = 500   # held-out utterances
    seed: int = 0

    def __post_init__(self) -> None:
        positive = ("steps", "batch", "hidden", "samples", "test_utterances")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.warmup < self.steps:
            raise ValueError(f"warmup must be in [0, steps), got {self.warmup} with steps {self.steps}")
        if self.lr <= 0 or self.weight < 0 or self.margin < 0:
            raise ValueError(f"need lr > 0, weight >= 0, margin >= 0; got {self.lr}, {self.weight}, {self.margin}")


class CausalCTC(torch.nn.Module):
    """A unidirectional GRU and a linear layer to vocab + 1 labels (0 = blank): log-softmax [T, B, V]."""

    def __init__(self, dim: int, labels: int, hidden: int) -> None:
        super().__init__()
        self.gru = torch.nn.GRU(dim, hidden, batch_first=True)
        self.out = torch.nn.Linear(hidden, labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.gru(features)
        return self.out(hidden).log_softmax(-1).transpose(0, 1)


class Emission(NamedTuple):
    token: int
    frame: int  # the first frame of the token's run in the greedy path


class Scores(NamedTuple):
    token_error_rate: float
    mean_emission_offset: float   # frames after the true onset (nan when no token is correct)
    correct_tokens: int
    reference_tokens: int


def greedy_emissions(log_probs: torch.Tensor, blank: int = SILENCE) -> list[Emission]:
    """The tokens of the greedy CTC path of `log_probs` [T, V]: the argmax per frame, each run of a non-blank
    label one emission at the run's first frame."""
    path = log_probs.argmax(-1).tolist()
    return [Emission(label, t) for t, label in enumerate(path)
            if label != blank and (t == 0 or path[t - 1] != label)]


def edit_alignment(reference: Sequence[int], hypothesis: Sequence[int]) -> tuple[int, list[tuple[int, int]]]:
    """(Levenshtein distance, the (reference index, hypothesis index) pairs of equal tokens matched by a
    minimal alignment with the most matches), by dynamic programming over (distance, -matches) pairs."""
    rows, cols = len(reference) + 1, len(hypothesis) + 1
    best = [[(i + j, 0) if i == 0 or j == 0 else (0, 0) for j in range(cols)] for i in range(rows)]
    for i in range(1, rows):
        for j in range(1, cols):
            same = reference[i - 1] == hypothesis[j - 1]
            diagonal = (best[i - 1][j - 1][0] + (not same), best[i - 1][j - 1][1] - same)
            best[i][j] = min(diagonal, (best[i - 1][j][0] + 1, best[i - 1][j][1]),
                             (best[i][j - 1][0] + 1, best[i][j - 1][1]))
    matches, i, j = [], rows - 1, cols - 1
    while i and j:
        same = reference[i - 1] == hypothesis[j - 1]
        if best[i][j] == (best[i - 1][j - 1][0] + (not same), best[i - 1][j - 1][1] - same):
            if same:
                matches.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif best[i][j] == (best[i - 1][j][0] + 1, best[i - 1][j][1]):
            i -= 1
        else:
            j -= 1
    return best[-1][-1][0], matches[::-1]


@torch.no_grad()
def evaluate(model: torch.nn.Module, utterances: Sequence[Utterance]) -> Scores:
    """Token error rate and mean emission offset of `model`'s greedy CTC paths on `utterances`."""
    batch = pad_batch(utterances)
    log_probs = model(batch.features)
    errors, offsets = 0, []
    for row, utterance in enumerate(utterances):
        emissions = greedy_emissions(log_probs[:int(batch.lengths[row]), row])
        distance, matches = edit_alignment(utterance.tokens, [e.token for e in emissions])
        errors += distance
        offsets += [emissions[h].frame - utterance.onsets[r] for r, h in matches]
    reference = sum(len(u.tokens) for u in utterances)
    mean_offset = sum(offsets) / len(offsets) if offsets else float("nan")
    return Scores(errors / reference, mean_offset, len(offsets), reference)


def train(speech: SyntheticSpeech, settings: DemoSettings, weight: float) -> CausalCTC:
    """A CausalCTC trained for `settings.steps` steps; L_prop at `weight` from step `settings.warmup` on."""
    torch.manual_seed(settings.seed)
    model = CausalCTC(speech.config.dim, speech.config.vocab + 1, settings.hidden)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    sampler = torch.Generator().manual_seed(settings.seed + 1)
    for step in range(settings.steps):
        batch = pad_batch(speech.utterances(settings.batch, seed=settings.seed * 1_000_003 + 10 + step))
        loss = ctc_property_loss(model(batch.features), batch.targets, batch.lengths, batch.target_lengths,
                                 weight=weight if step >= settings.warmup else 0.0, samples=settings.samples,
                                 margin=settings.margin, blank=SILENCE, generator=sampler)
        optimiser.zero_grad()
        loss.total.backward()
        optimiser.step()
    return model


def compare(settings: DemoSettings = DemoSettings(), config: SpeechConfig = SpeechConfig()) -> dict:
    """Plain CTC and CTC + weight * L_prop trained alike, scored on the same held-out utterances: a JSON-ready
    document with both runs' scores, the differences, the settings and the wall time."""
    start = time.perf_counter()
    speech = SyntheticSpeech(config, seed=settings.seed)
    test = speech.utterances(settings.test_utterances, seed=settings.seed * 1_000_003 + 1)
    params = sum(p.numel() for p in CausalCTC(config.dim, config.vocab + 1, settings.hidden).parameters())
    runs = {name: evaluate(train(speech, settings, weight), test)._asdict()
            for name, weight in (("ctc", 0.0), ("ctc_property", settings.weight))}
    delta = {key: runs["ctc_property"][key] - runs["ctc"][key]
             for key in ("token_error_rate", "mean_emission_offset")}
    return {"method": "Align With Purpose, low-latency property (arXiv 2307.01715)", "runs": runs,
            "delta": delta, "settings": asdict(settings), "speech": asdict(config), "model_parameters": params,
            "wall_s": round(time.perf_counter() - start, 1)}
