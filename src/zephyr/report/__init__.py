"""The HTML report of a run: one page with PNG charts, viewable offline.

Everything is found under the run directory by file name (``collect``), so the page builds from
whatever stages have run:

- training curves from every ``trainer_state.json`` (an output dir's own, else its latest checkpoint's):
  loss, rewards/margins and rewards/accuracies against the step, train and eval;
- MT-Bench from ``model_judgment/*_single.jsonl`` (categories from the ``question.jsonl`` beside it):
  a radar chart of per-category scores, one polygon per model, and the score table; pairwise
  judgments (``*_pair.jsonl``) as a win-rate table;
- AlpacaEval from every ``annotations.json``: win rates with standard-error bars;
- a sample of generations from ``model_answer/*.jsonl`` and ``model_outputs.json``;
- iterative rounds, when the run has ``round<k>/eval`` directories: each metric (rule satisfaction, win
  rate, MT-Bench score, reward accuracy) against the round, with standard-error bars where known;
- human votes, when ``votes`` names votes files (`zephyr serve --votes`): per-model win rates with
  Wilson 95% intervals (ties count half) and, with more than two models, Bradley-Terry scores.

Judgment and annotation files from elsewhere (another run, a published leaderboard) can be added with
``mt_bench`` and ``alpaca`` to compare models on the same charts. Charts are drawn by ``plots``; the page
is ``template.html``, filled by ``render``. Every file is written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path

from zephyr.errors import ConfigError
from zephyr.io import write_atomic

log = logging.getLogger(__name__)

__all__ = ["report"]


def report(
    run_dir: str | Path,
    output_dir: str | Path | None = None,
    mt_bench: list[str] = (),
    alpaca: list[str] = (),
    samples: int = 4,
    title: str | None = None,
    *,
    output: str | Path | None = None,
    votes: list[str] = (),
) -> Path:
    """Build the report for ``run_dir`` into ``output_dir`` (default RUN_DIR/report); returns index.html.

    ``mt_bench`` and ``alpaca`` are more judgment / annotations files to compare, ``samples`` the number
    of generations shown per source, ``title`` the page title (default: the run directory's name),
    ``votes`` votes files to tally.
    ``output`` is the old name of ``output_dir``, still accepted (recipes and callers may use it).
    """
    # Imported here, not at the top: `collect` and `render` are also this package's submodule names, and
    # binding the functions at package level would hide the modules (zephyr.report.render & co).
    from zephyr.report.collect import collect
    from zephyr.report.render import render

    if output is not None:
        if output_dir is not None:
            raise ConfigError("report: give output_dir only (output is its deprecated name)")
        log.warning("report: `output` is deprecated; use `output_dir`")
        output_dir = output
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"Run directory not found: {run_dir}")
    out = Path(output_dir) if output_dir else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    results = collect(run_dir, list(mt_bench), list(alpaca), samples, list(votes))
    page = render(results, out, title or run_dir.resolve().name, run_dir)
    path = out / "index.html"
    write_atomic(path, page)
    return path
