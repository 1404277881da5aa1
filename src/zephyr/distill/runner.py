"""Run a stage row by row: resume, rows in flight on worker threads, streaming output, per-row failures,
shards, and a progress bar with rows/s and tokens/s.

``generate`` and ``feedback`` are both "one input row in, one output row out, slowly". Here each row is
a job for the shared runner ``zephyr.generation.jobs`` (daemon threads, the model calls inside block),
many rows at a time so a batching backend sees enough requests to fill its batches; the main thread
alone writes, one whole line per finished row.
A row is either written complete or not at all, so an interrupted run (Ctrl-C, kill -9) resumes by
skipping the keys already in the output. A row that fails (a backend that gave up, a bad input line) is
reported in ``<output>.failures.jsonl`` and retried by the next run; the rest of the run goes on.

Stages that schedule their own model calls (``dialogue`` works in rounds across rows) use the same
output through ``open_stage``, which hands them the rows still to do and takes back finished, rejected
(finished but unusable: kept apart in ``<output>.rejected.jsonl`` and not redone) and failed ones.
Either way, ``shard`` (``zephyr.distill.shards``) restricts a run to one shard of the rows, written to
its own file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from zephyr.distill.shards import KEY, resolve_shard, shard_path, side_path, write_manifest
from zephyr.errors import ConfigError, DataError, ZephyrError
from zephyr.generation.jobs import JobStats, run_jobs
from zephyr.io import EventLog, RowLog, output_lock, write_json

__all__ = ["StageResult", "StageRun", "check_settings", "open_stage", "run_stage", "side_path"]

log = logging.getLogger(__name__)

# work(payload) -> (output row, completion tokens it took)
Work = Callable[[Any], tuple[dict, int]]


@dataclass
class StageResult:
    stage: str
    output: Path
    total: int  # rows the input asked for
    resumed: int  # already in the output when this run started
    written: int  # written by this run
    failed: int  # failed in this run (reported, retried by the next run)
    bad_input: int  # input lines or rows that could not be read
    tokens: int
    seconds: float
    failures: Path | None
    rejected: int = 0  # finished by this run but unusable, kept apart (counted done, not redone)

    @property
    def complete(self) -> bool:
        return self.failed == 0 and self.bad_input == 0

    def summary(self) -> str:
        rate = self.tokens / self.seconds if self.seconds else 0.0
        text = (
            f"{self.stage}: {self.resumed + self.written + self.rejected}/{self.total} rows in {self.output} "
            f"({self.written} new, {self.resumed} from an earlier run"
            + (f", {self.rejected} rejected" if self.rejected else "")
            + f"; {self.tokens} tokens, {self.seconds:.1f} s, {rate:.1f} tok/s)"
        )
        if not self.complete:
            text += (
                f"; {self.failed} row(s) failed and {self.bad_input} input row(s) were unreadable, "
                f"see {self.failures}; rerun to retry the failed rows"
            )
        return text


def check_settings(output: Path, settings: dict, has_rows: bool) -> None:
    """Refuse to resume an output that was made with different settings (it would mix two datasets)."""
    path = side_path(output, "settings.json")
    if has_rows and path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            raise ConfigError(
                f"{output} was started with different settings ({', '.join(f'`{k}`' for k in changed)} changed); "
                "resuming would mix the two. Restore them, or write to another `output`, or delete the file to start over"
            )
    write_json(path, settings)


class StageRun:
    """An open stage output: ``pending`` holds the ``(key, payload)`` rows still to do; finished rows go to
    ``write``, unusable finished ones to ``reject``, failed ones to ``fail``. Only the calling thread may
    use it."""

    def __init__(self, stage: str, output: Path, rows: RowLog, rejects: RowLog | None, failures: EventLog):
        self.stage, self.output, self.started = stage, output, time.monotonic()
        self._rows, self._rejects, self._failures = rows, rejects, failures
        self.pending: list[tuple[str, Any]] = []
        self.total = self.resumed = self.written = self.rejected = self.failed = self.tokens = 0
        self.bad_input = 0

    def write(self, row: dict, tokens: int = 0) -> None:
        self._rows.append(row)
        self.written += 1
        self.tokens += tokens

    def reject(self, row: dict, tokens: int = 0) -> None:
        if self._rejects is None:
            raise ValueError("this stage was opened without a rejected-rows file")
        self._rejects.append(row)
        self.rejected += 1
        self.tokens += tokens

    def fail(self, key: str, error: ZephyrError) -> None:
        self._failures.add(
            {
                "stage": self.stage,
                "kind": "row_failed",
                KEY: key,
                "error": str(error),
                "attempts": getattr(error, "attempts", 1),
            }
        )
        self.failed += 1
        tqdm.write(f"{self.stage}: row {key} failed: {error}")

    @property
    def done(self) -> int:
        return self.resumed + self.written + self.rejected

    def result(self) -> StageResult:
        count = self._failures.count
        return StageResult(
            self.stage,
            self.output,
            self.total,
            self.resumed,
            self.written,
            self.failed,
            self.bad_input,
            self.tokens,
            time.monotonic() - self.started,
            self._failures.path if count else None,
            self.rejected,
        )


@contextlib.contextmanager
def open_stage(
    stage: str,
    items: Sequence[tuple[str, Any]],
    output: str | Path,
    *,
    settings: dict,
    bad_input: Sequence[DataError] = (),
    redo: Callable[[dict], bool] | None = None,
    shard: str | None = None,
    rejects: bool = False,
) -> Iterator[StageRun]:
    """Open ``output`` for the ``(key, payload)`` rows not yet in it (or, with ``rejects``, in its rejected
    file). Rows already there for which ``redo(row)`` is true are taken out and worked again. ``shard``
    (`I/N`, or unset for RANK/WORLD_SIZE) keeps the rows of one shard, written to their own file."""
    output, chosen = Path(output), resolve_shard(shard)
    all_items = len(items)
    if chosen is not None:
        output = shard_path(output, chosen)
        items = [(k, p) for k, p in items if chosen.holds(k)]
        settings = {**settings, "shard": str(chosen)}
        log.info("%s: shard %s holds %d of the %d rows -> %s", stage, chosen, len(items), all_items, output)
    failures = EventLog(side_path(output, "failures.jsonl"))
    # The lock beside the output also covers its side files and names the holder to a second run.
    with contextlib.ExitStack() as stack:
        stack.enter_context(output_lock(output, f"zephyr {stage}"))
        rows = stack.enter_context(RowLog(output))
        rejected = stack.enter_context(RowLog(side_path(output, "rejected.jsonl"))) if rejects else None
        run = StageRun(stage, output, rows, rejected, failures)
        existing = rows.existing()
        if redo is not None and any(redo(row) for row in existing):
            kept = [row for row in existing if not redo(row)]
            log.info("%s: asking again for %d row(s) of %s", stage, len(existing) - len(kept), output)
            rows.replace_rows(kept)
            existing = kept
        done = {row.get(KEY) for row in existing}
        if rejected is not None:
            done |= {row.get(KEY) for row in rejected.existing()}
        check_settings(output, settings, bool(done))
        manifest = {"stage": stage, "shard": str(chosen), "all_items": all_items, "shard_items": len(items)}
        if chosen is not None:  # until this run finishes, the shard reads as unfinished to merge-shards
            write_manifest(output, {**manifest, "complete": False})
        for err in bad_input:
            failures.add(
                {
                    "stage": stage,
                    "kind": "bad_input",
                    "source": err.source,
                    "line": err.line,
                    "row": err.row,
                    "field": err.field,
                    "error": err.reason,
                }
            )
        run.pending = [(k, p) for k, p in items if k not in done]
        run.total, run.bad_input = len(items), len(bad_input)
        run.resumed = len(items) - len(run.pending)
        if run.resumed:
            log.info("%s: resuming; %d of %d rows are already in %s", stage, run.resumed, len(items), output)
        try:
            yield run
        finally:
            failures.close()
        if chosen is not None:
            finished = {"done": run.done, "failed": run.failed, "complete": run.done == len(items)}
            write_manifest(output, {**manifest, **finished})


def run_stage(
    stage: str,
    items: Sequence[tuple[str, Any]],
    work: Work,
    output: str | Path,
    *,
    concurrency: int,
    settings: dict,
    bad_input: Sequence[DataError] = (),
    progress: bool = True,
    redo: Callable[[dict], bool] | None = None,
    shard: str | None = None,
) -> StageResult:
    """Work every ``(key, payload)`` whose key is not yet in ``output``, writing rows as they finish.
    Rows already there for which ``redo(row)`` is true are taken out of the output and worked again."""
    with open_stage(
        stage, items, output, settings=settings, bad_input=bad_input, redo=redo, shard=shard
    ) as run:
        _drive(run, work, concurrency, progress)
    return run.result()


def _drive(run: StageRun, work: Work, concurrency: int, progress: bool) -> None:
    """Work the pending rows on the shared job runner: each finished row is written at once; a row failing
    with a ZephyrError is reported to the failures file and the run goes on; anything else stops it."""
    pending = run.pending

    def write(_: int, result: tuple[dict, int]) -> None:
        run.write(*result)

    def report(index: int, error: ZephyrError) -> None:
        run.fail(pending[index][0], error)

    def rates(stats: JobStats) -> str:
        seconds = stats.seconds
        return f"{stats.done / seconds:.2f} rows/s, {run.tokens / seconds:.1f} tok/s, {stats.failed} failed"

    run_jobs(
        [functools.partial(work, payload) for _, payload in pending],
        write,
        concurrency=concurrency,
        on_error="continue",
        on_failed=report,
        desc=run.stage,
        unit="row",
        progress=progress,
        already_done=run.resumed,
        postfix=rates,
    )
