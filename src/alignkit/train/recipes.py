"""The training recipes that ship inside the package: `resolve_recipe("dpo")`, `shipped_recipes()`.

The repository's `recipes/*.yaml` are the one copy: `src/alignkit/recipes` is a symlink to them, and the
package data (`alignkit = ["recipes/*.yaml", ...]` in pyproject.toml) puts the files themselves into the
wheel, so `alignkit train --config dpo` works after `pip install` from any working directory.

A recipe is named by its file stem (`dpo_smollm2`), by its short name (the stem without its last `_part`,
the model: `dpo`, `dpo_lora`, `demo_dpo`), or by a unique prefix of `_`-separated words (`demo` →
`demo_dpo_smollm2`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

RECIPE_FOLDER = Path(__file__).resolve().parent.parent / "recipes"  # alignkit/recipes (in the source tree: a symlink)
DEFAULT_OBJECTIVE = "dpo"  # what a recipe without `objective.name` trains (TrainConfig's default)


@dataclass(frozen=True)
class Recipe:
    """A shipped recipe: its name (file stem), short name, objective, first comment line, and file."""

    name: str
    short_name: str
    objective: str
    description: str
    path: Path


def recipe_folder() -> Path:
    """The folder of the shipped recipes (inside the installed package)."""
    return RECIPE_FOLDER


def short_name(stem: str) -> str:
    """A recipe's short name: its file stem without the last `_part` (the model), e.g. `dpo_lora_smollm2` →
    `dpo_lora`; a stem without `_` is its own short name."""
    head, _, _ = stem.rpartition("_")
    return head or stem


def describe_recipe(path: Path) -> Recipe:
    """The name, short name, objective and description (first comment line) of the recipe file `path`."""
    text = path.read_text(encoding="utf-8")
    comments = [line.lstrip("#").strip() for line in text.splitlines() if line.startswith("#")]
    tree = yaml.safe_load(text) or {}
    objective = tree.get("objective") if isinstance(tree, dict) else None
    name = objective.get("name") if isinstance(objective, dict) else None
    return Recipe(name=path.stem, short_name=short_name(path.stem), objective=name or DEFAULT_OBJECTIVE,
                  description=next((line for line in comments if line), ""), path=path)


def shipped_recipes() -> list[Recipe]:
    """Every shipped recipe, sorted by name."""
    return [describe_recipe(path) for path in sorted(recipe_folder().glob("*.yaml"))]


def _by_name(name: str, recipes: list[Recipe]) -> list[Recipe]:
    """The recipes `name` stands for: the one with that stem, else those with that short name, else those whose
    stem starts with the words of `name` (`demo` → `demo_dpo_smollm2`)."""
    for matches in ([r for r in recipes if r.name == name], [r for r in recipes if r.short_name == name],
                    [r for r in recipes if r.name.startswith(f"{name}_")]):
        if matches:
            return matches
    return []


def _config_error(message: str) -> ValueError:
    # Imported here: config.py imports this module (load_config resolves recipe names).
    from alignkit.train.config import ConfigError

    return ConfigError(message)


def _unknown(given: str, recipes: list[Recipe], why: str) -> ValueError:
    names = ", ".join(f"{r.short_name} ({r.name})" if r.short_name != r.name else r.name for r in recipes)
    return _config_error(f"{given}: {why}; shipped recipes (`alignkit recipes` describes them): {names}")


def resolve_recipe(name_or_path: str | os.PathLike) -> Path:
    """The recipe file `name_or_path` stands for: an existing file as it is; else a shipped recipe by name
    (`dpo_smollm2`, `dpo_smollm2.yaml`, `dpo`, `demo`). A path written as in the docs (`recipes/dpo_smollm2.yaml`)
    that does not exist here is the shipped recipe of that file name. Anything else is a ConfigError listing
    the shipped recipes."""
    given = str(name_or_path)
    path = Path(given).expanduser()
    if path.is_file():
        return path
    recipes = shipped_recipes()
    if path.parent.name == "recipes" and path.suffix in (".yaml", ".yml"):
        shipped = [r for r in recipes if r.path.name == path.name]
        if shipped:
            log.info("%s: not found here; using the shipped recipe %s", given, shipped[0].path)
            return shipped[0].path
    if path.parent != Path("."):  # a path, not a name
        raise _unknown(given, recipes, "no such recipe file, and not the name of a shipped recipe")
    stem = path.stem if path.suffix in (".yaml", ".yml") else path.name
    matches = _by_name(stem, recipes)
    if len(matches) == 1:
        return matches[0].path
    if matches:
        raise _config_error(f"{given}: more than one shipped recipe has this name: "
                            f"{', '.join(r.name for r in matches)}; give the full name")
    raise _unknown(given, recipes, "no such recipe file or shipped recipe")
