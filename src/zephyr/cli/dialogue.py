"""`zephyr dialogue [RECIPE.yaml] [--key=value ...]`."""

from __future__ import annotations

from zephyr.cli.common import add_recipe_argument, describe, run_recipe_stage
from zephyr.distill.dialogue import DialogueConfig, dialogue

DESCRIPTION = describe(
    [DialogueConfig],
    "zephyr dialogue recipes/demo/dialogue.yaml --max_dialogues=4",
    "`--shard I/N` makes shard I of N (join them with `zephyr merge-shards OUTPUT`).",
)
add_arguments = add_recipe_argument


def run(args, extra) -> int:
    return run_recipe_stage(DialogueConfig, dialogue, args, extra)
