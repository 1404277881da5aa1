"""`zephyr report RUN_DIR | RECIPE.yaml [--key=value ...]`: the HTML report of a run."""

from __future__ import annotations

from zephyr.cli.common import describe, is_recipe_file
from zephyr.config import parse_config, parse_overrides
from zephyr.report.config import ReportConfig

DESCRIPTION = describe([ReportConfig], "zephyr report runs/demo --samples=2")


def add_arguments(parser) -> None:
    parser.add_argument(
        "recipe", nargs="?", metavar="RUN_DIR|RECIPE", help="A run directory or a YAML recipe"
    )


def run(args, extra) -> int:
    from zephyr.report import report

    target, overrides = args.recipe, parse_overrides(extra)
    recipe = target if is_recipe_file(target) else None
    if target and recipe is None:
        overrides.setdefault("run_dir", target)
    (cfg,) = parse_config([ReportConfig], recipe, overrides)
    path = report(
        cfg.run_dir, cfg.output_dir, cfg.mt_bench, cfg.alpaca, cfg.samples, cfg.title, votes=cfg.votes
    )
    print(f"Report written to {path}")
    return 0
