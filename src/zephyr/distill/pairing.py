"""Choosing the pair for one prompt: chosen = the best-scored completion, rejected = a seeded random other.

Kept apart from the `binarize` stage so worker processes import only this (and not the config
machinery): the choice depends on the row, the rules and the seed, never on the process doing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from zephyr.data.ratings import SCORE_FIELDS, completion_score, prompt_of
from zephyr.data.schemas import prompt_id_of
from zephyr.distill.principles import stable_rng
from zephyr.distill.records import check_schema
from zephyr.errors import DataError

__all__ = ["SCORE_FIELDS", "PairRules", "completion_score", "pair_row", "pair_rows", "prompt_of"]


@dataclass(frozen=True)
class PairRules:
    """What decides a pair (see BinarizeConfig for each setting)."""

    score_field: str = "fine-grained_score"
    ties: str = "keep"
    min_score_gap: float = 0.0
    exclude_sources: tuple[str, ...] = field(default_factory=tuple)
    seed: int = 42


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
