"""The `zephyr` command: one thin module per subcommand under ``zephyr.cli``.

Each subcommand module provides:

- ``DESCRIPTION``: the text of `zephyr COMMAND --help` after its one-line summary (below, in COMMANDS);
- ``add_arguments(parser)``: its options;
- ``run(args, extra) -> int``: parses its settings and calls one library function; ``extra`` holds the
  `--key=value` recipe overrides argparse did not consume.

Only the chosen subcommand's module is imported, so `zephyr --help` (and `import zephyr.cli`) load
neither torch nor transformers. User errors (ZephyrError) print as one line, never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from zephyr.errors import ZephyrError


@dataclass(frozen=True)
class Command:
    module: str
    help: str
    recipe: bool = True  # takes `RECIPE.yaml` plus `--key=value` overrides


# Order is the order shown in `zephyr --help` (the order of the recipe's stages, then the tools).
COMMANDS = {
    "run": Command("zephyr.cli.run", "Run a whole recipe as one resumable pipeline; skips finished stages."),
    "dialogue": Command(
        "zephyr.cli.dialogue", "Multi-turn dialogues between a user simulator and teachers, resumably."
    ),
    "generate": Command("zephyr.cli.generate", "Completions for prompts from a pool of teachers, resumably."),
    "feedback": Command("zephyr.cli.feedback", "UltraFeedback-style AI feedback on completions, resumably."),
    "binarize": Command(
        "zephyr.cli.binarize", "Preference pairs and SFT/gen splits from rated completions or human votes."
    ),
    "clean": Command(
        "zephyr.cli.clean", "Clean SFT dialogues: truecasing, disclaimers, dedup, decontamination."
    ),
    "sft": Command(
        "zephyr.cli.sft", "Distilled SFT on conversations (assistant tokens), packed, padding-free."
    ),
    "dpo": Command("zephyr.cli.dpo", "dDPO on preference pairs (sigmoid/robust/ipo/hinge), prefix sharing."),
    "kto": Command("zephyr.cli.kto", "KTO on unpaired desirable/undesirable replies (or pairs, or ratings)."),
    "orpo": Command(
        "zephyr.cli.orpo", "ORPO on preference pairs: SFT + odds-ratio loss, no reference model."
    ),
    "cpo": Command(
        "zephyr.cli.cpo", "CPO on preference pairs (sigmoid/hinge/ipo/simpo), no reference model."
    ),
    "simpo": Command("zephyr.cli.simpo", "SimPO: length-normalised margin loss, no reference model."),
    "eval": Command(
        "zephyr.cli.eval", "Evaluate: MT-Bench, AlpacaEval (file-compatible), preference accuracy."
    ),
    "report": Command("zephyr.cli.report", "An offline HTML report with charts of everything in a run dir."),
    "chat": Command("zephyr.cli.chat", "Chat with a model in the terminal (streamed replies).", recipe=False),
    "serve": Command(
        "zephyr.cli.serve", "Serve a model over an OpenAI-compatible API with a chat page.", recipe=False
    ),
    "export": Command(
        "zephyr.cli.export",
        "Export a model: a merged plain checkpoint, or GGUF + Modelfile for llama.cpp.",
    ),
    "merge-shards": Command(
        "zephyr.cli.merge_shards",
        "Join the `--shard I/N` outputs of generate, feedback or dialogue.",
        recipe=False,
    ),
}

DESCRIPTION = "The Zephyr alignment recipe: dSFT, AI feedback, dDPO, evaluation and serving in one tool."


def top_parser() -> argparse.ArgumentParser:
    listing = "\n".join(f"  {name:10s} {cmd.help}" for name, cmd in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="zephyr",
        description=DESCRIPTION,
        epilog=f"commands:\n{listing}\n\n`zephyr COMMAND --help` lists a command's options and recipe keys.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    parser.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND")
    parser.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def command_parser(name: str, parent: argparse._SubParsersAction | None = None):
    """The parser of one subcommand (imports its module, and with it what the command needs)."""
    cmd = COMMANDS[name]
    module = importlib.import_module(cmd.module)
    kwargs = dict(
        description=f"{cmd.help}\n\n{module.DESCRIPTION}".strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if parent is None:
        parser = argparse.ArgumentParser(prog=f"zephyr {name}", **kwargs)
    else:
        parser = parent.add_parser(name, help=cmd.help, **kwargs)
    module.add_arguments(parser)
    return parser, module


def build_parser() -> argparse.ArgumentParser:
    """Every subcommand fully built (imports them all): for documentation and the smoke tests."""
    parser = argparse.ArgumentParser(prog="zephyr", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        command_parser(name, sub)
    return parser


def setup_logging(verbose: bool = False) -> None:
    rank = os.environ.get("RANK", "0")
    level = logging.DEBUG if verbose else (logging.INFO if rank == "0" else logging.WARNING)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("httpx", "urllib3", "filelock", "datasets", "openai", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _give_back_value(args, argv: list[str], extra: list[str]) -> None:
    """Without a recipe, argparse takes the value of a first `--key value` override for the recipe
    (`zephyr binarize --votes votes.jsonl ...`); hand it back to its key."""
    recipe = getattr(args, "recipe", None)
    if not recipe or recipe not in argv or Path(recipe).suffix in (".yaml", ".yml"):
        return
    at = argv.index(recipe)
    key = argv[at - 1] if at else ""
    if key.startswith("--") and "=" not in key and key in extra:
        extra.insert(extra.index(key) + 1, recipe)
        args.recipe = None


def main(argv: list[str] | None = None) -> int:
    top = top_parser()
    ns = top.parse_args(sys.argv[1:] if argv is None else argv)
    if ns.command is None:
        top.print_help()
        return 2
    parser, module = command_parser(ns.command)
    args, extra = parser.parse_known_args(ns.args)
    if str(getattr(args, "recipe", None) or "").startswith("--"):
        # argparse takes `--key=a value` (with a space) for a positional; it is an override.
        extra.insert(0, args.recipe)
        args.recipe = None
    _give_back_value(args, ns.args, extra)
    if extra and not COMMANDS[ns.command].recipe:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    setup_logging(ns.verbose)
    try:
        return module.run(args, extra) or 0
    except ZephyrError as exc:
        print(f"zephyr {ns.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # A full disk is the user's to fix, not a bug: every stage writes atomically or appends whole
        # records, so what finished is kept and a rerun resumes.
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"zephyr {ns.command}: error: no space left on the device{where}; finished work is kept, "
            "free some space and rerun to resume",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"zephyr {ns.command}: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130
