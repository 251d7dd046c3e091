"""A seeded, speech-like synthetic task with known frame-level truth, for CTC training and forced alignment.

An utterance is a sequence of frames (feature vectors of `dim` values). It holds `tokens` drawn from a
vocabulary of ids 1..vocab (id 0 is silence, which is also the CTC blank). Each token spans a random number
of frames; silence frames lie before, between and after the tokens (at least one between any two tokens, so
two equal neighbours stay separable, as a CTC labelling needs). A frame's feature is

    x_t = prototype[label_t] + jitter_token + noise_t,

with `prototype` one random vector per id (row 0 is silence), `jitter_token` ~ N(0, jitter^2 I) drawn once
per token (the same word said differently each time) and zero for silence, and `noise_t` ~ N(0, noise^2 I)
drawn per frame. The truth of every frame (its token id, or 0) and of every token (its onset, the first
frame it spans, and its end) is returned with the features.

API (all seeded, nothing global):

    speech = SyntheticSpeech(SpeechConfig(), seed=0)   # the prototypes: one fixed "language" per seed
    utterances = speech.utterances(100, seed=1)        # list[Utterance]; the same seed, the same list
    batch = pad_batch(utterances)                      # padded tensors in the layout torch.nn.CTCLoss takes
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

SILENCE = 0  # the label of a silence frame; also the CTC blank id


@dataclass(frozen=True)
class SpeechConfig:
    """The shape of the task. Ranges are inclusive (low, high)."""

    vocab: int = 8                           # token ids 1..vocab
    dim: int = 16                            # feature values per frame
    tokens: tuple[int, int] = (3, 6)         # tokens per utterance
    token_frames: tuple[int, int] = (3, 7)   # frames a token spans
    gap_frames: tuple[int, int] = (1, 3)     # silence frames between two tokens (low >= 1)
    edge_frames: tuple[int, int] = (1, 4)    # silence frames before the first and after the last token
    noise: float = 1.0                       # std of the per-frame noise
    jitter: float = 0.3                      # std of the per-token shift of the prototype

    def __post_init__(self) -> None:
        for name in ("tokens", "token_frames", "gap_frames", "edge_frames"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name}: need 0 <= low <= high, got ({low}, {high})")
        if self.vocab < 1 or self.dim < 1:
            raise ValueError(f"vocab and dim must be at least 1, got {self.vocab} and {self.dim}")
        if self.tokens[0] < 1 or self.token_frames[0] < 1 or self.gap_frames[0] < 1:
            raise ValueError("tokens, token_frames and gap_frames need low >= 1")
        if self.noise < 0 or self.jitter < 0:
            raise ValueError(f"noise and jitter must be >= 0, got {self.noise} and {self.jitter}")


class Utterance(NamedTuple):
    features: torch.Tensor    # [frames, dim] float32
    tokens: list[int]         # the token ids in order (values 1..vocab): the CTC target
    frame_labels: list[int]   # [frames]: the token id each frame belongs to, SILENCE (0) between tokens
    onsets: list[int]         # onsets[k]: the first frame of tokens[k]
    ends: list[int]           # ends[k]: one past the last frame of tokens[k]


class Batch(NamedTuple):
    features: torch.Tensor        # [B, T_max, dim], zero past each utterance's frames
    lengths: torch.Tensor         # [B] int64: frames per utterance
    targets: torch.Tensor         # [B, S_max] int64 token ids, padded with SILENCE
    target_lengths: torch.Tensor  # [B] int64: tokens per utterance


def _draw(low_high: tuple[int, int], generator: torch.Generator) -> int:
    low, high = low_high
    return int(torch.randint(low, high + 1, (1,), generator=generator))


class SyntheticSpeech:
    """One synthetic "language": the prototypes drawn from `seed`; utterances drawn from their own seeds."""

    def __init__(self, config: SpeechConfig = SpeechConfig(), seed: int = 0) -> None:
        self.config = config
        generator = torch.Generator().manual_seed(seed)
        self.prototypes = torch.randn(config.vocab + 1, config.dim, generator=generator)  # row 0: silence

    def layout(self, generator: torch.Generator) -> tuple[list[int], list[int], list[int], int]:
        """(tokens, onsets, ends, frames) of one utterance: where each token lies, before any feature."""
        config = self.config
        tokens = [_draw((1, config.vocab), generator) for _ in range(_draw(config.tokens, generator))]
        onsets, ends = [], []
        frame = _draw(config.edge_frames, generator)
        for index in range(len(tokens)):
            if index:
                frame += _draw(config.gap_frames, generator)
            onsets.append(frame)
            frame += _draw(config.token_frames, generator)
            ends.append(frame)
        return tokens, onsets, ends, frame + _draw(config.edge_frames, generator)

    def utterance(self, generator: torch.Generator) -> Utterance:
        """One utterance drawn with `generator`: features and their frame-level truth."""
        config = self.config
        tokens, onsets, ends, frames = self.layout(generator)
        frame_labels = [SILENCE] * frames
        means = self.prototypes[SILENCE].repeat(frames, 1)
        for token, onset, end in zip(tokens, onsets, ends):
            frame_labels[onset:end] = [token] * (end - onset)
            jitter = config.jitter * torch.randn(config.dim, generator=generator)
            means[onset:end] = self.prototypes[token] + jitter
        features = means + config.noise * torch.randn(frames, config.dim, generator=generator)
        return Utterance(features, tokens, frame_labels, onsets, ends)

    def utterances(self, count: int, seed: int) -> list[Utterance]:
        """`count` utterances drawn from `seed` (the same seed gives the same list)."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        generator = torch.Generator().manual_seed(seed)
        return [self.utterance(generator) for _ in range(count)]


def pad_batch(utterances: Sequence[Utterance]) -> Batch:
    """The utterances padded into one batch (features zero-padded, targets padded with SILENCE)."""
    if not utterances:
        raise ValueError("no utterances to batch")
    lengths = torch.tensor([len(u.frame_labels) for u in utterances])
    target_lengths = torch.tensor([len(u.tokens) for u in utterances])
    dim = utterances[0].features.shape[1]
    features = torch.zeros(len(utterances), int(lengths.max()), dim)
    targets = torch.full((len(utterances), int(target_lengths.max())), SILENCE, dtype=torch.long)
    for row, utterance in enumerate(utterances):
        features[row, :len(utterance.frame_labels)] = utterance.features
        targets[row, :len(utterance.tokens)] = torch.tensor(utterance.tokens)
    return Batch(features, lengths, targets, target_lengths)
