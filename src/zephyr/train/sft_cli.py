"""`zephyr sft RECIPE.yaml [--key=value ...]`: distilled supervised fine-tuning."""

from __future__ import annotations

from zephyr.config import (
    DataArguments,
    ModelArguments,
    SFTConfig,
    effective_recipe,
    help_text,
    parse_config,
)

HELP = "Distilled SFT: fine-tune a model on conversations (assistant tokens only), packed and padding-free."
DESCRIPTION = (
    HELP
    + "\n\nSettings come from the recipe file, then `--key=value` overrides. alignment-handbook SFT recipes parse"
    " as they are.\nExample: zephyr sft recipes/demo/sft.yaml --max_steps=5 --output_dir=runs/sft"
    + "\n\nRecipe keys:"
    + help_text([ModelArguments, DataArguments])
    + "\n\nSFTConfig: every transformers.TrainingArguments key, plus:"
    + "\n  --max_length  --packing  --padding_free  (see the docs of zephyr.config.SFTConfig)"
)


def add_arguments(parser) -> None:
    parser.add_argument("recipe", nargs="?", help="YAML recipe file (optional: overrides alone also work)")


def run(args, extra) -> int:
    from zephyr.train.sft import sft

    model_args, data_args, sft_args = parse_config(
        [ModelArguments, DataArguments, SFTConfig], args.recipe, extra
    )
    recipe = effective_recipe(args.recipe, extra, model_args, data_args, sft_args)
    result = sft(model_args, data_args, sft_args, recipe=recipe)
    print(f"SFT model saved to {result.output_dir}")
    return 0
