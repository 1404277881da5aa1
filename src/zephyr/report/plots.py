"""The report's PNG charts, drawn with matplotlib's Agg backend (no display, no global pyplot state).

Each ``plot_*`` writes one PNG atomically and returns False, writing nothing, when there is nothing to
draw, so the page can say so instead of showing an empty chart.
"""

from __future__ import annotations

import math
from pathlib import Path

from zephyr.io import write_atomic
from zephyr.report.collect import AlpacaResult, Curves, MTBenchResult, RoundMetric, VoteResult

# (metric logged by the trainers, chart title); the PNG is training_<metric with / as _>.png.
TRAINING_METRICS = (
    ("loss", "Loss"),
    ("rewards/margins", "Reward margin"),
    ("rewards/accuracies", "Reward accuracy"),
)


def training_png(metric: str) -> str:
    return "training_" + metric.replace("/", "_") + ".png"


def _figure(width: float = 7.0, height: float = 4.0):
    # The object API with an explicit Agg canvas: safe in threads and on headless machines, and it never
    # depends on whichever backend pyplot or the environment (MPLBACKEND) would pick.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    # Through a temporary file renamed into place, so a crash never leaves a half-written PNG; the temp
    # name has no .png suffix, hence the explicit format.
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png"))


def plot_training(curves: list[Curves], metric: str, title: str, path: Path) -> bool:
    """Train and eval curves of ``metric`` for every stage that logged it; False when none did."""
    fig = _figure()
    ax = fig.add_subplot()
    drawn = False
    for i, c in enumerate(curves):
        for key, style in ((metric, "-"), (f"eval_{metric}", "--")):
            points = c.series.get(key)
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(
                xs,
                ys,
                style,
                color=f"C{i}",  # one colour per stage, train solid and eval dashed
                marker="o" if len(xs) < 30 else None,  # a short run's few points stay visible
                markersize=3,
                label=f"{c.stage} ({'eval' if key.startswith('eval_') else 'train'})",
            )
            drawn = True
    if not drawn:
        return False
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def plot_radar(results: list[MTBenchResult], path: Path) -> bool:
    """Per-category MT-Bench scores on a 0-10 radar, one polygon per model (and judgment file)."""
    from zephyr.evaluate.mt_bench import CATEGORY_ORDER

    entries = [
        (m if len(results) == 1 else f"{m} ({r.label})", s["categories"])
        for r in results
        for m, s in r.summary.items()
        if s["categories"]
    ]
    seen = {c for _, cats in entries for c in cats}
    categories = [c for c in CATEGORY_ORDER if c in seen] + sorted(seen - set(CATEGORY_ORDER))
    if len(categories) < 3:
        return False  # two axes make a line, not a radar; the score table still shows them
    angles = [2 * math.pi * i / len(categories) for i in range(len(categories))]
    fig = _figure(6.5, 6.0)
    ax = fig.add_subplot(projection="polar")
    for name, cats in entries:
        values = [cats.get(c, 0.0) for c in categories]
        ax.plot(angles + angles[:1], values + values[:1], linewidth=1.5, label=name)
        ax.fill(angles + angles[:1], values + values[:1], alpha=0.1)
    ax.set_xticks(angles, categories)
    ax.set_ylim(0, 10)
    ax.set_title("MT-Bench score by category")
    ax.legend(loc="upper right", bbox_to_anchor=(1.35, 1.1), fontsize=8)
    _save(fig, path)
    return True


def plot_win_rates(results: list[AlpacaResult], path: Path) -> bool:
    """AlpacaEval win rates as horizontal bars with standard-error whiskers, 50% marked."""
    rows = [
        (m if len(results) == 1 else f"{m} ({r.label})", rate["win_rate"], rate["standard_error"])
        for r in results
        for m, rate in r.summary["models"].items()
        if rate["win_rate"] is not None
    ]
    if not rows:
        return False
    fig = _figure(7.0, max(2.6, 1.2 + 0.5 * len(rows)))
    ax = fig.add_subplot()
    names, rates, errors = zip(*rows, strict=True)
    errors = [e if e == e else 0.0 for e in errors]  # one annotation has no standard error (NaN)
    ax.barh(range(len(rows)), rates, height=0.6, xerr=errors, color="#4c78a8", capsize=4)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()  # the first model on top, as in the table below the chart
    ax.set_xlim(0, 100)
    ax.axvline(50, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("win rate against the reference (%), ties count half")
    ax.set_title("AlpacaEval win rate")
    for i, (rate, error) in enumerate(zip(rates, errors, strict=True)):
        ax.text(
            1.5, i, f"{rate:.2f} ± {error:.2f}", va="center", fontsize=9, color="white", fontweight="bold"
        )
    _save(fig, path)
    return True


def plot_vote_win_rates(results: list[VoteResult], path: Path) -> bool:
    """Human-vote win rates as horizontal bars with their 95% Wilson intervals, 50% marked."""
    rows = [
        (
            m if len(results) == 1 else f"{m} ({r.label})",
            100 * v["win_rate"],
            100 * v["ci_low"],
            100 * v["ci_high"],
        )
        for r in results
        for m, v in r.summary["models"].items()
        if v["win_rate"] is not None
    ]
    if not rows:
        return False
    fig = _figure(7.0, max(2.6, 1.2 + 0.5 * len(rows)))
    ax = fig.add_subplot()
    names, rates, lows, highs = zip(*rows, strict=True)
    whiskers = [
        [r - lo for r, lo in zip(rates, lows, strict=True)],
        [hi - r for r, hi in zip(rates, highs, strict=True)],
    ]
    ax.barh(range(len(rows)), rates, height=0.6, xerr=whiskers, color="#59a14f", capsize=4)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()  # in the order of the table below the chart
    ax.set_xlim(0, 100)
    ax.axvline(50, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("win rate against the other models (%), ties count half; 95% Wilson interval")
    ax.set_title("Human votes")
    _save(fig, path)
    return True


def plot_rounds(series: RoundMetric, path: Path) -> bool:
    """One metric against the round (0: the starting model), with standard-error bars where known."""
    if not series.points:
        return False
    rounds, values, errors = zip(*series.points, strict=True)
    fig = _figure(6.0, 3.6)
    ax = fig.add_subplot()
    bars = [e if e is not None and e == e else 0.0 for e in errors]
    ax.errorbar(rounds, values, yerr=bars, marker="o", capsize=4, color="#e15759")
    for k, value in zip(rounds, values, strict=True):
        ax.annotate(
            f"{value:.1f}", (k, value), textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8
        )
    ax.set_xticks(sorted(set(rounds)))
    ax.set_xlabel("round (0: the starting model)")
    ax.set_ylabel(series.metric)
    ax.set_title(f"{series.metric} by round")
    ax.grid(alpha=0.3)
    _save(fig, path)
    return True
