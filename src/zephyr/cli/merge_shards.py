"""`zephyr merge-shards OUTPUT`: join the shards that `--shard I/N` runs of a row-by-row stage wrote."""

from __future__ import annotations

DESCRIPTION = (
    "OUTPUT is the file the stage writes unsharded (e.g. runs/x/dialogues.jsonl); its shards\n"
    "OUTPUT-stem.shard-I-of-N.jsonl are found beside it. Refused unless all N shards are present and\n"
    "finished, none is being written, all were made with the same settings from the same input, and no\n"
    "row appears twice or in the wrong shard. Works for generate, feedback and dialogue outputs.\n"
    "Example: zephyr merge-shards runs/ultrachat/dialogues.jsonl"
)


def add_arguments(parser) -> None:
    parser.add_argument("output", metavar="OUTPUT", help="the unsharded output path to write")
    parser.add_argument("--overwrite", action="store_true", help="replace OUTPUT if it already exists")


def run(args, extra) -> int:
    from zephyr.distill.shards import merge_shards

    result = merge_shards(args.output, overwrite=args.overwrite)
    print(result.summary())
    if result.stage == "dialogue":  # its per-reason report covers the merged rows
        from zephyr.distill.dialogue import write_report

        _, path = write_report(result.output)
        print(f"merge-shards: report in {path}")
    return 0
