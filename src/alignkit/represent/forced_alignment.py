"""CTC forced alignment: the best path through the CTC trellis, and confidence scores read from that path.

The trellis (Graves et al. 2006, "Connectionist Temporal Classification: Labelling Unsegmented Sequence
Data with Recurrent Neural Networks", ICML, Section 4.1) interleaves the target y_1..y_L with blanks,
z = (∅, y_1, ∅, y_2, ..., ∅, y_L, ∅), S = 2L + 1 states. The Viterbi recursion keeps the best path score

    δ_t(s) = log p_t(z_s) + max(δ_{t-1}(s),                                   stay
                                δ_{t-1}(s-1),                                 advance
                                δ_{t-1}(s-2) if z_s ≠ ∅ and z_s ≠ z_{s-2})    skip the blank between two
                                                                              different labels

so a repeated label needs a blank frame between its two emissions and L labels with R adjacent repeats need
at least L + R frames. A path starts in state 0 or 1 at frame 0 and ends in state S-1 or S-2 at frame T-1.

Free start and end (CTC segmentation: Kürzinger et al. 2020, "CTC-Segmentation of Large Corpora for German
End-to-end Speech Recognition", arXiv 2007.09127, its trellis with a zero-cost start state and the end taken
at the best row of the last column): with `free_start` the frames before the first label cost nothing (the
path may enter y_1 at any frame), with `free_end` the frames after the last label cost nothing (the path may
leave y_L at any frame). The best score is then the best standard alignment over every sub-window, which lets
a text be placed inside a longer window that also holds untranscribed audio.

Confidence (the same paper's segment score, as the `ctc-segmentation` package computes it and the iterative
pseudo-forced alignment code calls it: López & Luque 2022, "Iterative pseudo-forced alignment by acoustic
CTC loss for self-supervised ASR domain adaptation", arXiv 2210.15226): with a_t = log p_t(z_{s_t}), the log
posterior of the path's state at frame t, a segment's score is the least mean over windows of L frames,

    score = min_{τ} (1/L) Σ_{t=τ}^{τ+L-1} a_t      (the plain mean when the segment is at most L frames),

a log value ≤ 0; exp(score) is a geometric mean of path posteriors, 1 exactly when the path's frames are
certain. The package's L is 30 frames. Its loop stops one window short of the segment's end and starts its
minimum at 0; here every full window counts (UNVERIFIED which of the two the paper's numbers used).
`window=None` gives the mean frame log posterior of the whole segment. A token's score is the mean a_t over
its frames.

The recursion runs over frames one step at a time (each step a vector operation over the S states, in
numpy); the emissions of all frames are gathered at once, and the per-token summaries are vectorised, in
torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

STAY, ADVANCE, SKIP, ENTER = 0, 1, 2, 3  # backpointer codes; ENTER: the path begins here (free start)


class CTCAlignment(NamedTuple):
    """The best path of a target through a [T, V] posterior.

    frame_states: [T] trellis state per frame, -1 outside the path (free start/end frames).
    frame_labels: [T] vocabulary id of each frame's state (the blank where a blank state), -1 outside.
    frame_log_probs: [T] a_t = log p_t(label of the path's state), 0 outside the path.
    token_starts, token_ends: [L] first and last frame (inclusive) at which each target token is emitted.
    token_scores: [L] mean a_t over each token's frames.
    score: the path's total log-probability Σ_t a_t.
    """

    frame_states: torch.Tensor
    frame_labels: torch.Tensor
    frame_log_probs: torch.Tensor
    token_starts: torch.Tensor
    token_ends: torch.Tensor
    token_scores: torch.Tensor
    score: float


def min_frames(targets: Sequence[int]) -> int:
    """Frames a CTC path for `targets` needs: one per token plus one blank between each equal adjacent pair."""
    repeats = sum(1 for a, b in zip(targets[:-1], targets[1:]) if a == b)
    return len(targets) + repeats


def extended_targets(targets: Sequence[int], blank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The blank-interleaved states z [2L+1] and whether each state may be entered by a skip (z_s ≠ ∅, z_{s-2})."""
    states = torch.full((2 * len(targets) + 1,), blank, dtype=torch.long)
    states[1::2] = torch.as_tensor(list(targets), dtype=torch.long)
    can_skip = torch.zeros(len(states), dtype=torch.bool)
    can_skip[3::2] = states[3::2] != states[1:-2:2]
    return states, can_skip


def check_targets(log_probs: torch.Tensor, targets: Sequence[int], blank: int) -> None:
    """ValueError for a malformed call, or for a target no path through `log_probs` can emit."""
    if log_probs.dim() != 2:
        raise ValueError(f"log_probs must be [frames, vocabulary], got shape {tuple(log_probs.shape)}")
    if not targets:
        raise ValueError("empty target: nothing to align")
    vocab = log_probs.shape[1]
    if any(t == blank or not 0 <= t < vocab for t in targets):
        raise ValueError(f"targets must be vocabulary ids in [0, {vocab}) other than the blank {blank}")
    needed = min_frames(targets)
    if log_probs.shape[0] < needed:
        raise ValueError(f"impossible alignment: {len(targets)} tokens need at least {needed} frames "
                         f"(a blank between repeated labels), the posterior has {log_probs.shape[0]}")


class ViterbiTable(NamedTuple):
    back: np.ndarray  # [T, S] int8 backpointers: STAY, ADVANCE, SKIP or ENTER
    last: np.ndarray  # [S] δ_{T-1}
    end_column: np.ndarray  # [T] δ_t(S-2), the best path ending in y_L at frame t


def viterbi_table(emissions: np.ndarray, can_skip: np.ndarray, free_start: bool) -> ViterbiTable:
    """The Viterbi recursion over emissions [T, S] (log p_t(z_s)). It runs in numpy: one small vector step
    per frame, where torch's per-operation overhead and intra-op threads cost several times more."""
    frames, width = emissions.shape
    back = np.zeros((frames, width), dtype=np.int8)
    end_column = np.empty(frames)
    skip_mask = np.where(can_skip, 0.0, -np.inf)
    padded = np.full(width + 2, -np.inf)  # δ_{t-1} behind two -inf cells: previous, advance, skip are views
    current = np.full(width, -np.inf)
    if free_start:  # state 0 stays unreachable: the cost-free prefix replaces the leading blank
        current[1], back[0, 1] = emissions[0, 1], ENTER
    else:
        current[:2] = emissions[0, :2]
    end_column[0] = current[-2]
    for t in range(1, frames):
        padded[2:] = current
        previous, advance, skip = padded[2:], padded[1:-1], padded[:-2] + skip_mask
        code = (advance > previous).astype(np.int8)
        best = np.maximum(previous, advance)
        code[skip > best] = SKIP
        best = np.maximum(best, skip)
        if free_start and best[1] < 0.0:  # entering y_1 from the cost-free prefix beats every path into it
            best[1], code[1] = 0.0, ENTER
        current, back[t] = best + emissions[t], code
        end_column[t] = current[-2]
    return ViterbiTable(back, current, end_column)


def path_end(table: ViterbiTable, free_end: bool) -> tuple[int, int, float]:
    """(frame, state, score) where the best path ends: the last frame in state S-1 or S-2, or with `free_end`
    the best frame in state S-2 (the latest among equals, so that a certain token keeps all its frames)."""
    last = len(table.last) - 1
    if free_end:
        frame = len(table.end_column) - 1 - int(np.argmax(table.end_column[::-1]))
        return frame, last - 1, float(table.end_column[frame])
    state = last if table.last[last] > table.last[last - 1] else last - 1
    return len(table.end_column) - 1, state, float(table.last[state])


def backtrack(back: np.ndarray, end_frame: int, end_state: int) -> torch.Tensor:
    """[T] state per frame along the backpointers from (end_frame, end_state), -1 outside the path."""
    states = np.full(back.shape[0], -1, dtype=np.int64)
    state = end_state
    for t in range(end_frame, -1, -1):
        states[t] = state
        code = int(back[t, state])
        if code == ENTER or t == 0:
            break
        state -= code
    return torch.from_numpy(states)


def token_summary(frame_states: torch.Tensor, frame_log_probs: torch.Tensor, n_tokens: int) -> tuple[torch.Tensor, ...]:
    """First frame, last frame and mean a_t of each token (label state 2k+1) on the path."""
    frames = torch.arange(len(frame_states))
    on_label = (frame_states >= 0) & (frame_states % 2 == 1)
    token = frame_states[on_label] // 2
    starts = torch.full((n_tokens,), len(frame_states), dtype=torch.long).scatter_reduce(
        0, token, frames[on_label], reduce="amin")
    ends = torch.full((n_tokens,), -1, dtype=torch.long).scatter_reduce(0, token, frames[on_label], reduce="amax")
    sums = torch.zeros(n_tokens, dtype=frame_log_probs.dtype).index_add(0, token, frame_log_probs[on_label])
    counts = torch.zeros(n_tokens, dtype=frame_log_probs.dtype).index_add(
        0, token, torch.ones_like(frame_log_probs[on_label]))
    return starts, ends, sums / counts


def ctc_forced_align(log_probs: torch.Tensor, targets: Sequence[int], *, blank: int = 0, free_start: bool = False,
                     free_end: bool = False) -> CTCAlignment:
    """The Viterbi alignment of `targets` (label ids, no blanks) through `log_probs` [T, V] (log-softmax output).

    ValueError when no path exists: too few frames for the tokens and the blanks their repeats need, or every
    path has probability 0.
    """
    targets = [int(t) for t in targets]
    check_targets(log_probs, targets, blank)
    log_probs = log_probs.detach().to("cpu", torch.float64)
    states, can_skip = extended_targets(targets, blank)
    emissions = log_probs[:, states]
    table = viterbi_table(emissions.numpy(), can_skip.numpy(), free_start)
    end_frame, end_state, score = path_end(table, free_end)
    if score == float("-inf"):
        raise ValueError("impossible alignment: every path through the posterior has probability 0")
    frame_states = backtrack(table.back, end_frame, end_state)
    inside = frame_states >= 0
    frame_log_probs = torch.zeros(len(frame_states), dtype=torch.float64)
    frame_log_probs[inside] = emissions[inside.nonzero().squeeze(1), frame_states[inside]]
    frame_labels = torch.where(inside, states[frame_states.clamp_min(0)], torch.tensor(-1))
    starts, ends, token_scores = token_summary(frame_states, frame_log_probs, len(targets))
    return CTCAlignment(frame_states, frame_labels, frame_log_probs, starts, ends, token_scores, score)


def segment_score(frame_log_probs: torch.Tensor, window: int | None = 30) -> float:
    """min over windows of `window` frames of the mean a_t (the mean of all frames when `window` is None or the
    segment is no longer than it): the CTC-segmentation confidence (arXiv 2007.09127), ≤ 0, 0 when certain."""
    if len(frame_log_probs) == 0:
        raise ValueError("an empty segment has no score")
    if window is None or len(frame_log_probs) <= window:
        return float(frame_log_probs.mean())
    if window < 1:
        raise ValueError(f"window must be at least 1 frame, got {window}")
    return float(frame_log_probs.unfold(0, window, 1).mean(dim=1).min())


class UtteranceAlignment(NamedTuple):
    """Where one utterance of a jointly aligned text lies: first and last frame of its tokens (inclusive,
    in the posterior's frames) and its `segment_score`."""

    start: int
    end: int
    score: float


def align_utterances(log_probs: torch.Tensor, utterances: Sequence[Sequence[int]], *, blank: int = 0,
                     score_window: int | None = 30, free_start: bool = True, free_end: bool = True,
                     offset: int = 0) -> list[UtteranceAlignment]:
    """Align the concatenation of `utterances` through `log_probs` in one Viterbi pass (free start and end by
    default: the text may sit anywhere inside the posterior) and split the path into utterances: each one
    spans its first token's first frame to its last token's last frame, scored by `segment_score` over those
    frames. `offset` is added to the frames (the posterior's position in a longer sequence)."""
    if any(len(utterance) == 0 for utterance in utterances):
        raise ValueError("an utterance has no tokens")
    targets = [int(token) for utterance in utterances for token in utterance]
    path = ctc_forced_align(log_probs, targets, blank=blank, free_start=free_start, free_end=free_end)
    aligned, first = [], 0
    for utterance in utterances:
        last = first + len(utterance) - 1
        start, end = int(path.token_starts[first]), int(path.token_ends[last])
        score = segment_score(path.frame_log_probs[start:end + 1], score_window)
        aligned.append(UtteranceAlignment(start + offset, end + offset, score))
        first = last + 1
    return aligned
