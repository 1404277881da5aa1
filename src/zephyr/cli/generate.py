"""`zephyr generate [RECIPE.yaml] [--key=value ...]`."""

from __future__ import annotations

from zephyr.cli.common import add_recipe_argument, describe, run_recipe_stage
from zephyr.distill.generate import GenerateConfig, generate

DESCRIPTION = describe([GenerateConfig], "zephyr generate recipes/demo/generate.yaml --max_prompts=8")
add_arguments = add_recipe_argument


def run(args, extra) -> int:
    return run_recipe_stage(GenerateConfig, generate, args, extra)
