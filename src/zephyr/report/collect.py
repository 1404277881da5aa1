"""Reading a run directory into plain dataclasses: what the charts and the page are drawn from.

Everything is found under the run directory by file name, so a report builds from whatever stages have
run; a file that cannot be read is skipped with a warning rather than failing the whole page.
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from zephyr.errors import ZephyrError
from zephyr.io import read_json

log = logging.getLogger(__name__)


@dataclass
class Curves:
    """One training stage's logged metrics: name -> [(step, value)], train and eval."""

    stage: str
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


@dataclass
class MTBenchResult:
    """The single-grading summary of one judgment file."""

    label: str
    summary: dict  # model -> SingleSummary.as_dict()
    path: Path


@dataclass
class PairwiseResult:
    """The pairwise summary of one judgment file, as ``score_judgments`` returns it."""

    label: str
    summary: dict  # has "models": model -> {win, loss, tie, win_rate_adjusted, ...}


@dataclass
class AlpacaResult:
    """The win rates of one AlpacaEval annotations file."""

    label: str
    summary: dict  # has "models": model -> {win_rate, standard_error, n_total, reference, ...}


@dataclass
class VoteResult:
    """The tally of one votes file, as ``zephyr.evaluate.votes.tally_votes`` returns it."""

    label: str
    summary: dict  # has "models": model -> {wins, losses, ties, win_rate, ci_low, ...}, "bradley_terry"
    unreadable: int = 0


@dataclass
class Sample:
    """One conversation: the user's turns and the model's replies (there may be fewer replies)."""

    prompts: list[str]
    replies: list[str]


@dataclass
class SampleGroup:
    """A few generations from one source (an MT-Bench answer file, an AlpacaEval outputs file)."""

    source: str
    samples: list[Sample]


@dataclass
class RoundMetric:
    """One evaluation metric across the iterative rounds: (round, value, standard error or None)."""

    metric: str
    points: list[tuple[int, float, float | None]]


@dataclass
class RunResults:
    """Everything a report shows, gathered before anything is drawn."""

    curves: list[Curves]
    mt_bench: list[MTBenchResult]
    pairwise: list[PairwiseResult]
    alpaca: list[AlpacaResult]
    samples: list[SampleGroup]
    votes: list[VoteResult] = field(default_factory=list)
    votes_given: bool = False  # the page has a votes section only when votes files were asked for
    rounds: list[RoundMetric] = field(default_factory=list)


def collect(
    run_dir: Path, mt_bench: list[str], alpaca: list[str], samples: int, votes: list[str] = ()
) -> RunResults:
    singles, pairs = mt_bench_results(run_dir, mt_bench)
    return RunResults(
        curves=training_curves(run_dir),
        mt_bench=singles,
        pairwise=pairs,
        alpaca=alpaca_results(run_dir, alpaca),
        samples=generation_samples(run_dir, samples),
        votes=vote_results(run_dir, list(votes)),
        votes_given=bool(votes),
        rounds=round_results(run_dir),
    )


def _label(path: Path, root: Path) -> str:
    """A path as shown on the page: relative to the run when inside it, so the page does not leak /home."""
    try:
        return str(path.relative_to(root)) or path.name
    except ValueError:
        return str(path)


# --- training curves ----------------------------------------------------------------------------------


def _checkpoint_step(path: Path) -> int:
    suffix = path.parent.name.rpartition("-")[2]
    return int(suffix) if suffix.isdigit() else -1


def _state_files(run_dir: Path) -> list[Path]:
    """Each output dir's trainer_state.json, or its latest checkpoint's when it has none of its own."""
    chosen: dict[Path, Path] = {}
    for path in sorted(run_dir.rglob("trainer_state.json")):
        if any(part.startswith(".") for part in path.relative_to(run_dir).parts[:-1]):
            continue  # staging dirs and checkpoints set aside as incomplete are not runs of their own
        if not path.parent.name.startswith("checkpoint-"):
            chosen[path.parent] = path
            continue
        owner = path.parent.parent
        if (owner / "trainer_state.json").is_file():
            continue  # the stage's own final state already holds every checkpoint's history
        if owner not in chosen or _checkpoint_step(path) > _checkpoint_step(chosen[owner]):
            chosen[owner] = path
    return [chosen[k] for k in sorted(chosen)]


def training_curves(run_dir: Path) -> list[Curves]:
    out = []
    for path in _state_files(run_dir):
        try:
            history = read_json(path).get("log_history", [])
        except (ZephyrError, AttributeError) as exc:
            log.warning("Skipping %s: %s", path, exc)
            continue
        # A checkpoint stands for its stage: the curve is labelled by the stage's directory.
        owner = path.parent.parent if path.parent.name.startswith("checkpoint-") else path.parent
        curves = Curves(_label(owner, run_dir))
        for entry in history:
            step = entry.get("step")
            for key, value in entry.items():
                if step is not None and isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    curves.series.setdefault(key, []).append((float(step), float(value)))
        out.append(curves)
    return out


# --- evaluations --------------------------------------------------------------------------------------


def mt_bench_results(run_dir: Path, extra: list[str]) -> tuple[list[MTBenchResult], list[PairwiseResult]]:
    """Single-grading summaries and pairwise summaries of every judgment file found or given."""
    # Lazy, and the only line naming where scoring lives, so a move of it in evaluate touches just this.
    from zephyr.evaluate.mt_bench_matches import score_judgments

    files = sorted(run_dir.rglob("model_judgment/*.jsonl")) + [Path(p) for p in extra]
    singles, pairs = [], []
    for path in files:
        try:
            result = score_judgments(str(path), None, None)
        except ZephyrError as exc:
            log.warning("Skipping %s: %s", path, exc)
            continue
        label = _label(path, run_dir)
        if result["mode"] == "single":
            singles.append(MTBenchResult(label, result["models"], Path(result["judgment_file"])))
        else:
            pairs.append(PairwiseResult(label, result))
    return singles, pairs


def alpaca_results(run_dir: Path, extra: list[str]) -> list[AlpacaResult]:
    from zephyr.evaluate.alpaca import load_annotations

    # Lazy, and the only line naming where win rates are computed (see mt_bench_results).
    from zephyr.evaluate.benchmarks import alpaca_results as win_rates

    out = []
    for path in sorted(run_dir.rglob("annotations.json")) + [Path(p) for p in extra]:
        try:
            out.append(AlpacaResult(_label(path, run_dir), win_rates(load_annotations(path), str(path))))
        except ZephyrError as exc:
            log.warning("Skipping %s: %s", path, exc)
    return out


def vote_results(run_dir: Path, paths: list[str]) -> list[VoteResult]:
    """The tally of each votes file given (a file that cannot be read is skipped with a warning)."""
    from zephyr.distill.votes import read_votes
    from zephyr.evaluate.votes import tally_votes

    out = []
    for path in map(Path, paths):
        try:
            votes, problems = read_votes(path)
        except ZephyrError as exc:
            log.warning("Skipping %s: %s", path, exc)
            continue
        if problems:
            log.warning("%s: %d unreadable line(s); the first: %s", path, len(problems), problems[0])
        out.append(VoteResult(_label(path, run_dir), tally_votes(votes), len(problems)))
    return out


# --- iterative rounds ---------------------------------------------------------------------------------

ROUND_DIR = re.compile(r"round(\d+)")


def round_results(run_dir: Path) -> list[RoundMetric]:
    """Each metric that round<k>/eval holds, per round (round 0 is the starting model)."""
    rounds = sorted(
        (int(m.group(1)), path)
        for path in run_dir.glob("round*")
        if path.is_dir() and (m := ROUND_DIR.fullmatch(path.name))
    )
    series: dict[str, list[tuple[int, float, float | None]]] = {}
    for k, path in rounds:
        for metric, value, error in _round_metrics(path / "eval"):
            series.setdefault(metric, []).append((k, value, error))
    return [RoundMetric(metric, points) for metric, points in series.items()]


def _round_metrics(eval_dir: Path):
    """(metric, value, standard error) of every result one round's eval wrote."""
    if not eval_dir.is_dir():
        return
    for path in sorted(eval_dir.glob("rules/*/results.json")):
        try:
            r = read_json(path)
            yield "rule satisfaction (%)", 100 * r["satisfied"], 100 * r["satisfied_se"]
        except (ZephyrError, KeyError, TypeError) as exc:
            log.warning("Skipping %s: %s", path, exc)
    for result in alpaca_results(eval_dir, []):
        for rate in result.summary["models"].values():
            if rate["win_rate"] is not None:
                yield "AlpacaEval win rate (%)", rate["win_rate"], rate["standard_error"]
    singles, _ = mt_bench_results(eval_dir, [])
    for result in singles:
        for summary in result.summary.values():
            if summary["score"] is not None:
                yield "MT-Bench score", summary["score"], None
    for path in sorted(eval_dir.glob("prefs/*.json")):
        try:
            accuracy = read_json(path)["metrics"].get("rewards/accuracies")
        except (ZephyrError, KeyError, TypeError, AttributeError) as exc:
            log.warning("Skipping %s: %s", path, exc)
            continue
        if accuracy is not None:
            yield "reward accuracy on the round's held-out pairs (%)", 100 * accuracy, None


# --- generations --------------------------------------------------------------------------------------


def generation_samples(run_dir: Path, n: int) -> list[SampleGroup]:
    """``n`` generations per source, from MT-Bench answer files and AlpacaEval outputs."""
    return _mt_bench_samples(run_dir, n) + _alpaca_samples(run_dir, n)


def _pick(items: list, n: int) -> list:
    # A fixed seed: the same run gives the same page, so two reports can be compared side by side.
    return random.Random(0).sample(items, min(n, len(items)))


def _mt_bench_samples(run_dir: Path, n: int) -> list[SampleGroup]:
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
        picked = _pick(sorted(answers, key=str), n)
        items = [
            Sample(
                list(questions[q].turns) if q in questions else [f"question {q}"], answer_turns(answers[q])
            )
            for q in picked
        ]
        out.append(SampleGroup(f"MT-Bench answers of {path.stem}", items))
    return out


def _alpaca_samples(run_dir: Path, n: int) -> list[SampleGroup]:
    from zephyr.evaluate.alpaca import load_outputs

    out = []
    for path in sorted(run_dir.rglob("model_outputs.json")):
        try:
            outputs = load_outputs(path)
        except ZephyrError as exc:
            log.warning("Skipping %s: %s", path, exc)
            continue
        picked = _pick(outputs, n)
        model = picked[0]["generator"] if picked else path.parent.name
        out.append(
            SampleGroup(
                f"AlpacaEval outputs of {model}", [Sample([o["instruction"]], [o["output"]]) for o in picked]
            )
        )
    return out
