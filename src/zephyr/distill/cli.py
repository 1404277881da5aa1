"""What the distillation subcommands share on the command line.

Each stage module (generate, feedback, binarize, clean) exposes the `zephyr.cli` module contract
(``HELP``, ``DESCRIPTION``, ``add_arguments``, ``run``) built from these helpers, so every stage reads
its config the same way: `zephyr STAGE CONFIG.yaml [--key=value ...]`, keys documented by the config
dataclass's field metadata.
"""

from __future__ import annotations

from collections.abc import Callable

from zephyr.config import help_text, parse_config

EXIT_INCOMPLETE = 3  # the stage finished, but some rows failed or were unreadable: rerun to retry


def describe(help_line: str, config_cls: type, example: str) -> str:
    return (
        f"{help_line}\n\nSettings come from the config file, then `--key=value` overrides.\n"
        f"Example: {example}\n\nConfig keys:{help_text([config_cls])}"
    )


def add_arguments(parser) -> None:
    parser.add_argument(
        "recipe",
        nargs="?",
        metavar="CONFIG",
        help="YAML config file (optional: `--key=value` overrides alone also work)",
    )


def run_stage(config_cls: type, stage: Callable, args, extra) -> int:
    """Parse the config, run the stage, print its summary; exit status 3 when rows were left undone."""
    (config,) = parse_config([config_cls], args.recipe, extra)
    result = stage(config)
    print(result.summary())
    return 0 if getattr(result, "complete", True) else EXIT_INCOMPLETE
