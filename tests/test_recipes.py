"""Every shipped recipe parses into a valid TrainConfig (typos in keys or types fail here), and every
objective has its recipe, as the README promises."""

from pathlib import Path

import pytest

from alignkit.objectives import available, get
from alignkit.train.config import load_config

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_is_valid(recipe):
    config = load_config(recipe)
    objective = get(config.objective.name)
    assert set(config.objective.params) <= set(objective.defaults)


@pytest.mark.parametrize("objective", [objective.name for objective in available()])
def test_every_objective_has_its_recipe(objective):
    recipe = Path(__file__).parent.parent / "recipes" / f"{objective}_smollm2.yaml"
    assert recipe.exists(), f"no recipe {recipe.name}"
    assert load_config(recipe).objective.name == objective
