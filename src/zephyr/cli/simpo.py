"""`zephyr simpo [RECIPE.yaml] [--key=value ...]`: SimPO, i.e. `zephyr cpo` with SimPO's defaults."""

from __future__ import annotations

from zephyr.cli.common import add_recipe_argument, run_training, training_description
from zephyr.train.config import SimPOConfig

DESCRIPTION = training_description(
    SimPOConfig,
    "simpo",
    "`zephyr cpo` with loss_type simpo, cpo_alpha 0 and beta 2.0 (the SimPO paper's) as defaults; TRL's "
    "CPOConfig keys.",
)

add_arguments = add_recipe_argument


def run(args, extra) -> int:
    from zephyr.train.reference_free import simpo

    return run_training(SimPOConfig, simpo, "SimPO", args, extra)
