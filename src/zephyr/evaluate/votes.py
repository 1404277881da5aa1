"""Tallies of human votes (the compare page of `zephyr serve`): win rates with confidence intervals, and
Bradley-Terry strengths when more than two models were compared.

- A model's **win rate** counts its comparisons against *another* model: wins, plus half of each tie, over
  wins + losses + ties. Both-bad votes say nothing about which reply is better and are left out (counted
  apart), as are comparisons of a model with itself (two samples of one model).
- The **95% interval** is Wilson's score interval on that rate with n = wins + losses + ties (ties as half
  a win each: slightly wide when there are many ties, never outside [0, 1], sane at 0 or n wins).
- **Bradley-Terry** strengths are the maximum-likelihood fit of P(i beats j) = p_i / (p_i + p_j), by the
  minorization-maximization iteration of Hunter (2004, "MM algorithms for generalized Bradley-Terry
  models"), ties as half a win to each side. ``prior_ties`` virtual ties between every two models that
  met keep a model with no win finite (default 1: it fades once each pair has tens of votes). Strengths
  are scaled to a geometric mean of 1 and also shown as a rating, 1000 + 400 log10(p), Elo's scale; they
  compare models only within a group joined by votes (``connected`` says whether all models are one).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from zephyr.distill.votes import Vote

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def wilson_interval(successes: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion (``successes`` may be fractional: ties as halves)."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)


@dataclass
class ModelVotes:
    """One model's record against other models."""

    wins: int = 0
    losses: int = 0
    ties: int = 0
    both_bad: int = 0

    @property
    def decided(self) -> int:  # the comparisons the win rate is over
        return self.wins + self.losses + self.ties

    @property
    def win_rate(self) -> float | None:
        return (self.wins + self.ties / 2) / self.decided if self.decided else None

    def as_dict(self) -> dict:
        low, high = wilson_interval(self.wins + self.ties / 2, self.decided)
        return {
            "wins": self.wins,
            "losses": self.losses,
            "ties": self.ties,
            "both_bad": self.both_bad,
            "comparisons": self.decided,
            "win_rate": self.win_rate,
            "ci_low": low if self.decided else None,
            "ci_high": high if self.decided else None,
        }


def tally_votes(votes: Iterable[Vote], prior_ties: float = 1.0) -> dict:
    """Counts, per-model win rates with 95% Wilson intervals and, with more than two models, Bradley-Terry
    strengths (see the module docstring). A comparison id seen twice counts once."""
    models: dict[str, ModelVotes] = {}
    wins: dict[tuple[str, str], float] = {}  # (i, j) -> wins of i over j, ties as halves
    counts = {"votes": 0, "a": 0, "b": 0, "tie": 0, "both_bad": 0, "same_model": 0}
    seen = set()
    for vote in votes:
        if vote.id in seen:
            continue
        seen.add(vote.id)
        counts["votes"] += 1
        counts[vote.choice] += 1
        a, b = vote.model_a, vote.model_b
        if a == b:
            counts["same_model"] += 1
            continue
        ma, mb = models.setdefault(a, ModelVotes()), models.setdefault(b, ModelVotes())
        if vote.choice == "both_bad":
            ma.both_bad += 1
            mb.both_bad += 1
            continue
        share = {"a": (1.0, 0.0), "b": (0.0, 1.0), "tie": (0.5, 0.5)}[vote.choice]
        wins[a, b] = wins.get((a, b), 0.0) + share[0]
        wins[b, a] = wins.get((b, a), 0.0) + share[1]
        if vote.choice == "tie":
            ma.ties += 1
            mb.ties += 1
        else:
            winner, loser = (ma, mb) if vote.choice == "a" else (mb, ma)
            winner.wins += 1
            loser.losses += 1
    result = {**counts, "models": {m: v.as_dict() for m, v in sorted(models.items())}, "bradley_terry": None}
    rated = sorted({m for pair in wins for m in pair})
    if len(rated) > 2:
        strengths = bradley_terry(wins, prior_ties=prior_ties)
        result["bradley_terry"] = {
            "models": {m: {"strength": s, "rating": rating(s)} for m, s in strengths.items()},
            "connected": connected(wins),
            "prior_ties": prior_ties,
        }
    return result


def rating(strength: float) -> float | None:
    """A strength on Elo's scale: 1000 for the geometric mean, +400 for ten times stronger."""
    return 1000 + 400 * math.log10(strength) if strength > 0 else None


def bradley_terry(
    wins: Mapping[tuple[str, str], float],
    *,
    prior_ties: float = 0.0,
    max_iterations: int = 10_000,
    tolerance: float = 1e-10,
) -> dict[str, float]:
    """Bradley-Terry strengths from ``wins[(i, j)]`` (i's wins over j, fractional for ties), by Hunter's MM
    update p_i <- W_i / sum_j n_ij / (p_i + p_j), scaled to a geometric mean of 1 after each step.
    ``prior_ties`` adds that many virtual ties between every two models that met."""
    models = sorted({m for pair in wins for m in pair})
    games: dict[tuple[str, str], float] = {}  # n_ij, symmetric
    won = dict.fromkeys(models, 0.0)  # W_i
    for (i, j), w in wins.items():
        if i == j:
            continue
        games[i, j] = games.get((i, j), 0.0) + w
        games[j, i] = games.get((j, i), 0.0) + w
        won[i] += w
    for i, j in [pair for pair in games if pair[0] < pair[1]]:
        for a, b in ((i, j), (j, i)):
            games[a, b] += prior_ties
            won[a] += prior_ties / 2
    opponents = {m: [(j, n) for (i, j), n in games.items() if i == m and n > 0] for m in models}
    p = dict.fromkeys(models, 1.0)
    for _ in range(max_iterations):
        new = {
            i: won[i] / denominator
            if (denominator := sum(n / (p[i] + p[j]) for j, n in opponents[i]))
            else p[i]
            for i in models
        }
        positive = [v for v in new.values() if v > 0]
        mean = math.exp(sum(map(math.log, positive)) / len(positive)) if positive else 1.0
        new = {m: v / mean for m, v in new.items()}
        change = max(abs(math.log(new[m] / p[m])) if new[m] > 0 and p[m] > 0 else 0.0 for m in models)
        p = new
        if change < tolerance:
            break
    return p


def connected(wins: Mapping[tuple[str, str], float]) -> bool:
    """Whether every model is linked to every other through models they met (else strengths of separate
    groups are on unrelated scales)."""
    neighbours: dict[str, set[str]] = {}
    for i, j in wins:
        neighbours.setdefault(i, set()).add(j)
        neighbours.setdefault(j, set()).add(i)
    if not neighbours:
        return True
    start = next(iter(neighbours))
    seen, todo = {start}, [start]
    while todo:
        for j in neighbours[todo.pop()] - seen:
            seen.add(j)
            todo.append(j)
    return len(seen) == len(neighbours)
