"""`zephyr dpo [RECIPE.yaml] [--key=value ...]`: direct preference optimisation (dDPO)."""

from __future__ import annotations

from zephyr.cli.common import add_recipe_argument, describe
from zephyr.config import effective_recipe, parse_config
from zephyr.data.config import DataArguments
from zephyr.models import ModelArguments
from zephyr.train.config import DPOConfig

DESCRIPTION = describe(
    [ModelArguments, DataArguments],
    "zephyr dpo recipes/demo/dpo.yaml --max_steps=5 --output_dir=runs/dpo",
    "alignment-handbook DPO recipes parse as they are.",
) + (
    "\n\nDPOConfig: every transformers.TrainingArguments key, plus:"
    "\n  --beta --loss_type --label_smoothing --max_length --max_prompt_length --ref_model_name_or_path"
    "\n  --precompute_ref_log_probs --ref_cache_dir --padding_free --prefix_sharing"
    "  (see zephyr.train.config.DPOConfig)"
)
add_arguments = add_recipe_argument


def run(args, extra) -> int:
    from zephyr.train.dpo import dpo

    model_args, data_args, dpo_args = parse_config(
        [ModelArguments, DataArguments, DPOConfig], args.recipe, extra
    )
    recipe = effective_recipe(args.recipe, extra, dpo_args, in_full=(model_args, data_args))
    result = dpo(model_args, data_args, dpo_args, recipe=recipe)
    print(f"DPO model saved to {result.output_dir}")
    return 0
