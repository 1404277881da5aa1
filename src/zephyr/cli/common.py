"""What the recipe-driven subcommands share: `zephyr STAGE [RECIPE.yaml] [--key=value ...]`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from zephyr.config import help_text, parse_config
from zephyr.errors import ConfigError

EXIT_INCOMPLETE = 3  # the stage finished, but some rows failed or were unreadable: rerun to retry


def describe(classes: Sequence[type], example: str, note: str = "") -> str:
    """`--help` body: where settings come from, an example, then every key from the config dataclasses."""
    text = "Settings come from the recipe file, then `--key=value` overrides."
    if note:
        text += f" {note}"
    return f"{text}\nExample: {example}\n\nRecipe keys:{help_text(classes)}"


def is_recipe_file(arg: str | None) -> bool:
    """True when a positional argument names an existing YAML recipe (not a model or run directory)."""
    return bool(arg) and Path(arg).suffix in (".yaml", ".yml") and Path(arg).is_file()


def add_recipe_argument(parser) -> None:
    parser.add_argument(
        "recipe",
        nargs="?",
        metavar="RECIPE",
        help="YAML recipe file (optional: `--key=value` overrides alone also work)",
    )


def run_recipe_stage(config_cls: type, stage: Callable, args, extra) -> int:
    """Parse the config, run the stage, print its summary; exit status 3 when rows were left undone."""
    (config,) = parse_config([config_cls], args.recipe, extra)
    result = stage(config)
    print(result.summary())
    return 0 if getattr(result, "complete", True) else EXIT_INCOMPLETE


# The handbook files a recipe under the method that runs it (recipes/MODEL/orpo/config_full.yaml), and an
# ORPO recipe has no key that only ORPO takes: its directory is the one sign of which command it is for.
METHOD_DIRECTORIES = {"sft": "zephyr sft", "dpo": "zephyr dpo", "orpo": "zephyr orpo", "cpo": "zephyr cpo"}
METHOD_DIRECTORIES["simpo"] = "zephyr simpo"
METHOD_DIRECTORIES["kto"] = "zephyr kto"


def check_method_directory(recipe, command: str, extra) -> None:
    """Refuse a recipe filed under another method's directory, unless it states its `loss_type`."""
    if not recipe or not command:
        return
    from zephyr.config import parse_overrides, read_recipe

    wanted = METHOD_DIRECTORIES.get(Path(recipe).parent.name.lower())
    stated = "loss_type" in read_recipe(recipe) or "loss_type" in parse_overrides(extra)
    if wanted is not None and wanted != command and not stated:
        raise ConfigError(
            f"{recipe} is filed under `{Path(recipe).parent.name}/`, so it is a recipe for `{wanted}`; run it "
            f"with `{wanted}`, or state its `loss_type` to train it with `{command}` anyway"
        )


def run_training(config_cls: type, train: Callable, what: str, args, extra) -> int:
    """`zephyr sft|dpo`: model, data and training keys from one recipe; the model card records the recipe."""
    from zephyr.config import effective_recipe
    from zephyr.data.config import DataArguments
    from zephyr.models import ModelArguments

    check_method_directory(args.recipe, getattr(config_cls, "COMMAND", ""), extra)
    model_args, data_args, train_args = parse_config(
        [ModelArguments, DataArguments, config_cls], args.recipe, extra
    )
    recipe = effective_recipe(args.recipe, extra, train_args, in_full=(model_args, data_args))
    result = train(model_args, data_args, train_args, recipe=recipe)
    print(f"{what} model saved to {result.output_dir}")
    return 0


def training_description(config_cls: type, command: str, note: str | None = None) -> str:
    from zephyr.data.config import DataArguments
    from zephyr.models import ModelArguments

    body = describe(
        [ModelArguments, DataArguments],
        f"zephyr {command} recipes/demo/{command}.yaml --max_steps=5 --output_dir=runs/{command}",
        note or f"alignment-handbook {command.upper()} recipes parse as they are.",
    )
    own = help_text([config_cls], ours_only=True)
    return (
        f"{body}\n{own}\n  ... and every transformers.TrainingArguments key (learning_rate, max_steps, ...)."
    )
