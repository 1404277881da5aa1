"""Parse every training recipe of an alignment-handbook checkout the way its command would, as a new user would.

Each `recipes/*/{sft,dpo,orpo}/*.yaml` is parsed by the zephyr command that runs it (`sft`, `dpo`, or
`orpo` for the handbook's ORPO recipes), with `--use_cpu=true --bf16=false` added when this machine has
no GPU (the recipes ask for bf16 on GPUs; that is the machine, not the recipe). Nothing is loaded or
downloaded. Prints one line per recipe and ends with `RESULT parsed=N refused=M`.

    git clone https://github.com/huggingface/alignment-handbook /tmp/handbook
    python bench/handbook_recipes.py /tmp/handbook
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def command_of(path: Path) -> str:
    kind = path.parent.name
    return kind if kind in ("sft", "dpo", "orpo") else ""


def config_classes(command: str) -> list[type]:
    from zephyr.data.config import DataArguments
    from zephyr.models import ModelArguments
    from zephyr.train import config

    trainer = {"sft": "SFTConfig", "dpo": "DPOConfig", "orpo": "ORPOConfig"}[command]
    return [ModelArguments, DataArguments, getattr(config, trainer)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("handbook", type=Path, help="an alignment-handbook checkout")
    args = parser.parse_args(argv)
    import torch

    from zephyr.config import parse_config
    from zephyr.errors import ZephyrError

    recipes = sorted(p for p in args.handbook.glob("recipes/*/*/*.yaml") if command_of(p))
    if not recipes:
        raise SystemExit(f"no recipes/*/{{sft,dpo,orpo}}/*.yaml under {args.handbook}")
    machine = [] if torch.cuda.is_available() else ["--use_cpu=true", "--bf16=false"]
    refused = 0
    for path in recipes:
        command = command_of(path)
        out = ["--output_dir=" + tempfile.mkdtemp(prefix="handbook-")]
        try:
            parse_config(config_classes(command), path, out + machine)
            print(f"ok       zephyr {command:<4} {path.relative_to(args.handbook)}")
        except (ZephyrError, AttributeError) as exc:
            refused += 1
            print(f"REFUSED  zephyr {command:<4} {path.relative_to(args.handbook)}: {exc}")
    print(f"RESULT parsed={len(recipes) - refused} refused={refused}")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
