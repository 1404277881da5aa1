"""Score arithmetic for MT-Bench and AlpacaEval, kept free of I/O so each rule is checkable by hand.

MT-Bench single grading (FastChat's show_result): rows scored -1 (the judge gave no rating) are
dropped, and so are ratings outside MT-Bench's 1-10 scale (a judge that writes `[[42]]` did not follow
the prompt; FastChat would average it in); each turn's score is the mean of its valid rows, and the model's MT-Bench score is the mean
of *all* valid rows pooled, not the mean of the two turn means (they differ when turns lose
different numbers of rows).

MT-Bench pairwise: rows where either game is an error are dropped; a pair whose two games (positions
swapped) disagree, or that the first game calls a tie, is a tie for both models;
win_rate_adjusted = (win + 0.5 tie) / (win + loss + tie).

AlpacaEval: preference 1 = the reference (output_1) is better, 2 = the model (output_2) is better,
1.5 = tie (AlpacaEval 1 files also write a tie as 0); continuous weights in [1, 2] come from
probability-weighted judges. Missing preferences are dropped. win rate = mean(preference - 1) x 100,
its standard error the standard error of that mean.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from zephyr.errors import DataError

NO_SCORE = -1
SCALE = (1, 10)  # MT-Bench's rating scale; anything else is an unreadable rating


def in_scale(score: float) -> bool:
    return SCALE[0] <= score <= SCALE[1]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass
class SingleSummary:
    """One model's single-grading results."""

    model: str
    score: float | None  # pooled mean of every valid per-turn score
    turns: dict[int, float]  # turn -> mean score
    categories: dict[str, float]  # category -> mean score (both turns pooled)
    n_valid: int
    invalid: list[tuple[object, int]] = field(default_factory=list)  # (question_id, turn) with no rating

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "score": self.score,
            "turns": {str(t): s for t, s in sorted(self.turns.items())},
            "categories": self.categories,
            "n_valid": self.n_valid,
            "n_invalid": len(self.invalid),
            "invalid": [{"question_id": q, "turn": t} for q, t in self.invalid],
        }


def summarize_single(
    records: Iterable[Mapping], categories: Mapping | None = None
) -> dict[str, SingleSummary]:
    """Per-model single-grading summary of FastChat judgment records (``model``, ``score``, ``turn``).

    ``categories`` maps question_id -> category for the per-category means; without it they are empty.
    """
    valid: dict[str, list[tuple[object, int, float]]] = defaultdict(list)
    invalid: dict[str, list[tuple[object, int]]] = defaultdict(list)
    for r in records:
        if r["score"] == NO_SCORE or not in_scale(float(r["score"])):
            invalid[r["model"]].append((r["question_id"], int(r["turn"])))
        else:
            valid[r["model"]].append((r["question_id"], int(r["turn"]), float(r["score"])))
    out = {}
    for model in sorted(set(valid) | set(invalid)):
        rows = valid[model]
        by_turn, by_cat = defaultdict(list), defaultdict(list)
        for qid, turn, score in rows:
            by_turn[turn].append(score)
            if categories is not None and qid in categories:
                by_cat[categories[qid]].append(score)
        out[model] = SingleSummary(
            model=model,
            score=_mean([s for _, _, s in rows]),
            turns={t: _mean(v) for t, v in by_turn.items()},
            categories={c: _mean(v) for c, v in by_cat.items()},
            n_valid=len(rows),
            invalid=sorted(invalid[model], key=lambda x: (str(x[0]), x[1])),
        )
    return out


@dataclass
class PairSummary:
    model: str
    win: int
    loss: int
    tie: int

    @property
    def total(self) -> int:
        return self.win + self.loss + self.tie

    @property
    def win_rate(self) -> float:
        return self.win / self.total

    @property
    def loss_rate(self) -> float:
        return self.loss / self.total

    @property
    def win_rate_adjusted(self) -> float:
        return (self.win + 0.5 * self.tie) / self.total

    def as_dict(self) -> dict:
        return {
            "model": self.model,
            "win": self.win,
            "loss": self.loss,
            "tie": self.tie,
            "win_rate": self.win_rate,
            "loss_rate": self.loss_rate,
            "win_rate_adjusted": self.win_rate_adjusted,
        }


def pair_outcome(g1_winner: str, g2_winner: str) -> str | None:
    """``model_1``, ``model_2`` or ``tie`` for one position-swapped pair; None when a game is an error.

    The winners are already mapped back to models (``g2``'s A is model_2)."""
    if "error" in (g1_winner, g2_winner):
        return None
    if g1_winner == "tie" or g1_winner != g2_winner:
        return "tie"
    return g1_winner


def summarize_pairwise(records: Iterable[Mapping], baseline: str | None = None) -> dict[str, PairSummary]:
    """Win/loss/tie counts per model from FastChat pairwise judgment records.

    With ``baseline``, only pairs involving it count and it is left out of the result.
    """
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for r in records:
        m1, m2 = r["model_1"], r["model_2"]
        if baseline is not None and baseline not in (m1, m2):
            continue
        outcome = pair_outcome(r["g1_winner"], r["g2_winner"])
        if outcome is None:
            continue
        if outcome == "tie":
            counts[m1][2] += 1
            counts[m2][2] += 1
        else:
            winner, loser = (m1, m2) if outcome == "model_1" else (m2, m1)
            counts[winner][0] += 1
            counts[loser][1] += 1
    return {m: PairSummary(m, *c) for m, c in sorted(counts.items()) if m != baseline}


# --- AlpacaEval --------------------------------------------------------------------------------------


def normalise_preference(value, where: str = "") -> float | None:
    """A preference as a float in [1, 2], or None when missing. 0 is AlpacaEval 1's old code for a tie."""
    if value is None or value == "":
        return None
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise DataError(f"`preference` must be a number in [1, 2] or null{where}; got {value!r}") from None
    if math.isnan(p):
        return None
    if p == 0:
        return 1.5
    if not 1 <= p <= 2:
        raise DataError(f"`preference` must be in [1, 2] (or 0 for a tie, or null){where}; got {value!r}")
    return p


@dataclass
class WinRate:
    win_rate: float | None  # percent; None when no annotation has a preference
    standard_error: float | None  # percent
    n_wins: int
    n_wins_base: int
    n_draws: int
    n_total: int  # valid annotations
    n_missing: int  # annotations with no preference, left out
    discrete_win_rate: float | None  # percent, each preference rounded to win / loss / tie first

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def win_rate(preferences: Iterable) -> WinRate:
    """AlpacaEval's win rate of output_2 over output_1, in percent, with its standard error."""
    raw = list(preferences)
    prefs = [p for p in (normalise_preference(v) for v in raw) if p is not None]
    n = len(prefs)
    if n == 0:  # every verdict was unreadable: there is no win rate, only the count of what was missing
        return WinRate(None, None, 0, 0, 0, 0, len(raw), None)
    values = [p - 1 for p in prefs]
    wins, draws = sum(p > 1.5 for p in prefs), sum(p == 1.5 for p in prefs)
    mean = sum(values) / n
    sem = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else float("nan")
    return WinRate(
        win_rate=mean * 100,
        standard_error=sem * 100,
        n_wins=wins,
        n_wins_base=n - wins - draws,
        n_draws=draws,
        n_total=n,
        n_missing=len(raw) - n,
        discrete_win_rate=(wins + 0.5 * draws) / n * 100,
    )
