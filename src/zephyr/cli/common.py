"""What the recipe-driven subcommands share: `zephyr STAGE [RECIPE.yaml] [--key=value ...]`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from zephyr.config import help_text, parse_config

EXIT_INCOMPLETE = 3  # the stage finished, but some rows failed or were unreadable: rerun to retry


def describe(classes: Sequence[type], example: str, note: str = "") -> str:
    """`--help` body: where settings come from, an example, then every key from the config dataclasses."""
    text = "Settings come from the recipe file, then `--key=value` overrides."
    if note:
        text += f" {note}"
    return f"{text}\nExample: {example}\n\nRecipe keys:{help_text(classes)}"


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
