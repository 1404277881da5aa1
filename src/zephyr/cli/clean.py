"""`zephyr clean [RECIPE.yaml] [--key=value ...]`."""

from __future__ import annotations

from zephyr.cli.common import add_recipe_argument, describe, run_recipe_stage
from zephyr.distill.clean import CleanConfig, clean

DESCRIPTION = describe([CleanConfig], "zephyr clean recipes/demo/clean.yaml")
add_arguments = add_recipe_argument


def run(args, extra) -> int:
    return run_recipe_stage(CleanConfig, clean, args, extra)
