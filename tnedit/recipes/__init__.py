"""Recipes: one YAML file names a whole experiment; `tnedit run` executes it step by step.

A recipe validates into :class:`Recipe` (:mod:`tnedit.recipes.schema`), whose steps nest the verbs'
settings classes; :func:`load_recipe` reads, overrides, expands and checks it (:mod:`tnedit.recipes.loading`,
:mod:`tnedit.recipes.paths`), and :class:`RecipeRunner` runs it, skipping the steps whose stamp matches
(:mod:`tnedit.recipes.runner`). Loading is torch-free; the runner is imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tnedit.exports import lazy_exports
from tnedit.recipes.loading import load_recipe, parse_override
from tnedit.recipes.paths import check_inputs
from tnedit.recipes.schema import Recipe, recipe_to_dict

if TYPE_CHECKING:
    from tnedit.recipes.runner import RecipeRunner

__all__ = ["Recipe", "RecipeRunner", "check_inputs", "load_recipe", "parse_override", "recipe_to_dict"]

# The runner imports the pipelines (torch); loading a recipe does not.
__getattr__, __dir__ = lazy_exports(__name__, {"RecipeRunner": "runner"})
