"""The recipes ship inside the package (one copy: `src/alignkit/recipes` is the repository's `recipes/`), are
found by name from any working directory, and `alignkit recipes` lists and prints them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from alignkit.cli.main import main
from alignkit.train.config import ConfigError, load_config
from alignkit.train.recipes import recipe_folder, resolve_recipe, shipped_recipes

ROOT = Path(__file__).parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_the_shipped_recipes_are_the_repository_recipes():
    shipped = sorted(recipe_folder().glob("*.yaml"))
    assert [p.name for p in shipped] == [p.name for p in RECIPES] and RECIPES
    assert all(a.samefile(b) for a, b in zip(shipped, RECIPES))  # one copy, not two


def test_every_recipe_is_listed_with_its_objective_and_description(capsys):
    recipes = {recipe.name: recipe for recipe in shipped_recipes()}
    assert sorted(recipes) == [p.stem for p in RECIPES]
    for path in RECIPES:
        assert recipes[path.stem].objective == load_config(path).objective.name
        assert recipes[path.stem].description == path.read_text().splitlines()[0].lstrip("# ").strip()
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out.splitlines()
    for path in RECIPES:
        assert any(line.split()[:1] == [path.stem] for line in listed), path.stem


def test_alignkit_recipes_name_prints_the_recipe(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["recipes", "dpo"]) == 0
    assert capsys.readouterr().out == (ROOT / "recipes" / "dpo_smollm2.yaml").read_text()
    assert main(["recipes", "demo", "--path"]) == 0
    assert Path(capsys.readouterr().out.strip()).samefile(ROOT / "recipes" / "demo_dpo_smollm2.yaml")
    assert main(["recipes", "no-such-recipe"]) == 2
    err = capsys.readouterr().err
    assert "no-such-recipe" in err and "dpo_smollm2" in err


@pytest.mark.parametrize("name, file", [("dpo", "dpo_smollm2.yaml"), ("demo", "demo_dpo_smollm2.yaml"),
                                        ("dpo_smollm2", "dpo_smollm2.yaml"), ("dpo_lora", "dpo_lora_smollm2.yaml"),
                                        ("dpo_smollm2.yaml", "dpo_smollm2.yaml"), ("kto", "kto_smollm2.yaml"),
                                        ("recipes/sft_smollm2.yaml", "sft_smollm2.yaml")])
def test_resolve_recipe_by_name_from_another_directory(name, file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = resolve_recipe(name)
    assert path.name == file and path.samefile(ROOT / "recipes" / file)
    assert load_config(path).objective.name == load_config(ROOT / "recipes" / file).objective.name


def test_an_existing_file_is_taken_as_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    own = tmp_path / "recipes" / "dpo_smollm2.yaml"  # a local copy wins over the shipped one
    own.parent.mkdir()
    own.write_text("objective: {name: sft}\n")
    assert resolve_recipe("recipes/dpo_smollm2.yaml") == Path("recipes/dpo_smollm2.yaml")
    assert resolve_recipe(own) == own


@pytest.mark.parametrize("name, message", [("nope", "no such recipe file or shipped recipe"),
                                           ("rm", "more than one shipped recipe"),
                                           ("elsewhere/dpo_smollm2.yaml", "no such recipe file")])
def test_unknown_recipes_are_config_errors_listing_the_shipped_ones(name, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message) as caught:
        resolve_recipe(name)
    assert "dpo_smollm2" in str(caught.value) or "rm_multi_smollm2" in str(caught.value)


def test_the_wheel_holds_every_recipe(tmp_path):
    """Build a wheel from a copy of the project (the recipes symlink kept a symlink) and list its files."""
    pytest.importorskip("setuptools")
    if not _setuptools_builds_wheels():
        pytest.importorskip("wheel")
    project = tmp_path / "project"
    shutil.copytree(ROOT / "src", project / "src", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "recipes", project / "recipes")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, project / name)
    assert (project / "src" / "alignkit" / "recipes").is_symlink()
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(tmp_path / "wheel")], cwd=project, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    names = zipfile.ZipFile(next((tmp_path / "wheel").glob("alignkit-*.whl"))).namelist()
    assert {f"alignkit/recipes/{p.name}" for p in RECIPES} <= set(names)
    assert "alignkit/data/demo/train.jsonl" in names and "alignkit/decode/urial_prompts/inst_1k_v4.txt" in names


def _setuptools_builds_wheels() -> bool:
    """Whether setuptools builds wheels without the separate `wheel` package (setuptools >= 70.1)."""
    import setuptools

    major, minor = (int(part) for part in setuptools.__version__.split(".")[:2])
    return (major, minor) >= (70, 1)
