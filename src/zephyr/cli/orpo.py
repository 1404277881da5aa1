"""`zephyr orpo [RECIPE.yaml] [--key=value ...]`: odds-ratio preference optimisation, no reference model."""

from __future__ import annotations

from zephyr.cli.common import add_recipe_argument, run_training, training_description
from zephyr.train.config import ORPOConfig

DESCRIPTION = training_description(ORPOConfig, "orpo")

add_arguments = add_recipe_argument


def run(args, extra) -> int:
    from zephyr.train.reference_free import orpo

    return run_training(ORPOConfig, orpo, "ORPO", args, extra)
