"""Iterative pseudo-forced alignment of a long sequence to its text, utterance by utterance (López & Luque
2022, "Iterative pseudo-forced alignment by acoustic CTC loss for self-supervised ASR domain adaptation",
arXiv 2210.15226, the alignment algorithm of its method section; schedule read from the official code,
ferugit/iterative-pseudo-forced-alignment-ctc `src/iterative_utterance_alignment.py`).

The text comes in rows (captions) of utterances; each utterance gets a rough end frame from its share of the
text (`proportional_ends`: frames spread over the text in proportion to its length, as the official
`fix_time_reference` does over the speech frames). For each row, in order:

1. the text is the utterances carried over from before plus the row's; the window runs from the anchor
   (the frame after the last confidently aligned utterance; 0 at first) to the row's estimated end;
2. the text is CTC-aligned inside the window, the frames before and after it free (`align_utterances`);
   the decision reads only the last utterance's score s (`segment_score`, log domain), lowered by
   2·threshold for an utterance shorter than `min_anchor_tokens` so that short ones never anchor;
3. s < threshold: the last utterance is dropped (carried to the next row) and the rest realigned, until the
   text is one utterance; if that one still fails, everything is carried and the anchor stays, so the next
   row's window is longer ("expanding the alignment window");
   threshold ≤ s < accept_score: one utterance fewer is tried, kept while the now-last utterance scores
   better than it did in the longer text and stays above threshold ("reducing the quantity of text");
   s ≥ accept_score: accepted;
4. every utterance of the accepted text is stored with its score, the anchor moves to the end of the last
   one, the dropped ones are carried;
5. when the window reaches `max_window` frames, or is too short for its text, the rough ends of the
   remaining utterances are recomputed from the anchor (the official `fix_text_to_time_proportion`).
   The last row's window runs to the end and its alignment is kept whatever its score.

Defaults are the official code's: threshold -2.0, accept_score -1.0 ("last alignment is very nice"),
score window 30 frames (the ctc-segmentation package's), min_anchor_tokens 0 (its `short_utterance_len`
counts 30 characters). UNVERIFIED: the paper states the schedule in words only; the code's VAD-based time
references, its text-to-audio-proportion checks and its stop-on-huge-window rule are left out; recomputing
the ends on a too-short window (rather than only on a long one) is this module's; where the code, after a
confident longer text, finds the single remaining utterance below threshold it drops both alignments, here
the longer one is kept.

The demonstration (`demonstration`) generates a long posterior with known utterance boundaries
(`synthetic_long_sequence`, optionally with untranscribed stretches the text does not mention, which is
what makes proportional windows drift and the anchor matter) and reports the mean absolute frame error of
the utterance starts and ends at each step, against a baseline that aligns each utterance alone in its
proportional window.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from alignkit.represent.forced_alignment import UtteranceAlignment, align_utterances, min_frames

BLANK = 0
PEAK = 6.0  # logit of a frame's own label over the others in the synthetic posterior


@dataclass(frozen=True)
class SyntheticConfig:
    """A long synthetic posterior: peaky CTC-like spikes (one frame per token), blank gaps and pauses, and
    untranscribed stretches after some utterances (random tokens that are not in the text). Frames are
    read as 20 ms (a wav2vec2-style encoder), so 40 utterances are about a minute and a half."""

    utterances: int = 40
    vocab: int = 8
    tokens: tuple[int, int] = (10, 30)
    token_gap: tuple[int, int] = (1, 4)
    pause: tuple[int, int] = (5, 20)
    untranscribed_rate: float = 0.3
    untranscribed_tokens: tuple[int, int] = (10, 40)
    noise: float = 0.3
    seed: int = 0


class SyntheticSequence(NamedTuple):
    log_probs: torch.Tensor  # [T, V]
    frame_labels: torch.Tensor  # [T] the true labelling (0 = blank)
    utterances: list[list[int]]
    starts: torch.Tensor  # [N] first frame of each utterance's first token
    ends: torch.Tensor  # [N] last frame of its last token


@dataclass(frozen=True)
class ScheduleConfig:
    threshold: float = -2.0
    accept_score: float = -1.0
    score_window: int | None = 30
    min_anchor_tokens: int = 0
    max_window: int = 3500  # frames: the official 70 s at 20 ms a frame
    row_size: int = 1  # utterances per row (caption)


class ScheduleResult(NamedTuple):
    alignments: dict[int, UtteranceAlignment]
    steps: list[dict]
    anchors: list[int]  # the anchor after each step


def posteriors_from_labels(frame_labels: torch.Tensor, vocab: int, noise: float,
                           generator: torch.Generator) -> torch.Tensor:
    """log p_t = log_softmax(PEAK·(onehot(label_t) + noise·ε_t)), ε_t ~ N(0, I) per frame and entry: at
    noise 0 each frame gives its label e^PEAK/(e^PEAK + V - 1) (0.98 for V = 8); as noise grows, wrong
    labels and blanks start to win frames (insertions, deletions and substitutions of a real recogniser)."""
    if noise < 0.0:
        raise ValueError(f"noise must be at least 0, got {noise}")
    onehot = torch.nn.functional.one_hot(frame_labels, vocab).to(torch.float64)
    jitter = torch.randn((len(frame_labels), vocab), generator=generator, dtype=torch.float64)
    return torch.log_softmax(PEAK * (onehot + noise * jitter), dim=-1)


def spoken_frames(tokens: Sequence[int], gap: tuple[int, int], generator: torch.Generator) -> list[int]:
    """One spike frame per token, each followed by a blank gap drawn from `gap` (at least 1 between equals)."""
    frames: list[int] = []
    for i, token in enumerate(tokens):
        frames.append(token)
        low = max(gap[0], 1 if i + 1 < len(tokens) and tokens[i + 1] == token else 0)
        if i + 1 < len(tokens):
            frames += [BLANK] * int(torch.randint(low, max(low, gap[1]) + 1, (1,), generator=generator))
    return frames


def synthetic_long_sequence(config: SyntheticConfig = SyntheticConfig()) -> SyntheticSequence:
    """The sequence of `config`: its posterior, true labelling, utterances and their true boundaries."""
    if config.vocab < 2 or config.utterances < 1:
        raise ValueError("need a vocabulary of at least 2 (blank + 1 label) and at least 1 utterance")
    generator = torch.Generator().manual_seed(config.seed)

    def draw(low_high: tuple[int, int]) -> int:
        return int(torch.randint(low_high[0], low_high[1] + 1, (1,), generator=generator))

    def tokens(count: int) -> list[int]:
        return torch.randint(1, config.vocab, (count,), generator=generator).tolist()

    labels, utterances, starts, ends = [BLANK] * draw(config.pause), [], [], []
    for _ in range(config.utterances):
        utterance = tokens(draw(config.tokens))
        starts.append(len(labels))
        labels += spoken_frames(utterance, config.token_gap, generator)
        ends.append(len(labels) - 1)
        utterances.append(utterance)
        labels += [BLANK] * draw(config.pause)
        if float(torch.rand((), generator=generator)) < config.untranscribed_rate:
            labels += spoken_frames(tokens(draw(config.untranscribed_tokens)), config.token_gap, generator)
            labels += [BLANK] * draw(config.pause)
    frame_labels = torch.tensor(labels, dtype=torch.long)
    log_probs = posteriors_from_labels(frame_labels, config.vocab, config.noise, generator)
    return SyntheticSequence(log_probs, frame_labels, utterances, torch.tensor(starts), torch.tensor(ends))


def proportional_ends(lengths: Sequence[int], start: int, stop: int) -> list[int]:
    """Rough end frame of each utterance: frames [start, stop) shared in proportion to the lengths,
    end_i = start + (stop - start)·(l_1 + ... + l_i)/(l_1 + ... + l_N)."""
    total, cumulative, ends = sum(lengths), 0, []
    for length in lengths:
        cumulative += length
        ends.append(start + round((stop - start) * cumulative / total))
    return ends


def anchor_score(alignment: UtteranceAlignment, n_tokens: int, config: ScheduleConfig) -> float:
    """The score the schedule decides on: the utterance's, lowered by 2·threshold when it is too short."""
    penalty = 2 * config.threshold if n_tokens < config.min_anchor_tokens else 0.0
    return alignment.score + penalty


def shrink_until_confident(window: torch.Tensor, texts: Sequence[Sequence[int]], config: ScheduleConfig,
                           offset: int) -> tuple[list[UtteranceAlignment] | None, int]:
    """Steps 2-3 on one window: the accepted alignments of texts[:k] (k ≥ 1) and the number of Viterbi
    passes, or None when even texts[:1] scores below threshold (carry all, keep the anchor)."""
    previous: list[UtteranceAlignment] | None = None
    previous_scores: list[float] = []
    n, passes = len(texts), 0
    while True:
        aligned = align_utterances(window, texts[:n], blank=BLANK, score_window=config.score_window, offset=offset)
        scores = [anchor_score(a, len(t), config) for a, t in zip(aligned, texts)]
        passes, last = passes + 1, scores[-1]
        if previous is None:
            if last < config.threshold:
                if n == 1:
                    return None, passes
                n -= 1
                continue
            if last >= config.accept_score or n == 1:
                return aligned, passes
        else:
            if last >= config.accept_score:
                return aligned, passes
            if last <= previous_scores[n - 1] or last < config.threshold:
                return previous, passes
            if n == 1:
                return aligned, passes
        previous, previous_scores, n = aligned, scores, n - 1


def text_frames(utterances: Sequence[Sequence[int]]) -> int:
    """Frames the concatenated utterances need (`min_frames`)."""
    return min_frames([token for utterance in utterances for token in utterance])


def iterative_alignment(log_probs: torch.Tensor, utterances: Sequence[Sequence[int]],
                        config: ScheduleConfig = ScheduleConfig()) -> ScheduleResult:
    """The anchor and window schedule of the module docstring over `log_probs` [T, V] (blank 0)."""
    frames, count = log_probs.shape[0], len(utterances)
    lengths = [len(u) for u in utterances]
    rows = [list(range(i, min(i + config.row_size, count))) for i in range(0, count, config.row_size)]
    ends = proportional_ends(lengths, 0, frames)
    anchor, carried, alignments, steps, anchors = 0, [], {}, [], []
    for index, row in enumerate(rows):
        text, last_row = carried + row, index == len(rows) - 1
        texts = [utterances[i] for i in text]
        window_end, needed = frames if last_row else ends[row[-1]] + 1, text_frames(texts)
        if not last_row and not needed <= window_end - anchor < config.max_window:
            ends[text[0]:] = proportional_ends(lengths[text[0]:], anchor, frames)
            window_end = ends[row[-1]] + 1
        step = {"step": index, "anchor": anchor, "window": [anchor, window_end], "text": text}
        if window_end - anchor < needed:
            accepted, passes, outcome = None, 0, "too short"
        elif last_row:
            accepted = align_utterances(log_probs[anchor:window_end], texts, blank=BLANK,
                                        score_window=config.score_window, offset=anchor)
            passes, outcome = 1, "last row"
        else:
            accepted, passes = shrink_until_confident(log_probs[anchor:window_end], texts, config, anchor)
            outcome = "carried" if accepted is None else "accepted" if len(accepted) == len(text) else "shrunk"
        if accepted is None:
            carried = text
        else:
            alignments.update(zip(text, accepted))
            anchor, carried = accepted[-1].end + 1, text[len(accepted):]
        step.update(passes=passes, outcome=outcome, accepted=text[:len(accepted or [])],
                    last_score=accepted[-1].score if accepted else None)
        steps.append(step)
        anchors.append(anchor)
    return ScheduleResult(alignments, steps, anchors)


def boundary_error(alignments: Mapping[int, UtteranceAlignment], ids: Sequence[int], starts: torch.Tensor,
                   ends: torch.Tensor) -> float | None:
    """Mean absolute frame error of the starts and ends of utterances `ids`: mean_i (|ŝ_i - s_i| + |ê_i - e_i|)/2
    (None for no utterance)."""
    if not ids:
        return None
    errors = [abs(alignments[i].start - int(starts[i])) + abs(alignments[i].end - int(ends[i])) for i in ids]
    return sum(errors) / (2 * len(errors))


def proportional_baseline(log_probs: torch.Tensor, utterances: Sequence[Sequence[int]], *, margin: int,
                          score_window: int | None) -> dict[int, UtteranceAlignment]:
    """Each utterance aligned alone in its proportional window widened by `margin` frames each side (no
    anchor): what the schedule improves on once untranscribed audio makes the proportions drift."""
    frames = log_probs.shape[0]
    ends = proportional_ends([len(u) for u in utterances], 0, frames)
    aligned = {}
    for i, utterance in enumerate(utterances):
        low = max(0, (ends[i - 1] + 1 if i else 0) - margin)
        high = min(frames, max(ends[i] + 1 + margin, low + min_frames(utterance)))
        low = min(low, high - min_frames(utterance))
        aligned[i] = align_utterances(log_probs[low:high], [utterance], blank=BLANK, score_window=score_window,
                                      offset=low)[0]
    return aligned


def demonstration(synthetic: SyntheticConfig = SyntheticConfig(),
                  schedule: ScheduleConfig = ScheduleConfig()) -> dict:
    """The schedule on a synthetic long sequence: per step its window, outcome and boundary errors (of the
    utterances accepted at that step, and of all accepted so far), then a summary against the baseline."""
    sequence = synthetic_long_sequence(synthetic)
    result = iterative_alignment(sequence.log_probs, sequence.utterances, schedule)
    done: list[int] = []
    for step in result.steps:
        done += step["accepted"]
        step["boundary_error"] = boundary_error(result.alignments, step["accepted"], sequence.starts, sequence.ends)
        step["cumulative_error"] = boundary_error(result.alignments, done, sequence.starts, sequence.ends)
    frames, count = sequence.log_probs.shape[0], len(sequence.utterances)
    confident = [i for i, a in result.alignments.items() if a.score >= schedule.threshold]
    baseline = proportional_baseline(sequence.log_probs, sequence.utterances, margin=frames // (2 * count),
                                     score_window=schedule.score_window)
    summary = {"aligned": len(result.alignments), "utterances": count,
               "boundary_error": boundary_error(result.alignments, sorted(result.alignments), sequence.starts,
                                                sequence.ends),
               "confident": len(confident),
               "confident_boundary_error": boundary_error(result.alignments, sorted(confident), sequence.starts,
                                                          sequence.ends),
               "baseline_boundary_error": boundary_error(baseline, list(range(count)), sequence.starts,
                                                         sequence.ends)}
    return {"method": "iterative pseudo-forced alignment (arXiv 2210.15226)", "frames": frames,
            "seconds_at_20ms": frames * 0.02, "synthetic": dataclasses.asdict(synthetic),
            "schedule": dataclasses.asdict(schedule), "steps": result.steps, "anchors": result.anchors,
            "summary": summary}
