"""`zephyr report RUN_DIR`: one HTML page with PNG charts summarising a run, viewable offline.

Everything is found under RUN_DIR by file name, so the page builds from whatever stages have run:

- training curves from every ``trainer_state.json`` (an output dir's own, else its latest checkpoint's):
  loss, rewards/margins and rewards/accuracies against the step, train and eval;
- MT-Bench from ``model_judgment/*_single.jsonl`` (categories from the ``question.jsonl`` beside it):
  a radar chart of per-category scores, one polygon per model, and the score table; pairwise
  judgments (``*_pair.jsonl``) as a win-rate table;
- AlpacaEval from every ``annotations.json``: win rates with standard-error bars;
- a sample of generations from ``model_answer/*.jsonl`` and ``model_outputs.json``.

Judgment and annotation files from elsewhere (another run, a published leaderboard) can be added with
``--mt-bench`` and ``--alpaca`` to compare models on the same charts.
"""

from __future__ import annotations

import html
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

from zephyr.errors import ConfigError, ZephyrError

log = logging.getLogger(__name__)

HELP = "Write an HTML report with charts: training curves, MT-Bench radar, AlpacaEval win rates, sample generations."
TRAINING_METRICS = (
    ("loss", "Loss"),
    ("rewards/margins", "Reward margin"),
    ("rewards/accuracies", "Reward accuracy"),
)


def add_arguments(parser) -> None:
    parser.add_argument("run_dir", help="The run directory to summarise (searched recursively)")
    parser.add_argument(
        "--output", default=None, help="Where index.html and the PNGs go (default: RUN_DIR/report)"
    )
    parser.add_argument(
        "--mt-bench",
        nargs="+",
        default=[],
        metavar="FILE",
        help="More MT-Bench judgment files (FastChat format) to compare",
    )
    parser.add_argument(
        "--alpaca", nargs="+", default=[], metavar="FILE", help="More AlpacaEval annotations files to compare"
    )
    parser.add_argument("--samples", type=int, default=4, help="Generations shown per source (default: 4)")
    parser.add_argument("--title", default=None, help="Page title (default: the run directory's name)")


def run(args, extra) -> int:
    path = report(args.run_dir, args.output, args.mt_bench, args.alpaca, args.samples, args.title)
    print(f"Report written to {path}")
    return 0


# --- gathering ----------------------------------------------------------------------------------------


@dataclass
class Curves:
    """One training stage's logged metrics: name -> [(step, value)], train and eval."""

    stage: str
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def _label(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root)) or path.name
    except ValueError:
        return str(path)


def _checkpoint_step(path: Path) -> int:
    suffix = path.parent.name.rpartition("-")[2]
    return int(suffix) if suffix.isdigit() else -1


def _state_files(run_dir: Path) -> list[Path]:
    """Each output dir's trainer_state.json, or its latest checkpoint's when it has none of its own."""
    chosen: dict[Path, Path] = {}
    for path in sorted(run_dir.rglob("trainer_state.json")):
        if not path.parent.name.startswith("checkpoint-"):
            chosen[path.parent] = path
            continue
        owner = path.parent.parent
        if (owner / "trainer_state.json").is_file():
            continue
        if owner not in chosen or _checkpoint_step(path) > _checkpoint_step(chosen[owner]):
            chosen[owner] = path
    return [chosen[k] for k in sorted(chosen)]


def training_curves(run_dir: Path) -> list[Curves]:
    from zephyr.evaluate.records import read_json

    out = []
    for path in _state_files(run_dir):
        try:
            history = read_json(path).get("log_history", [])
        except (ZephyrError, AttributeError) as exc:
            log.warning("Skipping %s: %s", path, exc)
            continue
        owner = path.parent.parent if path.parent.name.startswith("checkpoint-") else path.parent
        curves = Curves(_label(owner, run_dir))
        for entry in history:
            step = entry.get("step")
            for key, value in entry.items():
                if step is not None and isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    curves.series.setdefault(key, []).append((float(step), float(value)))
        out.append(curves)
    return out


@dataclass
class MTBenchResult:
    label: str
    summary: dict  # model -> SingleSummary.as_dict()
    path: Path


def mt_bench_results(run_dir: Path, extra: list[str]) -> tuple[list[MTBenchResult], list[tuple[str, dict]]]:
    """Single-grading summaries and pairwise summaries of every judgment file found or given."""
    from zephyr.evaluate.stages import score_judgments

    files = sorted(run_dir.rglob("model_judgment/*.jsonl")) + [Path(p) for p in extra]
    singles, pairs = [], []
    for path in files:
        try:
            result = score_judgments(str(path), None, None)
        except ZephyrError as exc:
            log.warning("Skipping %s: %s", path, exc)
            continue
        label = _label(path, run_dir)
        (singles if result["mode"] == "single" else pairs).append((label, result))
    return [MTBenchResult(label, r["models"], Path(r["judgment_file"])) for label, r in singles], pairs


def alpaca_results(run_dir: Path, extra: list[str]) -> list[tuple[str, dict]]:
    from zephyr.evaluate.alpaca import load_annotations
    from zephyr.evaluate.stages import alpaca_results as rates

    out = []
    for path in sorted(run_dir.rglob("annotations.json")) + [Path(p) for p in extra]:
        try:
            out.append((_label(path, run_dir), rates(load_annotations(path), str(path))))
        except ZephyrError as exc:
            log.warning("Skipping %s: %s", path, exc)
    return out


def generation_samples(run_dir: Path, n: int) -> list[tuple[str, list[tuple[list[str], list[str]]]]]:
    """(source, [(prompts, replies)]) from MT-Bench answer files and AlpacaEval outputs, ``n`` per source."""
    from zephyr.evaluate.alpaca import load_outputs
    from zephyr.evaluate.mt_bench import answer_turns, load_answers, load_questions

    out = []
    for path in sorted(run_dir.rglob("model_answer/*.jsonl")):
        question_file = path.parent.parent / "question.jsonl"
        try:
            questions = (
                {q.question_id: q for q in load_questions(question_file)} if question_file.is_file() else {}
            )
            answers = load_answers(path)
        except ZephyrError as exc:
            log.warning("Skipping %s: %s", path, exc)
            continue
        picked = random.Random(0).sample(sorted(answers, key=str), min(n, len(answers)))
        items = [
            (list(questions[q].turns) if q in questions else [f"question {q}"], answer_turns(answers[q]))
            for q in picked
        ]
        out.append((f"MT-Bench answers of {path.stem}", items))
    for path in sorted(run_dir.rglob("model_outputs.json")):
        try:
            outputs = load_outputs(path)
        except ZephyrError as exc:
            log.warning("Skipping %s: %s", path, exc)
            continue
        picked = random.Random(0).sample(outputs, min(n, len(outputs)))
        out.append(
            (
                f"AlpacaEval outputs of {picked[0]['generator'] if picked else path.parent.name}",
                [([o["instruction"]], [o["output"]]) for o in picked],
            )
        )
    return out


# --- charts -------------------------------------------------------------------------------------------


def _figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.figure import Figure  # the object API: no global pyplot state, no display needed

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def plot_training(curves: list[Curves], metric: str, title: str, path: Path) -> bool:
    """Train and eval curves of ``metric`` for every stage that logged it; False when none did."""
    fig = _figure()
    ax = fig.add_subplot()
    drawn = False
    for i, c in enumerate(curves):
        for key, style in ((metric, "-"), (f"eval_{metric}", "--")):
            points = c.series.get(key)
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(
                    xs,
                    ys,
                    style,
                    color=f"C{i}",
                    marker="o" if len(xs) < 30 else None,
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
    fig.savefig(path)
    return True


def plot_radar(results: list[MTBenchResult], path: Path) -> bool:
    """Per-category MT-Bench scores on a 0-10 radar, one polygon per model (and judgment file)."""
    import math

    from zephyr.evaluate.mt_bench import CATEGORY_ORDER

    entries = [
        (f"{m}" if len(results) == 1 else f"{m} ({r.label})", s["categories"])
        for r in results
        for m, s in r.summary.items()
        if s["categories"]
    ]
    seen = {c for _, cats in entries for c in cats}
    categories = [c for c in CATEGORY_ORDER if c in seen] + sorted(seen - set(CATEGORY_ORDER))
    if len(categories) < 3:
        return False
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
    fig.savefig(path)
    return True


def plot_win_rates(results: list[tuple[str, dict]], path: Path) -> bool:
    rows = [
        (f"{m}" if len(results) == 1 else f"{m} ({label})", r["win_rate"], r["standard_error"])
        for label, res in results
        for m, r in res["models"].items()
        if r["win_rate"] is not None
    ]
    if not rows:
        return False
    fig = _figure(7.0, max(2.6, 1.2 + 0.5 * len(rows)))
    ax = fig.add_subplot()
    names, rates, errors = zip(*rows, strict=True)
    errors = [e if e == e else 0.0 for e in errors]  # one annotation has no standard error (NaN)
    ax.barh(range(len(rows)), rates, height=0.6, xerr=errors, color="#4c78a8", capsize=4)
    ax.set_yticks(range(len(rows)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.axvline(50, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("win rate against the reference (%), ties count half")
    ax.set_title("AlpacaEval win rate")
    for i, (rate, error) in enumerate(zip(rates, errors, strict=True)):
        ax.text(
            1.5, i, f"{rate:.2f} ± {error:.2f}", va="center", fontsize=9, color="white", fontweight="bold"
        )
    fig.savefig(path)
    return True


# --- the page -----------------------------------------------------------------------------------------

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; color: #222; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; margin-top: 2rem; }
figure { margin: 1rem 0; } figure img { max-width: 100%; border: 1px solid #eee; }
table { border-collapse: collapse; margin: 0.5rem 0; } td, th { border: 1px solid #ddd; padding: 0.2rem 0.6rem; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } .note { color: #777; }
.sample { border: 1px solid #e4e4e4; border-radius: 6px; padding: 0.5rem 0.8rem; margin: 0.6rem 0; }
.turn { white-space: pre-wrap; margin: 0.3rem 0; } .user { color: #1f4e8c; } .assistant { color: #222; }
"""


def _table(headers: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if isinstance(v, float):
            return f'<td class="num">{v:.2f}</td>'
        if isinstance(v, int):
            return f'<td class="num">{v}</td>'
        return f"<td>{html.escape('-' if v is None else str(v))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure_html(chart_id: str, file: str, alt: str) -> str:
    return f'<figure id="{chart_id}"><img src="{file}" alt="{html.escape(alt)}"></figure>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _training_section(curves: list[Curves], out: Path) -> str:
    parts = ["<h2>Training</h2>"]
    if not curves:
        return parts[0] + _note("No trainer_state.json found under the run directory.")
    for metric, title in TRAINING_METRICS:
        name = "training_" + metric.replace("/", "_") + ".png"
        if plot_training(curves, metric, title, out / name):
            parts.append(
                _figure_html("chart-" + name[:-4].replace("_", "-"), name, f"{title} against the step")
            )
        else:
            parts.append(_note(f"No stage logged {metric}."))
    return "".join(parts)


def _mt_bench_section(singles: list[MTBenchResult], pairs: list[tuple[str, dict]], out: Path) -> str:
    parts = ["<h2>MT-Bench</h2>"]
    if not singles and not pairs:
        return parts[0] + _note("No MT-Bench judgments found (model_judgment/*.jsonl).")
    if singles and plot_radar(singles, out / "mt_bench_radar.png"):
        parts.append(
            _figure_html("chart-mt-bench-radar", "mt_bench_radar.png", "MT-Bench radar chart by category")
        )
    rows = [
        [m, s["turns"].get("1"), s["turns"].get("2"), s["score"], s["n_valid"], s["n_invalid"], r.label]
        for r in singles
        for m, s in r.summary.items()
    ]
    if rows:
        parts.append(
            _table(["model", "turn 1", "turn 2", "MT-Bench", "rated", "no rating", "judgments"], rows)
        )
    for label, res in pairs:
        parts.append(f"<h3>Pairwise: {html.escape(label)}</h3>")
        parts.append(
            _table(
                ["model", "win", "loss", "tie", "win_rate_adjusted"],
                [
                    [m, p["win"], p["loss"], p["tie"], p["win_rate_adjusted"]]
                    for m, p in res["models"].items()
                ],
            )
        )
    return "".join(parts)


def _alpaca_section(results: list[tuple[str, dict]], out: Path) -> str:
    parts = ["<h2>AlpacaEval</h2>"]
    if not results:
        return parts[0] + _note("No AlpacaEval annotations found (annotations.json).")
    if plot_win_rates(results, out / "alpaca_win_rates.png"):
        parts.append(_figure_html("chart-alpaca-win-rates", "alpaca_win_rates.png", "AlpacaEval win rates"))
    rows = [
        [m, r["win_rate"], r["standard_error"], r["n_total"], ", ".join(r["reference"]), label]
        for label, res in results
        for m, r in res["models"].items()
    ]
    parts.append(_table(["model", "win rate", "standard error", "annotations", "reference", "file"], rows))
    return "".join(parts)


def _samples_section(samples) -> str:
    parts = ["<h2>Sample generations</h2>"]
    if not samples:
        return parts[0] + _note("No generations found (model_answer/*.jsonl, model_outputs.json).")
    for source, items in samples:
        parts.append(f"<h3>{html.escape(source)}</h3>")
        for prompts, replies in items:
            turns = []
            for i, prompt in enumerate(prompts):
                turns.append(f'<div class="turn user"><b>User:</b> {html.escape(prompt)}</div>')
                if i < len(replies):
                    turns.append(
                        f'<div class="turn assistant"><b>Assistant:</b> {html.escape(replies[i])}</div>'
                    )
            parts.append(f'<div class="sample">{"".join(turns)}</div>')
    return "".join(parts)


def report(
    run_dir: str | Path,
    output: str | Path | None = None,
    mt_bench: list[str] = (),
    alpaca: list[str] = (),
    samples: int = 4,
    title: str | None = None,
) -> Path:
    """Build the report for ``run_dir``; returns the path of index.html."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"Run directory not found: {run_dir}")
    out = Path(output) if output else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    singles, pairs = mt_bench_results(run_dir, list(mt_bench))
    sections = [
        _training_section(training_curves(run_dir), out),
        _mt_bench_section(singles, pairs, out),
        _alpaca_section(alpaca_results(run_dir, list(alpaca)), out),
        _samples_section(generation_samples(run_dir, samples)),
    ]
    name = html.escape(title or run_dir.resolve().name)
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{name}</title>'
        f"<style>{STYLE}</style></head><body><h1>{name}</h1>"
        f"{_note(f'zephyr report of {run_dir}')}{''.join(sections)}</body></html>"
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
