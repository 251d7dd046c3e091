"""WhitenedCSE (arXiv 2305.17746): shuffled group whitening, multi-positive InfoNCE, alignment/uniformity
(arXiv 2005.10242), the demo's helpers, one training step on a tiny random BERT, and the CLI's checks.

Expected values come from numpy or from explicit math.log/math.exp arithmetic, never from the code under test.
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, BertTokenizer

from alignkit.cli.represent_whiten import add_whiten_verbs, run_whiten
from alignkit.represent.whiten_demo import (WhitenConfig, base_task, batches, chance_top1,
                                            positive_pairs, same_label_top1, same_task_heldout, train,
                                            training_loss, training_sentences, whitened_head)
from alignkit.represent.whitening import (alignment, channel_permutation, group_whiten, inverse_permutation,
                                          multi_positive_info_nce, shuffled_group_whitening, uniformity,
                                          whiten_views)


def correlated(rows: int, dim: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Rows with strongly correlated, shifted channels: z A + c."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator, dtype=torch.float64)
    return (torch.randn(rows, dim, generator=generator, dtype=torch.float64) @ mixing + 3.0).to(dtype)


def numpy_covariance(x: torch.Tensor) -> np.ndarray:
    return np.cov(x.detach().double().numpy(), rowvar=False, bias=True)


def test_permutation_is_a_bijection_and_the_inverse_undoes_it():
    permutation = channel_permutation(384, torch.Generator().manual_seed(1))
    assert sorted(permutation.tolist()) == list(range(384))
    inverse = inverse_permutation(permutation)
    assert [int(inverse[int(p)]) for p in permutation] == list(range(384))
    x = torch.randn(5, 384)
    assert torch.equal(x[:, permutation][:, inverse], x)


def test_group_whitening_gives_identity_covariance_within_each_group_only():
    x = correlated(2000, 24)
    out = group_whiten(x, 4)
    covariance = numpy_covariance(out)
    for start in range(0, 24, 6):
        np.testing.assert_allclose(covariance[start:start + 6, start:start + 6], np.eye(6), atol=1e-4)
    np.testing.assert_allclose(out.mean(0).numpy(), 0.0, atol=1e-8)
    assert np.abs(covariance[:6, 6:]).max() > 0.05  # groups are whitened separately, not jointly


def test_group_whitening_in_float32_at_the_minilm_shape():
    out = group_whiten(correlated(64, 384, dtype=torch.float32), 64)
    assert out.dtype == torch.float32
    covariance = numpy_covariance(out)
    for start in range(0, 384, 6):
        np.testing.assert_allclose(covariance[start:start + 6, start:start + 6], np.eye(6), atol=1e-3)


def test_eps_shrinks_the_whitened_variance_as_the_formula_says():
    x = correlated(500, 6)
    eigenvalues = np.linalg.eigvalsh(numpy_covariance(x))
    out = group_whiten(x, 1, eps=1.0)
    expected = np.sort(eigenvalues / (eigenvalues + 1.0))  # Sigma (Sigma + eps I)^-1 has these eigenvalues
    np.testing.assert_allclose(np.linalg.eigvalsh(numpy_covariance(out)), expected, atol=1e-8)


def test_zca_is_equivariant_to_an_orthogonal_map_of_the_channels():
    x = correlated(300, 6)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64))
    torch.testing.assert_close(group_whiten(x @ rotation, 1), group_whiten(x, 1) @ rotation)


def test_shuffled_whitening_whitens_the_permuted_groups_in_the_original_channel_order():
    x = correlated(3000, 12)
    permutation = channel_permutation(12, torch.Generator().manual_seed(5))
    out = shuffled_group_whitening(x, 2, permutation=permutation)
    for group in (permutation[:6].tolist(), permutation[6:].tolist()):
        np.testing.assert_allclose(numpy_covariance(out[:, group]), np.eye(6), atol=1e-4)


def test_shuffled_whitening_commutes_with_relabelling_the_channels():
    x = correlated(400, 12)
    generator = torch.Generator().manual_seed(7)
    permutation, relabel = channel_permutation(12, generator), channel_permutation(12, generator)
    # x[:, relabel] groups the same original channels under the permutation inverse(relabel)[permutation]
    moved = shuffled_group_whitening(x[:, relabel], 2, permutation=inverse_permutation(relabel)[permutation])
    torch.testing.assert_close(moved, shuffled_group_whitening(x, 2, permutation=permutation)[:, relabel])
    # with one group, ZCA does not depend on the permutation at all
    torch.testing.assert_close(shuffled_group_whitening(x, 1, permutation=permutation), group_whiten(x, 1))


def test_detached_transform_back_propagates_through_the_centring_only():
    x = correlated(50, 6).requires_grad_(True)
    weights = torch.randn(50, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (group_whiten(x, 1) * weights).sum().backward()
    values, vectors = np.linalg.eigh(numpy_covariance(x))
    transform = vectors @ np.diag(values ** -0.5) @ vectors.T
    expected = (weights.numpy() - weights.numpy().mean(0)) @ transform.T
    np.testing.assert_allclose(x.grad.numpy(), expected, atol=1e-8)
    x.grad = None
    (group_whiten(x, 1, detach_transform=False) * weights).sum().backward()
    assert not np.allclose(x.grad.numpy(), expected, atol=1e-4)


def test_whitening_rejects_groups_that_do_not_divide_or_cannot_be_whitened():
    with pytest.raises(ValueError, match="divide"):
        group_whiten(torch.randn(10, 12), 5)
    with pytest.raises(ValueError, match="more rows"):
        group_whiten(torch.randn(6, 12), 2)
    assert torch.isfinite(group_whiten(torch.randn(6, 12), 2, eps=0.1)).all()


def test_view_split_whitens_each_view_and_row_split_keeps_chunks_independent():
    views = [correlated(30, 6, seed=s) for s in range(3)]
    for view in whiten_views(views, 1, generator=torch.Generator().manual_seed(0)):
        np.testing.assert_allclose(numpy_covariance(view), np.eye(6), atol=1e-8)
    changed = [view.clone() for view in views]
    for view in changed:
        view[29] += 10.0  # sentence 29 lies in the last third of the sentence-major rows
    rows = [whiten_views(v, 1, split="rows", generator=torch.Generator().manual_seed(0)) for v in (views, changed)]
    for before, after in zip(*rows):
        torch.testing.assert_close(before[:10], after[:10])  # the first chunk: sentences 0..9, all views
    by_view = [whiten_views(v, 1, generator=torch.Generator().manual_seed(0)) for v in (views, changed)]
    assert not torch.allclose(by_view[0][0][:10], by_view[1][0][:10])


def test_multi_positive_info_nce_equals_its_closed_form():
    anchor = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    first = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)   # cosines: [[1, 1/r2], [0, 1/r2]]
    second = torch.tensor([[0.0, 1.0], [0.0, 2.0]], dtype=torch.float64)  # cosines: [[0, 0], [1, 1]]
    tau, r2 = 0.5, math.sqrt(2.0)
    term1 = (-math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(r2)))
             - math.log(math.exp(r2) / (math.exp(0.0) + math.exp(r2)))) / 2
    term2 = (math.log(2.0) + math.log(2.0)) / 2
    loss = multi_positive_info_nce(anchor, [first, second], temperature=tau)
    assert loss.item() == pytest.approx(term1 + term2, abs=1e-12)
    mean = multi_positive_info_nce(anchor, [first, second], temperature=tau, combine="mean")
    assert mean.item() == pytest.approx((term1 + term2) / 2, abs=1e-12)


def test_alignment_and_uniformity_on_hand_points():
    x = torch.tensor([[3.0, 0.0], [0.0, 2.0]])
    assert alignment(x, x * 5).item() == pytest.approx(0.0, abs=1e-12)
    assert alignment(x, x.flip(1)).item() == pytest.approx(2.0, abs=1e-6)  # orthogonal unit vectors
    assert alignment(x, x.flip(1), alpha=1).item() == pytest.approx(math.sqrt(2.0), abs=1e-6)
    assert uniformity(torch.tensor([[1.0, 0.0], [-2.0, 0.0]])).item() == pytest.approx(-8.0, abs=1e-5)
    angles = [0.0, 2 * math.pi / 3, 4 * math.pi / 3]
    triangle = torch.tensor([[math.cos(a), math.sin(a)] for a in angles], dtype=torch.float64)
    assert uniformity(triangle).item() == pytest.approx(-6.0, abs=1e-9)  # every squared distance is 3
    square = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]], dtype=torch.float64)
    expected = math.log((4 * math.exp(-4.0) + 2 * math.exp(-8.0)) / 6)  # 4 sides (d^2 = 2), 2 diagonals (4)
    assert uniformity(square).item() == pytest.approx(expected, abs=1e-12)


def test_same_task_heldout_pairs_retrieval_and_chance():
    prompts = ["Describe a cat. Answer in at most 15 words.", "Describe a dog. Use the word 'warm'.",
               "Describe a cat. Do not use any commas in your answer.", "Explain rain. Be brief.",
               "Explain rain. Answer in at most 20 words.", "Explain rain. Use the word 'happy'."]
    assert base_task(prompts[0]) == "Describe a cat"
    heldout = same_task_heldout(prompts)
    assert heldout.prompts == sorted(prompts[:1] + prompts[2:3]) + sorted(prompts[3:])
    assert heldout.labels == [0, 0, 1, 1, 1]
    assert positive_pairs(heldout.labels) == ([0, 2, 2, 3], [1, 3, 4, 4])
    assert chance_top1(heldout.labels) == pytest.approx((2 * 1 / 4 + 3 * 2 / 4) / 5)
    assert training_sentences(["describe a CAT now please", "A dog barks loudly."], heldout) == ["A dog barks loudly."]
    points = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.8, 0.2]])
    assert same_label_top1(points, [0, 0, 1, 1, 1]) == pytest.approx(4 / 5)  # row 4's nearest is row 1


def test_batches_hold_distinct_indices_and_cover_an_epoch_before_repeating():
    drawn = list(batches(10, 3, 7, torch.Generator().manual_seed(0)))
    assert len(drawn) == 7 and all(len(set(batch)) == 3 for batch in drawn)
    assert len(set(sum(drawn[:3], []))) == 9  # three batches per epoch, the last index of each epoch dropped


def test_config_rejects_bad_values_and_widths():
    for bad in (dict(views=1), dict(temperature=0.0), dict(split="cols"), dict(steps=0), dict(eps=-1.0)):
        with pytest.raises(ValueError):
            WhitenConfig(**bad)
    with pytest.raises(ValueError, match="divide"):
        WhitenConfig(groups=5).check_dimension(384)
    with pytest.raises(ValueError, match="batch size"):
        WhitenConfig(batch_size=6, eps=0.0).check_dimension(384)
    WhitenConfig(batch_size=6).check_dimension(384)  # eps > 0 whitens any batch
    WhitenConfig().check_dimension(384)


def tiny_bert(tmp_path) -> tuple[BertModel, BertTokenizer]:
    words = "the a cat dog sat ran on mat fast slow big small red blue".split()
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    config = BertConfig(vocab_size=5 + len(words), hidden_size=12, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=32)
    torch.manual_seed(0)
    return BertModel(config).eval(), BertTokenizer(str(vocab))


def test_one_training_run_on_a_tiny_bert_updates_encoder_and_head(tmp_path):
    model, tokenizer = tiny_bert(tmp_path)
    sentences = ["the cat sat", "a dog ran fast", "the big red mat", "a small blue cat", "the dog sat on a mat",
                 "red cat ran", "blue dog sat slow", "the small mat", "a big dog", "the cat ran on the mat"]
    config = WhitenConfig(steps=2, batch_size=8, groups=2, lr=1e-3)
    head = whitened_head(12)
    encoder_before = model.embeddings.word_embeddings.weight.detach().clone()
    head_before = head[0].weight.detach().clone()
    losses = train(model, head, tokenizer, sentences, config)
    assert len(losses) == 2 and all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert not torch.equal(model.embeddings.word_embeddings.weight, encoder_before)
    assert not torch.equal(head[0].weight, head_before)
    assert not model.training
    loss = training_loss(model, head, tokenizer, sentences[:8], config, torch.Generator().manual_seed(0))
    loss.backward()
    assert model.encoder.layer[0].attention.self.query.weight.grad.abs().sum() > 0


def test_a_dead_channel_needs_eps_and_training_says_so(tmp_path):
    model, tokenizer = tiny_bert(tmp_path)
    with torch.no_grad():  # a dead channel, as all-MiniLM-L6-v2 has three: its final LayerNorm gain and bias 0
        model.encoder.layer[-1].output.LayerNorm.weight[0] = 0.0
        model.encoder.layer[-1].output.LayerNorm.bias[0] = 0.0
    sentences = ["the cat sat", "a dog ran fast", "the big red mat", "a small blue cat", "the dog sat on a mat",
                 "red cat ran", "blue dog sat slow", "the small mat"]
    with pytest.raises(FloatingPointError, match="eps"):
        train(model, whitened_head(12), tokenizer, sentences, WhitenConfig(steps=1, batch_size=8, groups=2, eps=0.0))
    losses = train(model, whitened_head(12), tokenizer, sentences, WhitenConfig(steps=1, batch_size=8, groups=2))
    assert math.isfinite(losses[0])


def whiten_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="alignkit represent")
    add_whiten_verbs(parser.add_subparsers(dest="verb", required=True))
    return parser


def test_cli_help_does_not_import_torch():
    code = ("import argparse, sys\nfrom alignkit.cli.represent_whiten import add_whiten_verbs\n"
            "p = argparse.ArgumentParser(); add_whiten_verbs(p.add_subparsers())\n"
            "try:\n    p.parse_args(['whiten', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n")
    shown = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert "--batch-size" in shown and "--save DIR" in shown


def test_cli_rejects_bad_arguments_before_loading_anything(tmp_path, monkeypatch):
    import alignkit.represent.whiten_demo as demo

    monkeypatch.setattr(demo, "fine_tune", lambda *a, **k: pytest.fail("fine_tune must not run"))
    parser = whiten_parser()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    for argv, match in [(["--out", str(tmp_path / "missing" / "r.json")], "does not exist"),
                        (["--out", str(tmp_path / "r.json"), "--save", str(tmp_path / "full")], "not an empty"),
                        (["--out", str(tmp_path / "r.json"), "--views", "1"], "views"),
                        (["--out", str(tmp_path / "r.json"), "--lr", "0"], "lr")]:
        args = parser.parse_args(["whiten", *argv])
        assert args.run is run_whiten
        with pytest.raises(ValueError, match=match):
            args.run(args)
