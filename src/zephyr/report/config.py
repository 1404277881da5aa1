"""The settings of `zephyr report` (a recipe file, `--key=value`, or the pipeline's report section)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from zephyr.config import setting


@dataclass
class ReportConfig:
    """Which run to summarise, where the page goes, and what else to compare it with."""

    ALIASES: ClassVar[dict[str, str]] = {"output": "output_dir"}  # zephyr <= 0.1 wrote `--output`

    run_dir: str = setting("The run directory to summarise (searched recursively).", "")
    output_dir: str | None = setting("Where index.html and the PNGs go. Default: RUN_DIR/report.", None)
    mt_bench: list[str] = setting(
        "More MT-Bench judgment files (FastChat format) to compare.", default_factory=list
    )
    alpaca: list[str] = setting("More AlpacaEval annotations files to compare.", default_factory=list)
    votes: list[str] = setting(
        "Votes files of `zephyr serve --votes` to tally: win rates with 95% intervals, and Bradley-Terry "
        "scores when more than two models were compared.",
        default_factory=list,
    )
    samples: int = setting("Generations shown per source.", 4, ge=0)
    title: str | None = setting("Page title. Default: the run directory's name.", None)
