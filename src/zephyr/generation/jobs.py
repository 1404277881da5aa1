"""Run many independent model calls at once, handing each result to the caller as soon as it is ready.

Evaluation (answer a question, judge an answer) and distillation (one prompt row in, one row out) are
both long lists of blocking calls into a generation backend. Running them from a pool of threads keeps
a batching backend full: the local engine decodes whatever is in flight together and refills a row as
soon as one finishes, and an HTTP backend keeps its connections busy. There is no barrier between jobs,
so one long answer never holds the others up.

Results reach ``on_done`` in the calling thread, one at a time, as they complete: the place to save
them, so an interrupted run keeps everything that finished. The workers are daemon threads fed from a
short queue (a few jobs ahead of them, not the whole input), so Ctrl-C ends the run at once instead of
waiting for the calls in flight, whose results were not saved and are simply redone by the next run.

What a failing job does is the caller's explicit choice, ``on_error``:

- ``"stop"`` (evaluation): the first failure stops the run. No new job starts; the jobs in flight
  finish and their results are still delivered; then the error is raised, a ``BackendError`` as
  ``RunInterrupted`` saying how much was saved.
- ``"continue"`` (distillation): a job failing with a ``ZephyrError`` (a backend that gave up, a bad
  row) is handed to ``on_failed`` and the run goes on; any other exception is a bug and stops the run
  as with ``"stop"``.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from zephyr.errors import ZephyrError
from zephyr.generation.params import BackendError

T = TypeVar("T")

DEFAULT_CONCURRENCY = 32


class RunInterrupted(ZephyrError):
    """The backend failed mid-run; every finished result was saved, so rerunning resumes from there."""


@dataclass
class JobStats:
    """How a run went so far: jobs delivered to ``on_done``, jobs handed to ``on_failed``."""

    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return max(time.monotonic() - self.started, 1e-9)


def run_jobs(
    jobs: Sequence[Callable[[], T]],
    on_done: Callable[[int, T], None],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    on_error: Literal["stop", "continue"] = "stop",
    on_failed: Callable[[int, ZephyrError], None] | None = None,
    desc: str = "",
    unit: str = "job",
    progress: bool = True,
    already_done: int = 0,
    postfix: Callable[[JobStats], str] | None = None,
) -> JobStats:
    """Run ``jobs`` on up to ``concurrency`` threads; call ``on_done(index, result)`` for each as it finishes.

    ``on_error`` says what a failing job does (see the module docstring); with ``"continue"``,
    ``on_failed(index, error)`` gets each ZephyrError. The progress bar counts ``already_done`` jobs of an
    earlier run as finished and shows ``postfix(stats)`` after every job. Returns the run's counts.
    """
    from tqdm.auto import tqdm

    if on_error not in ("stop", "continue"):
        raise ValueError(f"on_error must be 'stop' or 'continue'; got {on_error!r}")
    if on_error == "continue" and on_failed is None:
        raise ValueError("on_error='continue' needs an on_failed callback")
    stats = JobStats()
    if not jobs and not already_done:
        return stats
    workers = _Workers(max(1, min(concurrency, len(jobs))))
    bar = tqdm(
        total=already_done + len(jobs),
        initial=already_done,
        desc=desc,
        unit=unit,
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        error = _drive(jobs, workers, on_done, on_error, on_failed, bar, stats, postfix)
    finally:
        workers.stop()  # drop jobs not yet started; the threads exit after their current job
        bar.close()
    if isinstance(error, BackendError):
        raise RunInterrupted(
            f"{desc or 'run'}: the backend failed after {stats.done} of {len(jobs)} {unit}(s) were saved: "
            f"{error}. Finished {unit}s are kept; rerun the same command to resume."
        ) from error
    if error is not None:
        raise error
    return stats


def _drive(
    jobs, workers: _Workers, on_done, on_error, on_failed, bar, stats, postfix
) -> BaseException | None:
    """Feed the workers a few jobs ahead, deliver what finishes; the error that stopped the run, if any."""
    feed = iter(enumerate(jobs))
    backlog = 2 * len(workers.threads)  # queued ahead of the workers: enough to refill them at once
    in_flight, error = 0, None
    for item in feed:
        workers.submit(*item)
        in_flight += 1
        if in_flight >= backlog:
            break
    while in_flight:
        index, result, exc = workers.next_done()
        in_flight -= 1
        if exc is None:
            on_done(index, result)
            stats.done += 1
        elif on_error == "continue" and isinstance(exc, ZephyrError):
            on_failed(index, exc)
            stats.failed += 1
        else:
            if error is None:  # stop: start nothing more, but deliver what is still in flight
                error = exc
                in_flight -= workers.cancel_queued()
            continue
        bar.update()
        if postfix is not None:
            bar.set_postfix_str(postfix(stats))
        if error is None and (nxt := next(feed, None)) is not None:
            workers.submit(*nxt)
            in_flight += 1
    return error


class _Workers:
    """Daemon threads running submitted jobs. Daemons, so an interrupted run exits at once instead of
    waiting for model calls in flight (their results were not delivered, so nothing is lost)."""

    def __init__(self, count: int):
        self._todo: queue.Queue = queue.Queue()
        self._done: queue.Queue = queue.Queue()
        self.threads = [
            threading.Thread(target=self._loop, daemon=True, name=f"zephyr-job-{i}") for i in range(count)
        ]
        for t in self.threads:
            t.start()

    def submit(self, index: int, job: Callable) -> None:
        self._todo.put((index, job))

    def next_done(self) -> tuple[int, object, BaseException | None]:
        while True:
            try:
                return self._done.get(timeout=0.5)  # a timeout keeps Ctrl-C responsive
            except queue.Empty:
                continue

    def cancel_queued(self) -> int:
        """Drop the jobs no thread has started; how many were dropped."""
        dropped = 0
        while True:
            try:
                self._todo.get_nowait()
            except queue.Empty:
                return dropped
            dropped += 1

    def _loop(self) -> None:
        while (item := self._todo.get()) is not None:
            index, job = item
            try:
                self._done.put((index, job(), None))
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, which decides
                self._done.put((index, None, exc))

    def stop(self) -> None:
        self.cancel_queued()
        for _ in self.threads:
            self._todo.put(None)
