"""CTC forced alignment (Viterbi + path confidence) and the iterative pseudo-forced alignment schedule
(arXiv 2210.15226), each checked against an independent truth: brute-force enumeration of every alignment,
hand-built posteriors with known boundaries, and a hand-worked anchor schedule."""

from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys

import pytest
import torch

from alignkit.cli.represent_force import add_force_verbs
from alignkit.represent.forced_alignment import (
    UtteranceAlignment,
    align_utterances,
    ctc_forced_align,
    min_frames,
    segment_score,
)
from alignkit.represent.iterative_alignment import (
    ScheduleConfig,
    SyntheticConfig,
    anchor_score,
    demonstration,
    iterative_alignment,
    posteriors_from_labels,
    proportional_ends,
    synthetic_long_sequence,
)


def collapse(path: tuple[int, ...], blank: int = 0) -> list[int]:
    """The CTC many-to-one map: merge repeats, then drop blanks."""
    merged = [label for i, label in enumerate(path) if i == 0 or label != path[i - 1]]
    return [label for label in merged if label != blank]


def brute_force_best(log_probs: torch.Tensor, targets: list[int]) -> float:
    """max over every frame labelling that collapses to `targets` of Σ_t log p_t(label_t)."""
    frames, vocab = log_probs.shape
    scores = [sum(float(log_probs[t, label]) for t, label in enumerate(path))
              for path in itertools.product(range(vocab), repeat=frames) if collapse(path) == targets]
    return max(scores) if scores else float("-inf")


@pytest.mark.parametrize("targets", [[1, 2], [1, 1], [2, 1, 2]])
def test_viterbi_score_is_the_brute_force_maximum(targets):
    log_probs = torch.randn(6, 3, generator=torch.Generator().manual_seed(len(targets)),
                            dtype=torch.float64).log_softmax(-1)
    path = ctc_forced_align(log_probs, targets)
    assert path.score == pytest.approx(brute_force_best(log_probs, targets), abs=1e-9)
    assert collapse(tuple(path.frame_labels.tolist())) == targets
    assert float(path.frame_log_probs.sum()) == pytest.approx(path.score, abs=1e-9)


def test_free_start_and_end_is_the_best_sub_window():
    log_probs = torch.randn(6, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64).log_softmax(-1)
    best = max(brute_force_best(log_probs[a:b], [1, 2]) for a in range(6) for b in range(a + 2, 7))
    path = ctc_forced_align(log_probs, [1, 2], free_start=True, free_end=True)
    assert path.score == pytest.approx(best, abs=1e-9)
    inside = path.frame_states >= 0
    assert collapse(tuple(path.frame_labels[inside].tolist())) == [1, 2]


def test_repeated_labels_need_a_blank_between_them():
    assert min_frames([1, 1, 2, 2]) == 6 and min_frames([1, 2, 1]) == 3
    log_probs = torch.zeros(2, 3).log_softmax(-1)
    with pytest.raises(ValueError, match="at least 3 frames"):
        ctc_forced_align(log_probs, [1, 1])
    path = ctc_forced_align(torch.zeros(3, 3).log_softmax(-1), [1, 1])
    assert path.frame_labels.tolist() == [1, 0, 1]
    certain_blank = torch.tensor([[0.0, -math.inf, -math.inf]] * 3)
    with pytest.raises(ValueError, match="probability 0"):
        ctc_forced_align(certain_blank, [1])


def one_hot_log_posterior(labels: list[int], vocab: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(labels), vocab).to(torch.float64).log()


def test_confidence_is_one_on_a_one_hot_posterior_and_lower_with_noise():
    labels = [0, 1, 1, 0, 2, 0, 0, 3, 0] * 20
    targets = collapse(tuple(labels))
    path = ctc_forced_align(one_hot_log_posterior(labels, 4), targets)
    assert path.frame_labels.tolist() == labels
    assert math.exp(path.score) == 1.0 and math.exp(segment_score(path.frame_log_probs)) == 1.0
    assert torch.equal(path.token_scores, torch.zeros(len(targets), dtype=torch.float64))
    scores = []
    for noise in (0.2, 0.5):
        noisy = posteriors_from_labels(torch.tensor(labels), 4, noise, torch.Generator().manual_seed(0))
        scores.append(segment_score(ctc_forced_align(noisy, targets).frame_log_probs))
    assert 0.0 > scores[0] > scores[1]


def test_segment_score_is_the_least_window_mean():
    values = torch.tensor([0.0, 0.0, -3.0, 0.0])
    assert segment_score(values, 2) == -1.5 and segment_score(values, None) == -0.75
    assert segment_score(values, 30) == -0.75


def test_noise_free_boundaries_are_exact():
    wide = one_hot_log_posterior([0, 1, 1, 0, 2, 2, 2, 0, 0, 3, 3, 0], 4)  # tokens several frames long
    assert align_utterances(wide, [[1, 2], [3]]) == [(1, 6, 0.0), (9, 10, 0.0)]
    path = ctc_forced_align(wide, [1, 2, 3])
    assert path.token_starts.tolist() == [1, 4, 9] and path.token_ends.tolist() == [2, 6, 10]
    sequence = synthetic_long_sequence(SyntheticConfig(utterances=8, tokens=(3, 8), noise=0.0,
                                                       untranscribed_rate=0.0, seed=3))
    joint = align_utterances(sequence.log_probs, sequence.utterances)
    assert [a.start for a in joint] == sequence.starts.tolist()
    assert [a.end for a in joint] == sequence.ends.tolist()
    with_gaps = synthetic_long_sequence(SyntheticConfig(utterances=8, tokens=(3, 8), noise=0.0,
                                                        untranscribed_rate=0.5, seed=3))
    result = iterative_alignment(with_gaps.log_probs, with_gaps.utterances, ScheduleConfig(-0.6, -0.3))
    assert [result.alignments[i].start for i in range(8)] == with_gaps.starts.tolist()
    assert [result.alignments[i].end for i in range(8)] == with_gaps.ends.tolist()


# u0 = [1, 2, 3] at frames 1-5, an untranscribed stretch at 8-18, u1 = [4, 5] at 21-23, u2 = [1, 3] at 26-28.
HAND_LABELS = [0, 1, 0, 2, 0, 3, 0, 0] + [6, 0] * 5 + [6, 0, 0, 4, 0, 5, 0, 0, 1, 0, 3, 0]
HAND_UTTERANCES = [[1, 2, 3], [4, 5], [1, 3]]
HAND_TRUTH = [(1, 5), (21, 23), (26, 28)]


def test_schedule_moves_the_anchor_by_hand():
    log_probs = posteriors_from_labels(torch.tensor(HAND_LABELS), 8, 0.0, torch.Generator())
    assert len(HAND_LABELS) == 30 and proportional_ends([3, 2, 2], 0, 30) == [13, 21, 30]
    config = ScheduleConfig(threshold=-0.6, accept_score=-0.3)
    # row 0: window [0, 14) holds u0 -> anchor 6; row 1: window [6, 22) cuts u1's last token off, the lone
    # utterance fails and is carried, the anchor stays; last row: [6, 30) takes u1 and u2 -> anchor 29.
    result = iterative_alignment(log_probs, HAND_UTTERANCES, config)
    assert [step["window"] for step in result.steps] == [[0, 14], [6, 22], [6, 30]]
    assert [step["outcome"] for step in result.steps] == ["accepted", "carried", "last row"]
    assert result.anchors == [6, 6, 29]
    assert [(result.alignments[i].start, result.alignments[i].end) for i in range(3)] == HAND_TRUTH
    # two utterances per row: [u0, u1] in [0, 22) fails on u1, is shrunk to u0, and u1 is carried
    shrunk = iterative_alignment(log_probs, HAND_UTTERANCES, ScheduleConfig(-0.6, -0.3, row_size=2))
    assert [step["outcome"] for step in shrunk.steps] == ["shrunk", "last row"]
    assert shrunk.anchors == [6, 29] and shrunk.steps[0]["accepted"] == [0] and shrunk.steps[0]["passes"] == 2


def test_short_utterances_never_anchor():
    confident = UtteranceAlignment(0, 5, -0.1)
    assert anchor_score(confident, 3, ScheduleConfig(threshold=-0.6, min_anchor_tokens=4)) == pytest.approx(-1.3)
    assert anchor_score(confident, 4, ScheduleConfig(threshold=-0.6, min_anchor_tokens=4)) == -0.1


def test_demonstration_beats_the_proportional_baseline():
    document = demonstration(SyntheticConfig(utterances=10, noise=0.3), ScheduleConfig(-0.6, -0.3))
    summary = document["summary"]
    assert summary["aligned"] == 10 and len(document["steps"]) == 10
    assert summary["boundary_error"] < 2.0 < summary["baseline_boundary_error"]


def force_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit represent")
    add_force_verbs(parser.add_subparsers(dest="subverb", required=True))
    return parser


@pytest.mark.parametrize("flags", [["--utterances", "0"], ["--threshold", "-0.2", "--accept-score", "-0.5"],
                                   ["--noise", "-1"], ["--score-window", "-1"]])
def test_cli_refuses_bad_arguments(flags, tmp_path, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the demonstration ran before the arguments were checked")

    monkeypatch.setattr("alignkit.represent.iterative_alignment.demonstration", never)
    args = force_parser().parse_args(["force-align", *flags, "--out", str(tmp_path / "r.json")])
    with pytest.raises(ValueError):
        args.run(args)
    assert not (tmp_path / "r.json").exists()


def test_cli_writes_the_steps(tmp_path, capsys):
    out = tmp_path / "results.json"
    args = force_parser().parse_args(["force-align", "--utterances", "4", "--seed", "1", "--out", str(out)])
    assert args.run(args) == 0
    document = json.loads(out.read_text())
    assert len(document["steps"]) == 4 and "boundary_error" in document["steps"][0]
    assert "baseline without anchors" in capsys.readouterr().out


def test_cli_module_imports_without_torch():
    code = "import sys, alignkit.cli.represent_force; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
