"""A scripted generation backend for the evaluation tests (used by the test_eval_* modules).

``ScriptedBackend`` implements the Backend interface deterministically: each conversation's reply comes
from a function of the conversation and the sampling params, every call is recorded (thread-safe: the
evaluation runner calls from many threads), and it can be told to fail for good after N generations,
as a backend whose endpoint goes down mid-run would.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from zephyr.generation.backends import Backend
from zephyr.generation.params import BackendError, Generation, SamplingParams


class ScriptedBackend(Backend):
    def __init__(
        self,
        name: str,
        reply: Callable[[list[dict], SamplingParams], str],
        fail_after: int | None = None,
        scores: Callable[[list[dict], tuple], dict] | None = None,
    ):
        self.name = name
        self.reply = reply
        self.scores = scores  # option log-probs per conversation; without it the backend cannot score options
        self.fail_after = fail_after
        self.calls: list[tuple[list[dict], SamplingParams]] = []
        self.closed = False
        self._lock = threading.Lock()

    def generate(self, conversations, params):
        out = []
        for i, conversation in enumerate(conversations):
            with self._lock:
                if self.fail_after is not None and len(self.calls) >= self.fail_after:
                    raise BackendError(
                        "scripted outage: the endpoint stopped answering", index=i, retryable=True
                    )
                self.calls.append(([dict(m) for m in conversation], params))
            out.append([Generation(self.reply(conversation, params), "stop", 1, 1)])
        return out

    def option_logprobs(self, conversations, options):
        if self.scores is None:
            return super().option_logprobs(conversations, options)
        with self._lock:
            self.calls += [([dict(m) for m in c], None) for c in conversations]
        return [self.scores(c, tuple(options)) for c in conversations]

    def close(self):
        self.closed = True

    def user_prompts(self) -> list[str]:
        return [c[-1]["content"] for c, _ in self.calls]


def use_backends(monkeypatch, **backends: ScriptedBackend) -> None:
    """Make the evaluation stages open ``backends[spec model]`` instead of loading anything."""
    from zephyr.evaluate import benchmarks

    monkeypatch.setattr(benchmarks, "open_backend", lambda spec: backends[spec["model"]])
