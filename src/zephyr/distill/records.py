"""The rows the distillation stages pass on disk, and the file handling that keeps them safe.

One row per prompt, in JSON Lines, with UltraFeedback's field names where it has them::

    {"schema_version": 1, "prompt_id": "<sha256>", "prompt": "<last user turn>", "messages": [...],
     "category": "...", "completions": [
        {"model", "teacher", "principle", "custom_system_prompt", "temperature", "response",
         "finish_reason", "prompt_tokens", "completion_tokens",
         # added by `feedback`:
         "annotations": {aspect: {"rating": 1-5 | null, "rationale", "type", "error", "raw"}},
         "fine-grained_score": mean of the aspect ratings | null, "overall_score": 1-10 | null, "critique"}],
     # added by `feedback`:
     "judge": "<model id>", "judgments": [{"aspect", "order", "reply", "repair_reply", "error"}]}

The files themselves are written and resumed through ``zephyr.io`` (``RowLog``: one whole line per
finished row, a torn last line cut off before resuming).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from zephyr.errors import DataError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Prompt-row columns carried from the input to every later stage when present.
CARRIED = ("category", "source", "source_prompt_id", "question_id")


@dataclass
class Rating:
    """One aspect's verdict on one completion. ``rating`` None means the judge's reply could not be read:
    ``error`` says why and ``raw`` holds the judge's reply (and the repair reply), never a guess."""

    rating: int | None
    rationale: str | None = None
    type: list[int] | None = None  # truthfulness: hallucination types; helpfulness: informativeness types
    error: str | None = None
    raw: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None or k == "rating"}


@dataclass
class Completion:
    """One teacher reply, and after `feedback` its ratings and scores."""

    model: str
    teacher: str
    principle: str
    custom_system_prompt: str | None
    temperature: float
    response: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    annotations: dict[str, Rating] = field(default_factory=dict)
    fine_grained_score: float | None = None  # mean of the aspect ratings
    overall_score: float | None = None  # the 1-10 critique score
    critique: str | None = None

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in _COMPLETION_KEYS}
        if self.annotations:
            out["annotations"] = {aspect: r.to_json() for aspect, r in self.annotations.items()}
            out["fine-grained_score"] = self.fine_grained_score
            out["overall_score"] = self.overall_score
            out["critique"] = self.critique
        return out


_COMPLETION_KEYS = (
    "model",
    "teacher",
    "principle",
    "custom_system_prompt",
    "temperature",
    "response",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
)


@dataclass
class Judgment:
    """One judge call: ``order[k]`` is the completion shown as text k+1."""

    aspect: str
    order: list[int]
    reply: str
    repair_reply: str | None = None
    error: str | None = None


@dataclass
class PromptRecord:
    """A prompt with its completions (the `generate` output; `feedback` fills the ratings)."""

    prompt_id: str
    prompt: str
    messages: list[dict]
    completions: list[Completion]
    extra: dict[str, Any] = field(default_factory=dict)
    judge: str | None = None
    judgments: list[Judgment] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {
            "schema_version": SCHEMA_VERSION,
            "prompt_id": self.prompt_id,
            "prompt": self.prompt,
            "messages": self.messages,
            **self.extra,
            "completions": [c.to_json() for c in self.completions],
        }
        if self.judge is not None:
            out["judge"] = self.judge
            out["judgments"] = [j.__dict__ for j in self.judgments]
        return out

    @classmethod
    def from_json(cls, row: Any, loc: dict) -> PromptRecord:
        """Read a `generate` row back; a DataError names the line and field of anything malformed."""
        check_schema(row, loc)
        for key, kind in (("prompt_id", str), ("prompt", str), ("messages", list), ("completions", list)):
            if not isinstance(row.get(key), kind):
                raise DataError(
                    f"must be a {kind.__name__}, got {type(row.get(key)).__name__}", field=key, **loc
                )
        completions = [_completion(c, i, loc) for i, c in enumerate(row["completions"])]
        extra = {k: row[k] for k in CARRIED if row.get(k) is not None}
        return cls(row["prompt_id"], row["prompt"], row["messages"], completions, extra)


def _completion(raw: Any, i: int, loc: dict) -> Completion:
    if not isinstance(raw, dict) or not isinstance(raw.get("response"), str):
        raise DataError("must be an object with a `response` string", field=f"completions[{i}]", **loc)
    values = {k: raw.get(k) for k in _COMPLETION_KEYS}
    values["model"] = str(values["model"] or "unknown")
    values["teacher"] = str(values["teacher"] or values["model"])
    values["principle"] = str(values["principle"] or "none")
    values["temperature"] = float(values["temperature"] or 0.0)
    values["finish_reason"] = str(values["finish_reason"] or "stop")
    values["prompt_tokens"] = int(values["prompt_tokens"] or 0)
    values["completion_tokens"] = int(values["completion_tokens"] or 0)
    return Completion(**values)


def check_schema(row: Any, loc: dict) -> None:
    """Rows must be objects; one written by a newer zephyr is refused rather than misread."""
    if not isinstance(row, dict):
        raise DataError(f"must be a JSON object, got {type(row).__name__}", **loc)
    version = row.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise DataError(
            f"has schema_version {version!r}; this zephyr reads versions up to {SCHEMA_VERSION}: "
            "upgrade zephyr to read it",
            field="schema_version",
            **loc,
        )
