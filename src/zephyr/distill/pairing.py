"""Choosing the pair for one prompt: chosen = the best-scored completion, rejected = a seeded random other.

Kept apart from the `binarize` stage so worker processes import only this (and not the config
machinery): the choice depends on the row, the rules and the seed, never on the process doing it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from zephyr.data.schemas import prompt_id_of
from zephyr.distill.principles import stable_rng
from zephyr.distill.records import check_schema
from zephyr.distill.rubrics import ASPECTS
from zephyr.errors import DataError

SCORE_FIELDS = ("fine-grained_score", "overall_score", *ASPECTS)


@dataclass(frozen=True)
class PairRules:
    """What decides a pair (see BinarizeConfig for each setting)."""

    score_field: str = "fine-grained_score"
    ties: str = "keep"
    min_score_gap: float = 0.0
    exclude_sources: tuple[str, ...] = field(default_factory=tuple)
    seed: int = 42


def completion_score(completion: Any, score_field: str) -> float | None:
    """A completion's score, or None when it has no valid one. Reads our rows and UltraFeedback's
    (``fine-grained_score``; ``annotations.<aspect>.Rating`` as a string, "N/A" when unrated)."""
    if not isinstance(completion, dict):
        return None
    if score_field in ASPECTS:
        return _aspect_rating(completion, score_field)
    value = completion.get(score_field)
    if value is None and score_field == "fine-grained_score":
        ratings = [_aspect_rating(completion, a) for a in (completion.get("annotations") or {})]
        value = sum(ratings) / len(ratings) if ratings and None not in ratings else None
    return _number(value)


def _aspect_rating(completion: dict, aspect: str) -> float | None:
    annotation = (completion.get("annotations") or {}).get(aspect)
    if not isinstance(annotation, dict):
        return None
    return _number(annotation.get("rating", annotation.get("Rating")))


def _number(value: Any) -> float | None:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None  # "N/A"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def prompt_of(row: dict) -> list[dict]:
    """The prompt messages of a rated row: ``messages`` (ours) or ``prompt``/``instruction`` text."""
    messages = row.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        return [{"role": m["role"], "content": m["content"]} for m in messages]
    text = row.get("prompt") if isinstance(row.get("prompt"), str) else row.get("instruction")
    if not isinstance(text, str) or not text.strip():
        raise DataError("has no prompt (`messages`, `prompt` or `instruction`)", field="prompt")
    return [{"role": "user", "content": text}]


def pair_row(row: dict, cfg: PairRules) -> tuple[dict | None, str]:
    """The preference pair of one rated row, or None and the reason it was dropped."""
    prompt = prompt_of(row)
    prompt_id = str(row.get("prompt_id") or prompt_id_of(prompt))
    if row.get("source") in cfg.exclude_sources:
        return None, "excluded_source"
    scored = []
    for c in row.get("completions") or []:
        score = completion_score(c, cfg.score_field)
        if score is not None and isinstance(c.get("response"), str) and c["response"].strip():
            scored.append((score, c["response"]))
    if len(scored) < 2:
        return None, "too_few_ratings"
    best = max(range(len(scored)), key=lambda i: (scored[i][0], -i))  # the first of the top scores
    top = scored[best][0]
    candidates = [
        i
        for i, (s, _) in enumerate(scored)
        if i != best and top - s >= cfg.min_score_gap and (cfg.ties == "keep" or s < top)
    ]
    if not candidates:
        return None, "only_ties" if all(s == top for s, _ in scored) else "below_min_score_gap"
    worse = stable_rng("binarize", cfg.seed, prompt_id).choice(candidates)
    chosen = prompt + [{"role": "assistant", "content": scored[best][1]}]
    rejected = prompt + [{"role": "assistant", "content": scored[worse][1]}]
    pair = {
        "prompt": prompt[-1]["content"],
        "prompt_id": prompt_id,
        "chosen": chosen,
        "rejected": rejected,
        "messages": chosen,
        "score_chosen": top,
        "score_rejected": scored[worse][0],
    }
    return pair, "tie" if scored[worse][0] == top else "pair"


def pair_rows(args: tuple[list[tuple[dict, Any]], PairRules]) -> list[tuple[dict | None, str]]:
    """pair_row over ``(location, row)`` items; a malformed row gives ``(None, "bad_row: <why>")``.
    The worker entry of multi-process binarization (top level, so spawned processes can import it)."""
    rows, cfg = args
    out = []
    for loc, row in rows:
        try:
            check_schema(row, loc)
            out.append(pair_row(row, cfg))
        except DataError as err:
            out.append((None, f"bad_row: {DataError(err.reason, field=err.field, **loc)}"))
    return out
