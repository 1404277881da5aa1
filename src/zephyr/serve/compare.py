"""Compare mode: two replies to one conversation, shown blind as A and B, and the votes they get.

The replies come from two served models (``zephyr serve MODEL --compare-model MODEL2``) or, with one
model, from two samples of it at the request's temperature with seeds ``seed`` and ``seed + 1``. Which
reply goes in position A is a coin flip per comparison (``rng``: the OS's randomness unless a test
seeds it), remembered here and told to the client only once its vote is stored.

- **Pending comparisons** wait in memory for their vote: at most ``max_pending`` of them (making one
  more drops the oldest) and for at most ``ttl`` seconds; a vote for one that is gone is a 404.
- **Votes** are appended to the votes file (the format: ``zephyr.distill.votes``), one whole line each,
  under an exclusive file lock and fsynced before the client hears of it, so concurrent voters (threads,
  or servers sharing the file) never interleave lines. A comparison takes one vote: a second vote (a
  double click, a retried request, after a restart too) answers with the stored one and writes nothing.
  The ids of the stored votes are read back from the file when the server starts: the file is the record.

The HTTP side (generation, routes) is in ``server``; this module holds the state and the file.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from zephyr.distill.votes import CHOICES, Reply, Vote, read_votes
from zephyr.errors import ConfigError, ZephyrError
from zephyr.generation.params import InvalidRequest, SamplingParams
from zephyr.io import append_jsonl
from zephyr.serve import protocol as api

log = logging.getLogger(__name__)

# The same numbers are repeated in cli/serve.py (importing this package loads torch); a test checks.
DEFAULT_MAX_COMPARISONS = 256
DEFAULT_COMPARISON_TTL = 3600.0
SEED_RANGE = 2**31  # a drawn seed is small enough to read, and seed + 1 still fits anywhere


class CompareOff(ZephyrError):
    """Compare mode is not on: the server was started without a votes file."""


class ComparisonNotFound(ZephyrError):
    """No pending or voted comparison has this id (never made, expired, or dropped for newer ones)."""


@dataclass
class Contender:
    """A model taking part in comparisons: its served name and its engine."""

    name: str
    engine: object  # zephyr.generation.engine.Engine (not imported: it loads torch)


@dataclass
class _Pending:
    conversation: list[dict]
    replies: dict[str, Reply]  # "a", "b" in the positions shown
    swapped: bool
    created: float  # wall clock, for the record
    born: float  # monotonic, for the expiry


@dataclass(frozen=True)
class _Stored:
    """What a repeated vote is answered with: the vote as stored, without its texts."""

    choice: str
    model_a: str
    model_b: str
    chosen_model: str | None
    rejected_model: str | None
    timestamp: float

    @classmethod
    def of(cls, vote: Vote) -> _Stored:
        return cls(
            vote.choice, vote.model_a, vote.model_b, vote.chosen_model, vote.rejected_model, vote.timestamp
        )

    def result(self, comparison_id: str, replayed: bool) -> api.VoteResult:
        return api.VoteResult(
            id=comparison_id,
            choice=self.choice,
            models={"a": self.model_a, "b": self.model_b},
            chosen_model=self.chosen_model,
            rejected_model=self.rejected_model,
            timestamp=self.timestamp,
            replayed=replayed,
        )


class Arena:
    """The comparisons of one server: one or two contenders, the pending comparisons, the votes file."""

    def __init__(
        self,
        votes_path: str | Path,
        contenders: Sequence[Contender],
        *,
        max_pending: int = DEFAULT_MAX_COMPARISONS,
        ttl: float = DEFAULT_COMPARISON_TTL,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        if len(contenders) not in (1, 2):
            raise ValueError(f"compare mode takes one or two models, got {len(contenders)}")
        if len(contenders) == 2 and contenders[0].name == contenders[1].name:
            raise ConfigError(
                f"Both models are served as {contenders[0].name!r}, so votes could not tell them apart; "
                "name them with --served-model-name and --compare-model-name"
            )
        if max_pending < 1 or not ttl > 0:
            raise ConfigError(
                f"--max-comparisons and --comparison-ttl must be positive; got {max_pending}, {ttl}"
            )
        self.path = Path(votes_path)
        if self.path.is_dir():
            raise ConfigError(
                f"--votes {self.path} is a directory; give a file (e.g. {self.path / 'votes.jsonl'})"
            )
        self.contenders = list(contenders)
        self.max_pending, self.ttl = max_pending, ttl
        self._rng = rng or random.SystemRandom()
        self._clock = clock
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._stored: dict[str, _Stored] = {}
        self._lock = threading.Lock()  # the two dicts; held briefly, also from the event loop
        self._vote_lock = threading.Lock()  # one vote at a time, from the lookup to the stored line
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        votes, problems = read_votes(self.path)
        for vote in votes:
            self._stored.setdefault(vote.id, _Stored.of(vote))
        if problems:
            log.warning(
                "%s: %d line(s) could not be read; the first: %s", self.path, len(problems), problems[0]
            )
        log.info("%s: %d votes stored so far", self.path, len(self._stored))

    # ---- making a comparison --------------------------------------------------------------------

    def plan(self, body: api.CompareRequest) -> list[tuple[Contender, SamplingParams]]:
        """What to generate: one request of two samples (one model), or one reply from each model."""
        temperature = 1.0 if body.temperature is None else body.temperature
        if len(self.contenders) == 1 and temperature == 0:
            raise InvalidRequest(
                "Two samples of one model need `temperature` > 0 (greedy decoding writes the same reply "
                "twice); raise it, or serve a second model with --compare-model",
                param="temperature",
            )
        seed = self._rng.randrange(SEED_RANGE) if body.seed is None else body.seed
        common = dict(max_tokens=body.max_tokens, temperature=temperature, top_p=body.top_p or 1.0)
        if len(self.contenders) == 1:
            return [(self.contenders[0], SamplingParams(**common, seed=seed, n=2))]
        return [(c, SamplingParams(**common, seed=seed + i)) for i, c in enumerate(self.contenders)]

    def open(self, conversation: list[dict], replies: list[Reply]) -> api.Comparison:
        """Store a new comparison of two replies (sample 0, sample 1), in a random order."""
        swapped = self._rng.random() < 0.5
        a, b = (replies[1], replies[0]) if swapped else (replies[0], replies[1])
        comparison_id = api.new_id("cmp")
        now = self._clock()
        with self._lock:
            self._expire(now)
            while len(self._pending) >= self.max_pending:
                dropped, _ = self._pending.popitem(last=False)
                log.info(
                    "Dropped the unvoted comparison %s: %d newer ones are waiting", dropped, self.max_pending
                )
            self._pending[comparison_id] = _Pending(conversation, {"a": a, "b": b}, swapped, time.time(), now)
        return api.Comparison(
            id=comparison_id,
            replies=[
                api.CompareReply(label=label, content=r.content, finish_reason=r.finish_reason)
                for label, r in (("a", a), ("b", b))
            ],
        )

    def _expire(self, now: float) -> None:
        while self._pending:
            oldest = next(iter(self._pending.values()))
            if now - oldest.born <= self.ttl:
                return
            self._pending.popitem(last=False)

    # ---- voting -----------------------------------------------------------------------------------

    def vote(self, comparison_id: str, choice: str) -> api.VoteResult:
        """Store the vote on a comparison (blocking: the line is fsynced) and reveal its models; a repeated
        vote returns the stored one unchanged."""
        if choice not in CHOICES:
            raise InvalidRequest(f"`choice` must be one of {', '.join(CHOICES)}", param="choice")
        with self._vote_lock:
            with self._lock:
                self._expire(self._clock())
                stored = self._stored.get(comparison_id)
                pending = None if stored else self._pending.get(comparison_id)
            if stored is not None:
                return stored.result(comparison_id, replayed=True)
            if pending is None:
                raise ComparisonNotFound(
                    f"No comparison {comparison_id[:64]!r} is waiting for a vote: it expired (after "
                    f"{self.ttl:g} s), was dropped for newer ones, or never existed; ask for a new one"
                )
            vote = Vote(
                id=comparison_id,
                conversation=pending.conversation,
                replies=pending.replies,
                choice=choice,
                swapped=pending.swapped,
                created=round(pending.created, 3),
                timestamp=round(time.time(), 3),
            )
            append_jsonl(self.path, [vote.to_json()], lock=True)
            stored = _Stored.of(vote)
            with self._lock:
                self._pending.pop(comparison_id, None)
                self._stored[comparison_id] = stored
        return stored.result(comparison_id, replayed=False)

    def info(self) -> api.CompareInfo:
        with self._lock:
            return api.CompareInfo(enabled=True, models=len(self.contenders), votes=len(self._stored))

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._pending)
