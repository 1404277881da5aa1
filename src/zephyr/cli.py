"""The `zephyr` command. Each subcommand lives in its own module, which provides:

- ``HELP``: one line for `zephyr --help`;
- ``add_arguments(parser)``: its options;
- ``run(args, extra)``: does the work; ``extra`` holds unparsed `--key=value` recipe overrides.

User errors (ZephyrError) print as one clear message, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from zephyr.errors import ZephyrError

# Subcommand -> module implementing it. Order is the order shown in `zephyr --help`.
COMMANDS = {
    "sft": "zephyr.train.sft_cli",
    "dpo": "zephyr.train.dpo_cli",
    "generate": "zephyr.distill.generate",
    "feedback": "zephyr.distill.feedback",
    "binarize": "zephyr.distill.binarize",
    "clean": "zephyr.distill.clean",
    "run": "zephyr.pipeline_cli",
    "chat": "zephyr.serve.chat_cli",
    "serve": "zephyr.serve_cli",
    "export": "zephyr.export",
    "eval": "zephyr.evaluate.cli",
    "report": "zephyr.report",
}

RECIPE_COMMANDS_ACCEPT_OVERRIDES = {"sft", "dpo", "generate", "feedback", "binarize", "clean", "run"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zephyr",
        description="The Zephyr alignment recipe: dSFT, AI feedback, dDPO, evaluation and serving in one tool.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name,
            help=module.HELP,
            description=getattr(module, "DESCRIPTION", module.HELP),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def setup_logging(verbose: bool = False) -> None:
    rank = os.environ.get("RANK", "0")
    level = logging.DEBUG if verbose else (logging.INFO if rank == "0" else logging.WARNING)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("httpx", "urllib3", "filelock", "datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if str(getattr(args, "recipe", None) or "").startswith("--"):
        # argparse takes `--key=a value` (with a space) for a positional; it is an override.
        extra.insert(0, args.recipe)
        args.recipe = None
    if extra and args.command not in RECIPE_COMMANDS_ACCEPT_OVERRIDES:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging(args.verbose)
    try:
        return args._module.run(args, extra) or 0
    except ZephyrError as exc:
        print(f"zephyr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"zephyr {args.command}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
