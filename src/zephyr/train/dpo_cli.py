"""`zephyr dpo RECIPE.yaml [--key=value ...]`: direct preference optimisation (dDPO)."""

from __future__ import annotations

from zephyr.config import (
    DataArguments,
    DPOConfig,
    ModelArguments,
    effective_recipe,
    help_text,
    parse_config,
)

HELP = "dDPO: align a model on preference pairs (sigmoid/robust/ipo/hinge), packed with prefix sharing."
DESCRIPTION = (
    HELP
    + "\n\nSettings come from the recipe file, then `--key=value` overrides. alignment-handbook DPO recipes parse"
    " as they are.\nExample: zephyr dpo recipes/demo/dpo.yaml --max_steps=5 --output_dir=runs/dpo"
    + "\n\nRecipe keys:"
    + help_text([ModelArguments, DataArguments])
    + "\n\nDPOConfig: every transformers.TrainingArguments key, plus:"
    + "\n  --beta --loss_type --label_smoothing --max_length --max_prompt_length --ref_model_name_or_path"
    "\n  --precompute_ref_log_probs --ref_cache_dir --padding_free --prefix_sharing  (see zephyr.config.DPOConfig)"
)


def add_arguments(parser) -> None:
    parser.add_argument("recipe", nargs="?", help="YAML recipe file (optional: overrides alone also work)")


def run(args, extra) -> int:
    from zephyr.train.dpo import dpo

    model_args, data_args, dpo_args = parse_config(
        [ModelArguments, DataArguments, DPOConfig], args.recipe, extra
    )
    recipe = effective_recipe(args.recipe, extra, model_args, data_args, dpo_args)
    result = dpo(model_args, data_args, dpo_args, recipe=recipe)
    print(f"DPO model saved to {result.output_dir}")
    return 0
