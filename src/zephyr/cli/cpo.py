"""`zephyr cpo [RECIPE.yaml] [--key=value ...]`: contrastive preference optimisation (CPO, SimPO, AlphaPO)."""

from __future__ import annotations

from zephyr.cli.common import add_recipe_argument, run_training, training_description
from zephyr.train.config import CPOConfig

DESCRIPTION = training_description(
    CPOConfig,
    "cpo",
    "TRL's CPOConfig keys; `loss_type: simpo` with `cpo_alpha: 0` is SimPO (`zephyr simpo`).",
)

add_arguments = add_recipe_argument


def run(args, extra) -> int:
    from zephyr.train.reference_free import cpo

    return run_training(CPOConfig, cpo, "CPO", args, extra)
