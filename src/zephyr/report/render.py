"""Filling template.html: draws each section's charts into the output folder and renders the page.

The template holds all markup and style; this module only decides what goes in it, as plain values
(chart references, table rows of str/int/float/None), so the page's look changes in one file.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from zephyr.report import plots
from zephyr.report.collect import (
    AlpacaResult,
    Curves,
    MTBenchResult,
    PairwiseResult,
    RoundMetric,
    RunResults,
    VoteResult,
)


@dataclass(frozen=True)
class Chart:
    """A PNG beside the page: ``id`` is the <figure>'s element id, which tests and links refer to."""

    id: str
    file: str
    alt: str


@functools.lru_cache(maxsize=1)
def _template():
    import jinja2

    env = jinja2.Environment(
        autoescape=True,  # run names, labels and generations are untrusted text
        undefined=jinja2.StrictUndefined,  # a misspelt name in the template fails loudly, not blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    # Read as package data, like serve/page.html, so it works from a wheel or a zip as well.
    text = resources.files("zephyr.report").joinpath("template.html").read_text(encoding="utf-8")
    return env.from_string(text)


def render(results: RunResults, out: Path, title: str, run_dir: Path) -> str:
    """The page's HTML; its charts are written into ``out`` on the way."""
    return _template().render(
        title=title,
        run_dir=str(run_dir),
        training=_training(results.curves, out),
        mt_bench=_mt_bench(results.mt_bench, results.pairwise, out),
        alpaca=_alpaca(results.alpaca, out),
        samples=results.samples,
        votes=_votes(results.votes, out) if results.votes_given else None,
        rounds=_rounds(results.rounds, out),
    )


def _rounds(series: list[RoundMetric], out: Path) -> list[dict]:
    """Per metric: its chart against the round and its (round, value, standard error) rows."""
    sections = []
    for i, metric in enumerate(series):
        name = f"rounds_{i}.png"
        chart = None
        if plots.plot_rounds(metric, out / name):
            chart = Chart(f"chart-rounds-{i}", name, f"{metric.metric} by round")
        sections.append({"metric": metric.metric, "chart": chart, "rows": [list(p) for p in metric.points]})
    return sections


def _training(curves: list[Curves], out: Path) -> list[tuple[str, Chart | None]]:
    """(metric, chart or None when no stage logged it) per training metric; empty when no stage was found."""
    if not curves:
        return []
    charts = []
    for metric, title in plots.TRAINING_METRICS:
        name = plots.training_png(metric)
        drawn = plots.plot_training(curves, metric, title, out / name)
        chart_id = "chart-" + name.removesuffix(".png").replace("_", "-")
        charts.append((metric, Chart(chart_id, name, f"{title} against the step") if drawn else None))
    return charts


def _mt_bench(singles: list[MTBenchResult], pairs: list[PairwiseResult], out: Path) -> dict:
    radar = None
    if singles and plots.plot_radar(singles, out / "mt_bench_radar.png"):
        radar = Chart("chart-mt-bench-radar", "mt_bench_radar.png", "MT-Bench radar chart by category")
    rows = [
        [m, s["turns"].get("1"), s["turns"].get("2"), s["score"], s["n_valid"], s["n_invalid"], r.label]
        for r in singles
        for m, s in r.summary.items()
    ]
    pair_tables = [
        (
            p.label,
            [
                [m, v["win"], v["loss"], v["tie"], v["win_rate_adjusted"]]
                for m, v in p.summary["models"].items()
            ],
        )
        for p in pairs
    ]
    return {"found": bool(singles or pairs), "radar": radar, "rows": rows, "pairs": pair_tables}


def _alpaca(results: list[AlpacaResult], out: Path) -> dict:
    if not results:
        return {"found": False, "chart": None, "rows": []}
    chart = None
    if plots.plot_win_rates(results, out / "alpaca_win_rates.png"):
        chart = Chart("chart-alpaca-win-rates", "alpaca_win_rates.png", "AlpacaEval win rates")
    rows = [
        [m, v["win_rate"], v["standard_error"], v["n_total"], ", ".join(v["reference"]), r.label]
        for r in results
        for m, v in r.summary["models"].items()
    ]
    return {"found": True, "chart": chart, "rows": rows}


def _percent(value: float | None) -> float | None:
    return None if value is None else 100 * value


def _votes(results: list[VoteResult], out: Path) -> dict:
    chart = None
    if results and plots.plot_vote_win_rates(results, out / "votes_win_rates.png"):
        chart = Chart("chart-votes-win-rates", "votes_win_rates.png", "Win rates from human votes")
    return {"chart": chart, "files": [_vote_file(r) for r in results]}


def _vote_file(result: VoteResult) -> dict:
    """One votes file's counts, win-rate rows and Bradley-Terry rows (strongest first)."""
    s, bt = result.summary, result.summary["bradley_terry"]
    rows = [
        [m, v["comparisons"], v["wins"], v["losses"], v["ties"], v["both_bad"]]
        + [_percent(v[k]) for k in ("win_rate", "ci_low", "ci_high")]
        for m, v in s["models"].items()
    ]
    bt_rows = [[m, b["rating"], b["strength"]] for m, b in (bt["models"].items() if bt else [])]
    bt_rows.sort(key=lambda row: -row[2])
    counts = (
        f"{s['votes']} votes: A {s['a']}, B {s['b']}, tie {s['tie']}, both bad {s['both_bad']}; "
        f"{s['same_model']} compared a model with itself (not in the win rates)"
        + (f"; {result.unreadable} unreadable lines skipped" if result.unreadable else "")
    )
    return {
        "label": result.label,
        "counts": counts,
        "rows": rows,
        "bt": bt_rows,
        "connected": bt["connected"] if bt else True,
        "prior": f"{bt['prior_ties']:g}" if bt else "",
    }
