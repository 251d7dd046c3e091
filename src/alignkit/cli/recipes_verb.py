"""`alignkit recipes [NAME]`: the training recipes that ship with alignkit (`alignkit.train.recipes`).

    alignkit recipes                 # name, objective and description of each
    alignkit recipes dpo             # the YAML of dpo_smollm2.yaml (copy it, edit it, --config it)
    alignkit recipes dpo --path      # where the installed file is
"""

from __future__ import annotations

import argparse


def add_recipes_verb(verbs: argparse._SubParsersAction) -> None:
    parser = verbs.add_parser("recipes", help="list the shipped training recipes, or print one",
                              description="List the recipes that ship with alignkit, or print one recipe's YAML. "
                                          "A recipe is named by its file name (dpo_smollm2), its short name "
                                          "(dpo, dpo_lora, demo) or a path.")
    parser.add_argument("name", nargs="?", metavar="NAME", help="print this recipe's YAML")
    parser.add_argument("--path", action="store_true", help="with NAME: print the recipe's file path instead")
    parser.set_defaults(run=_recipes)


def _recipes(args: argparse.Namespace) -> int:
    from alignkit.train.recipes import resolve_recipe, shipped_recipes

    if args.name is not None:
        path = resolve_recipe(args.name)
        print(path if args.path else path.read_text(encoding="utf-8"), end="\n" if args.path else "")
        return 0
    if args.path:
        raise ValueError("--path needs a recipe NAME")
    recipes = shipped_recipes()
    width = max(len(recipe.name) for recipe in recipes)
    print(f"{'NAME':<{width}}  {'SHORT':<16} {'OBJECTIVE':<16} DESCRIPTION")
    for recipe in recipes:
        print(f"{recipe.name:<{width}}  {recipe.short_name:<16} {recipe.objective:<16} {recipe.description}")
    print("\nprint one: alignkit recipes NAME; train with one: alignkit train --config NAME")
    return 0
