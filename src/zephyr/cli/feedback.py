"""`zephyr feedback [RECIPE.yaml] [--key=value ...]`."""

from __future__ import annotations

from zephyr.cli.common import add_recipe_argument, describe, run_recipe_stage
from zephyr.distill.feedback import FeedbackConfig, feedback

DESCRIPTION = describe([FeedbackConfig], "zephyr feedback recipes/demo/feedback.yaml")
add_arguments = add_recipe_argument


def run(args, extra) -> int:
    return run_recipe_stage(FeedbackConfig, feedback, args, extra)
