"""Reading rated completions: the `zephyr feedback` rows and UltraFeedback's, one prompt with its scored replies.

`binarize` turns such a row into one preference pair; the ``unpaired`` row kind (KTO) turns each of its scored
completions into a desirable or undesirable row. Both read the scores and the prompt here, so they agree on
what a score is and which prompt a row has.
"""

from __future__ import annotations

import math
from typing import Any

from zephyr.errors import DataError

# The aspects a judge rates 1-5 (UltraFeedback's; ``zephyr.distill.rubrics`` holds their rubrics).
ASPECTS = ("instruction_following", "honesty", "truthfulness", "helpfulness")
# The scores a rated completion may carry besides its per-aspect ratings, and every score one can rank by.
SUMMARY_SCORES = ("fine-grained_score", "overall_score")
SCORE_FIELDS = (*SUMMARY_SCORES, *ASPECTS)
# The layout of the feedback rows these readers understand (``zephyr.distill.records.SCHEMA_VERSION``).
RATED_SCHEMA_VERSION = 1


def completion_score(completion: Any, score_field: str) -> float | None:
    """A completion's score, or None when it has no valid one. ``score_field`` is ``fine-grained_score`` (the
    mean of the 1-5 aspect ratings), ``overall_score`` (the 1-10 critique score) or an aspect name (that
    aspect's 1-5 rating). Reads our rows and UltraFeedback's (``annotations.<aspect>.Rating`` as a string,
    "N/A" when unrated)."""
    if not isinstance(completion, dict):
        return None
    if score_field not in SUMMARY_SCORES:
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


def is_rated_row(row: Any) -> bool:
    """True for a prompt row with its rated completions (a `completions` list), as feedback writes."""
    return isinstance(row, dict) and isinstance(row.get("completions"), list)


def check_rated_version(row: dict, loc: dict) -> None:
    """A feedback row written by a newer zephyr is refused rather than misread."""
    version = row.get("schema_version", RATED_SCHEMA_VERSION)
    if not isinstance(version, int) or version > RATED_SCHEMA_VERSION:
        raise DataError(
            f"has schema_version {version!r}; this zephyr reads versions up to {RATED_SCHEMA_VERSION}: "
            "upgrade zephyr to read it",
            field="schema_version",
            **loc,
        )
