"""Human votes from the compare page of `zephyr serve --votes FILE`, and the preference pairs they make.

The votes file is JSON Lines, one line per vote, appended by the server (``zephyr.serve.compare``) and
read here, by `zephyr binarize --votes FILE` and by `zephyr report --votes=FILE`. A line (schema 1):

- ``schema_version`` (1), ``id`` (the comparison, ``cmp-...``), ``created`` and ``timestamp`` (Unix
  seconds when the replies were made and when the vote was stored);
- ``conversation``: the messages both replies answer (ending with the user turn), ``prompt``: that last
  user message;
- ``replies``: ``{"a": REPLY, "b": REPLY}`` as the page showed them (A left, B right), each with its
  ``model`` id, ``content``, ``finish_reason``, ``completion_tokens``, ``sample`` (0: the served model or
  the first sample, 1: the compare model or the second sample) and ``sampling`` (temperature, top_p,
  max_tokens, seed);
- ``model_a``, ``model_b`` and ``swapped`` (true when sample 1 was shown as A): the position each model
  had on screen;
- ``choice``: ``a``, ``b``, ``tie`` or ``both_bad``; ``chosen_model`` and ``rejected_model`` when the
  choice is a or b, else null.

``vote_pairs`` turns votes into rows of the ultrafeedback_binarized shape: ``chosen``/``rejected`` are
the conversation plus the preferred/other reply, ``messages`` is ``chosen``, ``prompt`` the last user
message, ``prompt_id`` the hash of the whole conversation (``zephyr.data.prompt_id_of``: for a single user
turn, UltraFeedback's sha256 of its text), ``score_chosen`` 1.0 and ``score_rejected`` 0.0 (a vote is a
yes/no judgement, not a rating). Ties and both-bad votes say neither reply is better, so they make no
pair; nor do votes whose two replies are the same text, or where either reply is empty: all are counted
by reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zephyr.chat import validate_messages
from zephyr.data import prompt_id_of
from zephyr.errors import DataError
from zephyr.io import read_jsonl

log = logging.getLogger(__name__)

VOTE_SCHEMA_VERSION = 1
CHOICES = ("a", "b", "tie", "both_bad")
DECIDED = ("a", "b")
DROP_REASONS = ("tie", "both_bad", "identical_replies", "empty_reply", "duplicate_vote")


@dataclass
class Reply:
    """One of the two replies of a comparison, as generated."""

    model: str
    content: str
    finish_reason: str = "stop"
    completion_tokens: int = 0
    sample: int = 0
    sampling: dict = field(default_factory=dict)  # temperature, top_p, max_tokens, seed


@dataclass
class Vote:
    """One line of a votes file."""

    id: str
    conversation: list[dict]
    replies: dict[str, Reply]  # "a" and "b", in the positions shown
    choice: str
    swapped: bool = False
    created: float = 0.0
    timestamp: float = 0.0

    @property
    def prompt(self) -> str:
        return next(m["content"] for m in reversed(self.conversation) if m["role"] == "user")

    @property
    def model_a(self) -> str:
        return self.replies["a"].model

    @property
    def model_b(self) -> str:
        return self.replies["b"].model

    @property
    def chosen(self) -> str | None:
        """The position preferred (a or b), None for a tie or both bad."""
        return self.choice if self.choice in DECIDED else None

    @property
    def rejected(self) -> str | None:
        return {"a": "b", "b": "a"}.get(self.choice)

    @property
    def chosen_model(self) -> str | None:
        return self.replies[self.chosen].model if self.chosen else None

    @property
    def rejected_model(self) -> str | None:
        return self.replies[self.rejected].model if self.rejected else None

    def to_json(self) -> dict:
        return {
            "schema_version": VOTE_SCHEMA_VERSION,
            "id": self.id,
            "created": self.created,
            "timestamp": self.timestamp,
            "conversation": self.conversation,
            "prompt": self.prompt,
            "replies": {k: asdict(r) for k, r in self.replies.items()},
            "model_a": self.model_a,
            "model_b": self.model_b,
            "swapped": self.swapped,
            "choice": self.choice,
            "chosen_model": self.chosen_model,
            "rejected_model": self.rejected_model,
        }


# ---- reading ----------------------------------------------------------------------------------------


def _fail(loc: dict, field_name: str, reason: str):
    raise DataError(reason, field=field_name, **loc)


def _reply(value: Any, name: str, loc: dict) -> Reply:
    where = f"replies.{name}"
    if not isinstance(value, dict):
        _fail(loc, where, f"must be an object, got {type(value).__name__}")
    for key in ("model", "content"):
        if not isinstance(value.get(key), str):
            _fail(loc, f"{where}.{key}", f"must be a string, got {type(value.get(key)).__name__}")
    sampling = value.get("sampling") or {}
    if not isinstance(sampling, dict):
        _fail(loc, f"{where}.sampling", f"must be an object, got {type(sampling).__name__}")
    return Reply(
        model=value["model"],
        content=value["content"],
        finish_reason=str(value.get("finish_reason") or "stop"),
        completion_tokens=int(value.get("completion_tokens") or 0),
        sample=int(value.get("sample") or 0),
        sampling=sampling,
    )


def parse_vote(row: Any, loc: dict) -> Vote:
    """One votes-file line as a Vote; a DataError names the line and field of anything wrong."""
    if not isinstance(row, dict):
        _fail(loc, None, f"must be a JSON object, got {type(row).__name__}")
    version = row.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        _fail(loc, "schema_version", f"must be a positive integer, got {version!r}; is this a votes file?")
    if version > VOTE_SCHEMA_VERSION:
        _fail(
            loc,
            "schema_version",
            f"is {version}: written by a newer zephyr (this one reads up to {VOTE_SCHEMA_VERSION}); upgrade",
        )
    if not isinstance(row.get("id"), str) or not row["id"]:
        _fail(loc, "id", "must be a non-empty string")
    conversation = row.get("conversation")
    validate_messages(conversation, field="conversation", need_assistant=False, **loc)
    if conversation[-1]["role"] != "user":
        _fail(
            loc, f"conversation[{len(conversation) - 1}].role", "the conversation must end with a user turn"
        )
    if row.get("choice") not in CHOICES:
        _fail(loc, "choice", f"must be one of {', '.join(CHOICES)}, got {row.get('choice')!r}")
    replies = row.get("replies")
    if not isinstance(replies, dict):
        _fail(loc, "replies", f"must be an object with `a` and `b`, got {type(replies).__name__}")
    return Vote(
        id=row["id"],
        conversation=[{"role": m["role"], "content": m["content"]} for m in conversation],
        replies={k: _reply(replies.get(k), k, loc) for k in ("a", "b")},
        choice=row["choice"],
        swapped=bool(row.get("swapped", False)),
        created=float(row.get("created") or 0.0),
        timestamp=float(row.get("timestamp") or 0.0),
    )


def read_votes(path: str | Path) -> tuple[list[Vote], list[str]]:
    """The votes of a file, and one message per line that could not be read (file, line and field). A
    torn last line (a server killed mid-write: that vote was never confirmed) is dropped with a warning."""
    votes, problems = [], []
    for loc, row in read_jsonl(path, bad_lines="yield", torn_tail="skip"):
        try:
            if isinstance(row, DataError):
                raise row
            votes.append(parse_vote(row, loc))
        except DataError as exc:
            problems.append(str(exc))
    return votes, problems


# ---- pairs ------------------------------------------------------------------------------------------


def vote_pair(vote: Vote) -> tuple[dict | None, str]:
    """The ultrafeedback_binarized row of one vote, or None and the reason it makes none."""
    if vote.chosen is None:
        return None, vote.choice
    chosen, rejected = vote.replies[vote.chosen].content, vote.replies[vote.rejected].content
    if not chosen.strip() or not rejected.strip():
        return None, "empty_reply"
    if chosen.strip() == rejected.strip():
        return None, "identical_replies"
    turns = vote.conversation
    chosen_turns = [*turns, {"role": "assistant", "content": chosen}]
    return {
        "prompt": vote.prompt,
        "prompt_id": prompt_id_of(turns),
        "chosen": chosen_turns,
        "rejected": [*turns, {"role": "assistant", "content": rejected}],
        "messages": chosen_turns,
        "score_chosen": 1.0,
        "score_rejected": 0.0,
    }, "pair"


def vote_pairs(votes: list[Vote]) -> tuple[list[dict], Counter]:
    """Pairs from votes in file order (a comparison id seen twice counts once: files joined by hand), and
    the count of votes per reason they made no pair (``DROP_REASONS``)."""
    pairs, dropped, seen = [], Counter({reason: 0 for reason in DROP_REASONS}), set()
    for vote in votes:
        if vote.id in seen:
            dropped["duplicate_vote"] += 1
            continue
        seen.add(vote.id)
        pair, reason = vote_pair(vote)
        if pair is None:
            dropped[reason] += 1
        else:
            pairs.append(pair)
    return pairs, dropped


def models_of(votes: list[Vote]) -> dict[str, dict[str, int]]:
    """How often each model's reply was chosen and rejected (the binarize report's summary), each
    comparison counted once."""
    out: dict[str, dict[str, int]] = {}
    for vote in {v.id: v for v in reversed(votes)}.values():  # the first vote of an id, as vote_pairs
        for model in (vote.model_a, vote.model_b):
            out.setdefault(model, {"chosen": 0, "rejected": 0})
        if vote.chosen:
            out[vote.chosen_model]["chosen"] += 1
            out[vote.rejected_model]["rejected"] += 1
    return out
