"""`zephyr binarize [RECIPE.yaml] [--key=value ...]`."""

from __future__ import annotations

from zephyr.cli.common import add_recipe_argument, describe, run_recipe_stage
from zephyr.distill.binarize import BinarizeConfig, binarize

DESCRIPTION = describe([BinarizeConfig], "zephyr binarize recipes/demo/binarize.yaml --ties=drop")
add_arguments = add_recipe_argument


def run(args, extra) -> int:
    return run_recipe_stage(BinarizeConfig, binarize, args, extra)
