"""`zephyr sft [RECIPE.yaml] [--key=value ...]`: distilled supervised fine-tuning."""

from __future__ import annotations

from zephyr.cli.common import add_recipe_argument, run_training, training_description
from zephyr.train.config import SFTConfig

DESCRIPTION = training_description(SFTConfig, "sft")

add_arguments = add_recipe_argument


def run(args, extra) -> int:
    from zephyr.train.sft import sft

    return run_training(SFTConfig, sft, "SFT", args, extra)
