"""Align With Purpose: a property loss added to CTC (Segev et al. 2023, "Align With Purpose: Optimize Desired
Properties in CTC Models with a General Plug-and-Play Framework", arXiv 2307.01715: its AWP loss and its
low-latency (emission-time) application, read from the abstract and a third-party implementation; the full
text's section and equation numbers are not checked).

CTC marginalises over every alignment (a frame-level path over the labels plus the blank) that collapses to
the target, and says nothing about which of them the model should prefer. Align With Purpose samples
alignments from the model, maps each through a property function f to an alignment that is better for the
property, and asks by a hinge that the better one be more likely:

    a_1..a_N ~ prod_t p_t(. | x)                     (each frame drawn from its own softmax, N = 5)
    L_prop(x) = 1/N sum_i max(0, log P(a_i | x) - log P(f(a_i) | x) + margin)
    log P(a | x) = sum_t log p_t(a_t | x)            (a path's log-probability: the sum over its frames)
    L = L_CTC + weight * L_prop

The sampling reads the paper as drawing alignments from the model's frame distributions: free frame-wise
draws, so a sampled path need not collapse to the target (the abstract counts telling imperfect alignments
apart as a feature). The sampled paths carry no gradient; both log-probabilities do. The hinge is taken per
pair and then averaged, as the third-party implementation ChinmayPimpalkhare/CS753_ASR (`awp.py`) does; the
paper's exact equation and its official code are unverified. A clamp of the means instead,
max(0, mean_i log P(a_i) - mean_i log P(f(a_i)) + margin), is never larger (the hinge is convex) and is zero
as soon as the pairs pass on average. A path's log-probability is summed over frames, so `margin` is in nats
per utterance (that implementation divides it by the frame count). A pair that f leaves unchanged contributes
0, not the margin (its two terms cancel, so it has no gradient either way).

The low-latency property (the paper's emission-time application) shifts a path one frame earlier: it drops
one frame whose removal keeps the path's labelling (a blank at frame 0, or any frame that repeats its
predecessor: a repeated token or a blank inside a run of blanks), chosen uniformly at random among those (the
candidate set of the third-party implementation), and appends a blank at the end. Every token emitted after
the dropped frame is then emitted one frame earlier; a drop after the last token changes nothing.

Another property is any function with the `PropertyFunction` signature: (path, target, blank, generator)
-> a path of the same length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch


class PropertyFunction(Protocol):
    """f in L_prop: a sampled path (frame labels, blank included) mapped to one that is better for a property."""

    def __call__(self, path: list[int], target: Sequence[int], *, blank: int,
                 generator: torch.Generator) -> list[int]: ...


class PropertyLoss(NamedTuple):
    total: torch.Tensor     # L_CTC + weight * L_prop
    ctc: torch.Tensor       # torch.nn.CTCLoss (reduction "mean": per-utterance loss / target length, averaged)
    property: torch.Tensor  # L_prop averaged over the batch (zero, not computed, when weight is 0)


def droppable_frames(path: Sequence[int], blank: int) -> list[int]:
    """The frames whose removal keeps the labelling of `path` and moves every later frame one earlier.

    Frame 0 when it is a blank, and every frame t > 0 with path[t] == path[t - 1] (a repeated token, or a
    blank inside a run of blanks). Dropping a lone blank between two tokens is excluded: between two equal
    tokens it would merge them.
    """
    first = [0] if path and path[0] == blank else []
    return first + [t for t in range(1, len(path)) if path[t] == path[t - 1]]


def shift_earlier(path: Sequence[int], frame: int, blank: int) -> list[int]:
    """`path` with `frame` dropped and a blank appended: the same labelling, every later frame one earlier.

    `frame` must be one of `droppable_frames(path, blank)` (ValueError otherwise).
    """
    if frame not in droppable_frames(path, blank):
        raise ValueError(f"frame {frame} of {list(path)} is neither a leading blank nor a repeat")
    return [*path[:frame], *path[frame + 1:], blank]


def low_latency(path: list[int], target: Sequence[int], *, blank: int, generator: torch.Generator) -> list[int]:
    """f_low_latency (arXiv 2307.01715, the emission-time property): `path` shifted one frame earlier at a
    droppable frame drawn uniformly with `generator`; `path` itself when no frame is droppable. `target` is
    unused: latency is a property of the path alone."""
    frames = droppable_frames(path, blank)
    if not frames:
        return list(path)
    return shift_earlier(path, frames[int(torch.randint(len(frames), (1,), generator=generator))], blank)


def sample_paths(log_probs: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
    """`samples` paths [samples, T] drawn frame by frame from the softmax `log_probs` [T, V] (no gradient)."""
    probs = log_probs.detach().exp()
    return torch.multinomial(probs, samples, replacement=True, generator=generator).T


def path_log_probs(log_probs: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
    """log P(a | x) = sum_t log_probs[t, a_t] for each path a (a row of `paths` [N, T]); `log_probs` [T, V]."""
    frames = torch.arange(paths.shape[1])
    return log_probs[frames, paths].sum(-1)


def pair_hinges(log_probs: torch.Tensor, sampled: torch.Tensor, improved: torch.Tensor,
                margin: float) -> torch.Tensor:
    """max(0, log P(a_i) - log P(f(a_i)) + margin) for each pair of rows of `sampled` and `improved` [N, T]
    (`log_probs` [T, V]); 0 for a pair with f(a_i) == a_i."""
    gap = path_log_probs(log_probs, sampled) - path_log_probs(log_probs, improved)
    changed = (sampled != improved).any(-1)
    return torch.clamp(gap + margin, min=0) * changed


def utterance_property_loss(log_probs: torch.Tensor, target: Sequence[int], *, samples: int, margin: float,
                            property_fn: PropertyFunction, blank: int,
                            generator: torch.Generator) -> torch.Tensor:
    """L_prop of one utterance, `log_probs` [T, V] of its real frames: the mean of `pair_hinges` over N paths
    sampled by `sample_paths` and mapped through `property_fn`."""
    paths = sample_paths(log_probs, samples, generator)
    improved = torch.tensor([property_fn(path, target, blank=blank, generator=generator)
                             for path in paths.tolist()], dtype=torch.long)
    return pair_hinges(log_probs, paths, improved, margin).mean()


def property_loss(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
                  target_lengths: torch.Tensor, *, samples: int = 5, margin: float = 0.0,
                  property_fn: PropertyFunction = low_latency, blank: int = 0,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """L_prop averaged over a batch in torch.nn.CTCLoss's layout: `log_probs` [T, B, V] (log-softmax),
    `targets` [B, S] padded, `input_lengths` and `target_lengths` [B]."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    generator = generator if generator is not None else torch.default_generator
    losses = [utterance_property_loss(log_probs[:int(frames), row], targets[row, :int(length)].tolist(),
                                      samples=samples, margin=margin, property_fn=property_fn, blank=blank,
                                      generator=generator)
              for row, (frames, length) in enumerate(zip(input_lengths, target_lengths))]
    return torch.stack(losses).mean()


def ctc_property_loss(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths: torch.Tensor,
                      target_lengths: torch.Tensor, *, weight: float, samples: int = 5, margin: float = 0.0,
                      property_fn: PropertyFunction = low_latency, blank: int = 0,
                      generator: torch.Generator | None = None) -> PropertyLoss:
    """L = L_CTC + weight * L_prop (arXiv 2307.01715, the AWP loss), L_CTC by torch.nn.CTCLoss (reduction "mean",
    infinite losses zeroed). Arguments as `property_loss`; `weight` >= 0."""
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    ctc = torch.nn.CTCLoss(blank=blank, reduction="mean", zero_infinity=True)(
        log_probs, targets, input_lengths, target_lengths)
    if weight == 0:
        return PropertyLoss(ctc, ctc, torch.zeros((), dtype=ctc.dtype))
    prop = property_loss(log_probs, targets, input_lengths, target_lengths, samples=samples, margin=margin,
                         property_fn=property_fn, blank=blank, generator=generator)
    return PropertyLoss(ctc + weight * prop, ctc, prop)
