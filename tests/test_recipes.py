"""Every shipped recipe parses into a valid TrainConfig (typos in keys or types fail here)."""

from pathlib import Path

import pytest

from alignkit.objectives import get
from alignkit.train.config import load_config

RECIPES = sorted((Path(__file__).parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_is_valid(recipe):
    config = load_config(recipe)
    objective = get(config.objective.name)
    assert set(config.objective.params) <= set(objective.defaults)


def test_there_are_recipes():
    assert len(RECIPES) >= 3
