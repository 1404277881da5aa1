"""`zephyr sft [RECIPE.yaml] [--key=value ...]`: distilled supervised fine-tuning."""

from __future__ import annotations

from zephyr.cli.common import add_recipe_argument, describe
from zephyr.config import effective_recipe, parse_config
from zephyr.data.config import DataArguments
from zephyr.models import ModelArguments
from zephyr.train.config import SFTConfig

DESCRIPTION = describe(
    [ModelArguments, DataArguments],
    "zephyr sft recipes/demo/sft.yaml --max_steps=5 --output_dir=runs/sft",
    "alignment-handbook SFT recipes parse as they are.",
) + (
    "\n\nSFTConfig: every transformers.TrainingArguments key, plus:"
    "\n  --max_length  --packing  --padding_free  (see zephyr.train.config.SFTConfig)"
)
add_arguments = add_recipe_argument


def run(args, extra) -> int:
    from zephyr.train.sft import sft

    model_args, data_args, sft_args = parse_config(
        [ModelArguments, DataArguments, SFTConfig], args.recipe, extra
    )
    recipe = effective_recipe(args.recipe, extra, sft_args, in_full=(model_args, data_args))
    result = sft(model_args, data_args, sft_args, recipe=recipe)
    print(f"SFT model saved to {result.output_dir}")
    return 0
