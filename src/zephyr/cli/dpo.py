"""`zephyr dpo [RECIPE.yaml] [--key=value ...]`: direct preference optimisation (dDPO)."""

from __future__ import annotations

from zephyr.cli.common import add_recipe_argument, run_training, training_description
from zephyr.train.config import DPOConfig

DESCRIPTION = training_description(DPOConfig, "dpo")

add_arguments = add_recipe_argument


def run(args, extra) -> int:
    from zephyr.train.dpo import dpo

    return run_training(DPOConfig, dpo, "DPO", args, extra)
