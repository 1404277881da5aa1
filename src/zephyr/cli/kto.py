"""`zephyr kto [RECIPE.yaml] [--key=value ...]`: Kahneman-Tversky optimisation on unpaired rows."""

from __future__ import annotations

from zephyr.cli.common import add_recipe_argument, run_training, training_description
from zephyr.train.config import KTOConfig

DESCRIPTION = training_description(
    KTOConfig,
    "kto",
    "Data: TRL's unpaired rows (prompt, completion, label), preference pairs (one desirable and one "
    "undesirable row each) or rated completions (the `zephyr feedback` output, labelled by `kto_threshold`). "
    "TRL KTOConfig keys parse as they are.",
)

add_arguments = add_recipe_argument


def run(args, extra) -> int:
    from zephyr.train.kto import kto

    return run_training(KTOConfig, kto, "KTO", args, extra)
