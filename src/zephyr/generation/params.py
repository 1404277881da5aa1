"""What a caller asks a model for, and what comes back: the vocabulary every generation path shares.

The HTTP server, the terminal chat, the batching engine and every backend (local, OpenAI-compatible,
vLLM) describe a request with the same ``SamplingParams``, so a seed or a temperature means one thing
wherever it is used. A value out of range is an ``InvalidRequest`` naming the field: the server turns
it into OpenAI's 400 envelope (``param``), config parsing reports it like any bad setting (it is a
``ConfigError``). Backends answer with ``Generation`` rows and fail with ``BackendError``.

No torch here: config parsing and remote backends import this module without loading a model stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zephyr.config import check_settings, setting
from zephyr.errors import ConfigError, ZephyrError

MAX_TOP_LOGPROBS = 20  # the most alternatives per token the OpenAI API returns, and so do we


class InvalidRequest(ConfigError):
    """A request that cannot be served as asked; ``param`` (also ``key``) names the offending field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message, key=param)
        self.param = param


@dataclass
class SamplingParams:
    """How to sample one request. ``temperature=0`` is greedy decoding; generation stops at EOS, at any
    of ``stop``, or after ``max_tokens``.

    ``max_tokens=None`` means "up to the context", capped by the engine's ``default_max_tokens`` (a
    remote backend leaves it to the server). With ``n > 1``, choice ``j`` samples with ``seed + j``.
    What happens to a ``max_tokens`` longer than the room the prompt leaves is not a sampling choice but
    an admission policy: see ``Engine.submit(..., on_overflow=)``.
    """

    max_tokens: int | None = setting("Longest reply in tokens (None: up to the context).", None, ge=1)
    temperature: float = setting("Sampling temperature; 0 means greedy.", 1.0, ge=0)
    top_p: float = setting("Nucleus sampling mass.", 1.0, gt=0, le=1)
    seed: int | None = setting("Sampling seed; choice j of n uses seed + j.", None)
    stop: Sequence[str] = setting("Strings that end the reply (not included in it).", ())
    n: int = setting("Choices per prompt.", 1, ge=1)
    top_logprobs: int | None = setting(
        "None: no log-probs. k: record each generated token's log-prob (under the model's own distribution, "
        "before temperature and top-p) and its k most likely alternatives.",
        None,
        ge=0,
        le=MAX_TOP_LOGPROBS,
    )

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(s for s in (self.stop or ()) if s)
        try:
            check_settings(self)
        except ConfigError as exc:
            raise InvalidRequest(str(exc), param=exc.key) from None

    def seed_of(self, choice: int) -> int | None:
        """The seed of choice ``choice`` (None when unseeded)."""
        return None if self.seed is None else self.seed + choice


@dataclass
class Generation:
    """One generated reply and its token counts (``finish_reason``: "stop" or "length")."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class BackendError(ZephyrError):
    """A generation failed for good (after retries where they apply).

    ``index`` is the failing conversation's position in the batch; after a batch call ``results``
    holds every row's generations (None where it failed) and ``failures`` maps index -> error.
    ``attempts`` counts the tries made; ``retryable`` says whether a later run may well succeed.
    """

    def __init__(self, message: str, *, index: int | None = None, attempts: int = 1, retryable: bool = False):
        super().__init__(f"row {index}: {message}" if index is not None else message)
        self.reason, self.index, self.attempts, self.retryable = message, index, attempts, retryable
        self.results: list[list[Generation] | None] | None = None
        self.failures: dict[int, BackendError] = {}
