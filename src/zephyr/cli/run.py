"""`zephyr run RECIPE.yaml`: a whole recipe (or part of it) as one resumable pipeline."""

from __future__ import annotations

DESCRIPTION = (
    "Each stage's outputs are keyed by a hash of its settings, its upstream stages and the contents of its "
    "local input files: a rerun skips finished stages, redoes changed ones (and everything downstream) "
    "and resumes an interrupted one. Per-stage overrides: --dpo.beta=0.05 (a round stage: --rounds.dpo.beta=0.05).\n"
    "Example: zephyr run recipes/demo/pipeline.yaml --dry-run"
)


def add_arguments(parser) -> None:
    parser.add_argument("recipe", help="Pipeline recipe (YAML with run_dir and one section per stage)")
    parser.add_argument(
        "--from",
        dest="start",
        metavar="STAGE",
        help="Start at this stage, e.g. dpo or round2/generate (earlier ones must be done)",
    )
    parser.add_argument("--only", metavar="STAGE", help="Run only this stage")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="Validate every key, file path and offline-checkable model spec; print the plan",
    )


def run(args, extra) -> int:
    from zephyr.config import parse_overrides
    from zephyr.pipeline import print_summary, run_pipeline

    summary = run_pipeline(
        args.recipe,
        start=args.start,
        only=args.only,
        dry_run=args.dry_run,
        overrides=parse_overrides(extra) if extra else None,
    )
    print_summary(summary, args.dry_run)
    return 0
