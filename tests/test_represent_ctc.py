"""Align With Purpose (arXiv 2307.01715): the low-latency shift, path log-probs, the property hinge, the total
loss on torch.nn.CTCLoss, the synthetic speech truth, the demo metrics and the `ctc-latency` verb.

Expected values are worked out by hand in the comments, not taken from the code under test."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from alignkit.cli.represent_ctc import add_ctc_verbs
from alignkit.represent.ctc_demo import CausalCTC, DemoSettings, edit_alignment, greedy_emissions
from alignkit.represent.ctc_property import (ctc_property_loss, droppable_frames, low_latency, pair_hinges,
                                             path_log_probs, property_loss, sample_paths, shift_earlier)
from alignkit.represent.synthetic_speech import SpeechConfig, SyntheticSpeech, pad_batch


def collapse(path: list[int], blank: int = 0) -> list[int]:
    """The CTC labelling of a path: runs merged, blanks removed (written here, independent of the code)."""
    return [label for t, label in enumerate(path) if label != blank and (t == 0 or path[t - 1] != label)]


def log_posterior(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).log()


# -- the shift ---------------------------------------------------------------------------------------------

def test_droppable_frames_and_shift_on_hand_paths():
    path = [0, 0, 1, 1, 0, 2]  # frame 0: leading blank; 1: blank repeat; 3: repeat of 1; 4: lone blank (no)
    assert droppable_frames(path, blank=0) == [0, 1, 3]
    assert shift_earlier(path, 0, blank=0) == [0, 1, 1, 0, 2, 0]
    assert shift_earlier(path, 3, blank=0) == [0, 0, 1, 0, 2, 0]
    assert droppable_frames([1, 0, 1], blank=0) == []      # dropping the blank would merge the two 1s
    assert droppable_frames([3, 3, 5, 5], blank=5) == [1, 3]  # another blank id: 5 repeats, 3 repeats
    with pytest.raises(ValueError):
        shift_earlier(path, 4, blank=0)


def test_shift_keeps_labelling_and_moves_later_emissions_one_frame_earlier():
    path = [0, 0, 2, 2, 0, 0, 1, 1, 1, 0, 2, 0]
    emissions = [t for t in range(len(path)) if path[t] != 0 and (t == 0 or path[t - 1] != path[t])]  # 2, 6, 10
    for frame in droppable_frames(path, blank=0):
        shifted = shift_earlier(path, frame, blank=0)
        assert len(shifted) == len(path) and shifted[-1] == 0 and collapse(shifted) == collapse(path)
        moved = [t for t in range(len(shifted)) if shifted[t] != 0 and (t == 0 or shifted[t - 1] != shifted[t])]
        assert moved == [t - 1 if t > frame else t for t in emissions]


def test_low_latency_draws_every_droppable_frame_and_leaves_undroppable_paths():
    path = [0, 0, 1, 1, 0, 2]
    generator = torch.Generator().manual_seed(0)
    drawn = {tuple(low_latency(path, [1, 2], blank=0, generator=generator)) for _ in range(200)}
    assert drawn == {tuple(shift_earlier(path, frame, blank=0)) for frame in (0, 1, 3)}
    assert low_latency([1, 0, 2], [1, 2], blank=0, generator=generator) == [1, 0, 2]


# -- log-probs, sampling, the hinge ------------------------------------------------------------------------

# p(blank), p(token 1) per frame.
POSTERIOR = [[0.5, 0.5], [0.2, 0.8], [0.9, 0.1], [0.9, 0.1]]


def test_path_log_prob_on_hand_posterior():
    log_probs = log_posterior(POSTERIOR)
    paths = torch.tensor([[0, 0, 1, 0], [1, 1, 0, 0]])
    expected = [math.log(0.5 * 0.2 * 0.1 * 0.9), math.log(0.5 * 0.8 * 0.9 * 0.9)]
    assert path_log_probs(log_probs, paths).tolist() == pytest.approx(expected)


def test_hinge_zero_when_the_shift_is_likelier_by_the_margin_and_positive_otherwise():
    log_probs = log_posterior(POSTERIOR)
    # a = [0,0,1,0] -> f(a) = [0,1,0,0]: log P(a) - log P(f(a)) = ln(.2*.1 / (.8*.9)) = ln(1/36) = -3.5835
    # b = [0,1,0,0] -> f(b) = [1,0,0,0]: ln(.8 / .2) = ln 4 = 1.3863 (the shift drops the likely 1 at frame 1)
    sampled = torch.tensor([[0, 0, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0]])
    improved = torch.tensor([[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0]])  # the third pair is unchanged
    hinges = pair_hinges(log_probs, sampled, improved, margin=1.0)
    assert hinges.tolist() == pytest.approx([0.0, math.log(4) + 1, 0.0])
    assert pair_hinges(log_probs, sampled[:1], improved[:1], margin=3.5).tolist() == [0.0]  # 3.5 < ln 36
    assert pair_hinges(log_probs, sampled[:1], improved[:1], margin=4.0).tolist() == pytest.approx(
        [4.0 - math.log(36)])
    # per pair, then averaged: (0 + 2.3863) / 2; a clamp of the means, max(0, (-3.58 + 1.39) / 2 + 1), is 0
    assert pair_hinges(log_probs, sampled[:2], improved[:2], margin=1.0).mean().item() == pytest.approx(
        (math.log(4) + 1) / 2)


def test_sample_paths_follow_the_frame_distributions():
    log_probs = log_posterior(POSTERIOR)
    paths = sample_paths(log_probs, 4000, torch.Generator().manual_seed(0))
    assert paths.shape == (4000, 4)
    frequency_of_token = paths.double().mean(0)  # label 1's share per frame: 0.5, 0.8, 0.1, 0.1
    assert frequency_of_token.tolist() == pytest.approx([0.5, 0.8, 0.1, 0.1], abs=0.03)


def near_certain(path: list[int], labels: int = 3, rest: float = 1e-12) -> torch.Tensor:
    """Log-probs [T, labels] with path[t] at probability 1 - (labels - 1) * rest: sampling returns `path`."""
    rows = [[1 - (labels - 1) * rest if label == wanted else rest for label in range(labels)] for wanted in path]
    return log_posterior(rows)


def test_property_loss_end_to_end_by_hand():
    def drop_first(path, target, *, blank, generator):
        return shift_earlier(path, 0, blank)

    def identity(path, target, *, blank, generator):
        return list(path)

    path = [0, 1, 1, 0, 2]
    log_probs = near_certain(path).unsqueeze(1)  # [T, B=1, V]
    # f(a) = [1,1,0,2,0] differs from a at frames 0, 2, 3, 4: log P(a) - log P(f(a)) = 4 ln(1 / 1e-12) = 110.5
    args = (log_probs, torch.tensor([[1, 2]]), torch.tensor([5]), torch.tensor([2]))
    expected = 4 * math.log((1 - 2e-12) / 1e-12) + 0.5
    value = property_loss(*args, samples=5, margin=0.5, property_fn=drop_first,
                          generator=torch.Generator().manual_seed(0))
    assert value.item() == pytest.approx(expected, rel=1e-9)
    assert property_loss(*args, margin=0.5, property_fn=identity).item() == 0.0


def test_total_loss_is_ctc_at_weight_zero_and_adds_the_weighted_property_loss():
    torch.manual_seed(0)
    log_probs = torch.randn(12, 3, 4).log_softmax(-1)
    targets = torch.tensor([[1, 2, 3], [2, 2, 0], [3, 0, 0]])
    lengths, target_lengths = torch.tensor([12, 10, 7]), torch.tensor([3, 2, 1])
    args = (log_probs, targets, lengths, target_lengths)
    reference = torch.nn.CTCLoss(blank=0)(*args)
    plain = ctc_property_loss(*args, weight=0.0)
    assert plain.total.item() == pytest.approx(reference.item()) and plain.property.item() == 0.0
    weighted = ctc_property_loss(*args, weight=0.3, margin=1.0, generator=torch.Generator().manual_seed(7))
    prop = property_loss(*args, margin=1.0, generator=torch.Generator().manual_seed(7))
    assert weighted.property.item() == pytest.approx(prop.item()) and prop.item() > 0
    assert weighted.total.item() == pytest.approx(reference.item() + 0.3 * prop.item())
    with pytest.raises(ValueError):
        ctc_property_loss(*args, weight=-1.0)


def test_hinge_gradient_by_hand():
    # d/d log p_t(l) of log P(b) - log P(f(b)) is +1 where b_t = l, -1 where f(b)_t = l; frames 2, 3 cancel.
    log_probs = log_posterior(POSTERIOR).requires_grad_()
    pair_hinges(log_probs, torch.tensor([[0, 1, 0, 0]]), torch.tensor([[1, 0, 0, 0]]), margin=1.0).sum().backward()
    assert log_probs.grad.tolist() == [[1.0, -1.0], [-1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
    log_probs.grad = None  # an inactive hinge (a -> f(a) at margin 1 is -2.58 < 0) has no gradient
    pair_hinges(log_probs, torch.tensor([[0, 0, 1, 0]]), torch.tensor([[0, 1, 0, 0]]), margin=1.0).sum().backward()
    assert log_probs.grad.abs().sum().item() == 0.0


def test_gradients_flow_through_ctc_and_property_loss():
    speech = SyntheticSpeech(SpeechConfig(), seed=0)
    batch = pad_batch(speech.utterances(4, seed=1))
    model = CausalCTC(speech.config.dim, speech.config.vocab + 1, hidden=8)
    loss = ctc_property_loss(model(batch.features), batch.targets, batch.lengths, batch.target_lengths,
                             weight=1.0, margin=1.0, generator=torch.Generator().manual_seed(0))
    loss.property.backward(retain_graph=True)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    model.zero_grad()
    loss.total.backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in model.parameters())


# -- the synthetic task ------------------------------------------------------------------------------------

def test_synthetic_truth_is_consistent():
    config = SpeechConfig()
    speech = SyntheticSpeech(config, seed=3)
    for utterance in speech.utterances(50, seed=4):
        frames = len(utterance.frame_labels)
        assert utterance.features.shape == (frames, config.dim)
        assert len(utterance.tokens) == len(utterance.onsets) == len(utterance.ends) >= config.tokens[0]
        expected = [0] * frames
        for token, onset, end in zip(utterance.tokens, utterance.onsets, utterance.ends):
            assert 1 <= token <= config.vocab and config.token_frames[0] <= end - onset <= config.token_frames[1]
            expected[onset:end] = [token] * (end - onset)
        assert utterance.frame_labels == expected
        assert utterance.onsets[0] >= config.edge_frames[0] and frames - utterance.ends[-1] >= config.edge_frames[0]
        assert all(b - a >= config.gap_frames[0] for a, b in zip(utterance.ends, utterance.onsets[1:]))
        assert collapse(utterance.frame_labels) == utterance.tokens  # the truth is a CTC path of its target


def test_synthetic_features_are_the_prototypes_without_noise_and_seeds_repeat():
    speech = SyntheticSpeech(SpeechConfig(noise=0.0, jitter=0.0), seed=0)
    utterance = speech.utterances(1, seed=1)[0]
    assert torch.equal(utterance.features, speech.prototypes[torch.tensor(utterance.frame_labels)])
    noisy = SyntheticSpeech(SpeechConfig(), seed=0)
    first, again = noisy.utterances(3, seed=5), noisy.utterances(3, seed=5)
    assert all(torch.equal(a.features, b.features) and a.tokens == b.tokens for a, b in zip(first, again))
    batch = pad_batch(first)
    assert batch.features.shape[0] == 3 and batch.lengths.tolist() == [len(u.frame_labels) for u in first]
    assert batch.targets[0, :len(first[0].tokens)].tolist() == first[0].tokens
    with pytest.raises(ValueError):
        SpeechConfig(gap_frames=(0, 2))


# -- the demo's metrics ------------------------------------------------------------------------------------

def test_greedy_emissions_and_edit_alignment_by_hand():
    path = [0, 2, 2, 0, 2, 1, 1, 0]  # greedy runs: 2 at frame 1, 2 at frame 4, 1 at frame 5
    log_probs = torch.nn.functional.one_hot(torch.tensor(path), 3).double().log()
    assert [tuple(e) for e in greedy_emissions(log_probs)] == [(2, 1), (2, 4), (1, 5)]
    distance, matches = edit_alignment([2, 1, 3], [2, 2, 1])  # one insertion (a 2), one deletion (the 3)
    assert distance == 2 and [(r, h) for r, h in matches] in ([(0, 0), (1, 2)], [(0, 1), (1, 2)])
    assert edit_alignment([1, 2], [1, 2]) == (0, [(0, 0), (1, 1)])
    assert edit_alignment([1, 2], []) == (2, [])


# -- the verb ----------------------------------------------------------------------------------------------

def verb_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit represent")
    add_ctc_verbs(parser.add_subparsers(dest="subverb", required=True))
    return parser


def test_verb_help_is_torch_free():
    code = ("import sys, argparse\nfrom alignkit.cli.represent_ctc import add_ctc_verbs\n"
            "p = argparse.ArgumentParser(); add_ctc_verbs(p.add_subparsers())\n"
            "try:\n    p.parse_args(['ctc-latency', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "False", done.stdout[-500:] + done.stderr[-500:]


def test_verb_rejects_bad_arguments_before_training(tmp_path):
    out = tmp_path / "r.json"
    for bad in (["--warmup", "50", "--steps", "50"], ["--weight", "-1"], ["--noise", "-1"], ["--threads", "0"]):
        args = verb_parser().parse_args(["ctc-latency", "--out", str(out), *bad])
        with pytest.raises(ValueError):
            args.run(args)
    assert not out.exists()
    out.write_text("{}")
    args = verb_parser().parse_args(["ctc-latency", "--out", str(out)])
    with pytest.raises(ValueError, match="--out"):
        args.run(args)


def test_verb_writes_both_runs(tmp_path):
    out = tmp_path / "r.json"
    args = verb_parser().parse_args(["ctc-latency", "--out", str(out), "--steps", "3", "--warmup", "1",
                                     "--test-utterances", "4", "--batch", "4", "--hidden", "8"])
    assert args.run(args) == 0
    document = json.loads(out.read_text())
    assert set(document["runs"]) == {"ctc", "ctc_property"}
    assert document["settings"] == asdict(DemoSettings(steps=3, warmup=1, test_utterances=4, batch=4,
                                                       hidden=8))
    assert all(0 <= run["token_error_rate"] for run in document["runs"].values())
