"""Run a stage row by row: resume, rows in flight on worker threads, streaming output, per-row failures,
and a progress bar with rows/s and tokens/s.

``generate`` and ``feedback`` are both "one input row in, one output row out, slowly". Here each row is
a job for the shared runner ``zephyr.generation.jobs`` (daemon threads, the model calls inside block),
many rows at a time so a batching backend sees enough requests to fill its batches; the main thread
alone writes, one whole line per finished row.
A row is either written complete or not at all, so an interrupted run (Ctrl-C, kill -9) resumes by
skipping the keys already in the output. A row that fails (a backend that gave up, a bad input line) is
reported in ``<output>.failures.jsonl`` and retried by the next run; the rest of the run goes on.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from zephyr.errors import ConfigError, DataError, ZephyrError
from zephyr.generation.jobs import JobStats, run_jobs
from zephyr.io import EventLog, RowLog, output_lock, write_json

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

    @property
    def complete(self) -> bool:
        return self.failed == 0 and self.bad_input == 0

    def summary(self) -> str:
        rate = self.tokens / self.seconds if self.seconds else 0.0
        text = (
            f"{self.stage}: {self.resumed + self.written}/{self.total} rows in {self.output} "
            f"({self.written} new, {self.resumed} from an earlier run; {self.tokens} tokens, "
            f"{self.seconds:.1f} s, {rate:.1f} tok/s)"
        )
        if not self.complete:
            text += (
                f"; {self.failed} row(s) failed and {self.bad_input} input row(s) were unreadable, "
                f"see {self.failures}; rerun to retry the failed rows"
            )
        return text


def side_path(output: Path, suffix: str) -> Path:
    """``runs/x/completions.jsonl`` -> ``runs/x/completions.<suffix>``."""
    return output.with_name(f"{output.stem}.{suffix}")


def check_settings(output: Path, settings: dict, has_rows: bool) -> None:
    """Refuse to resume an output that was made with different settings (it would mix two datasets)."""
    path = side_path(output, "settings.json")
    if has_rows and path.is_file():
        import json

        before = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            raise ConfigError(
                f"{output} was started with different settings ({', '.join(f'`{k}`' for k in changed)} changed); "
                "resuming would mix the two. Restore them, or write to another `output`, or delete the file to start over"
            )
    write_json(path, settings)


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
) -> StageResult:
    """Work every ``(key, payload)`` whose key is not yet in ``output``, writing rows as they finish.
    Rows already there for which ``redo(row)`` is true are taken out of the output and worked again."""
    output = Path(output)
    started = time.monotonic()
    failures = EventLog(side_path(output, "failures.jsonl"))
    # The lock beside the output also covers its side files and names the holder to a second run.
    with output_lock(output, f"zephyr {stage}"), RowLog(output) as rows:
        existing = rows.existing()
        if redo is not None and any(redo(row) for row in existing):
            kept = [row for row in existing if not redo(row)]
            log.info("%s: asking again for %d row(s) of %s", stage, len(existing) - len(kept), output)
            rows.replace_rows(kept)
            existing = kept
        done = {row.get("prompt_id") for row in existing}
        check_settings(output, settings, bool(done))
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
        pending = [(k, p) for k, p in items if k not in done]
        resumed = len(items) - len(pending)
        if resumed:
            log.info("%s: resuming; %d of %d rows are already in %s", stage, resumed, len(items), output)
        try:
            written, tokens = _drive(stage, pending, work, rows, failures, concurrency, resumed, progress)
        finally:
            failures.close()
    return StageResult(
        stage,
        output,
        len(items),
        resumed,
        written,
        failures.count - len(bad_input),
        len(bad_input),
        tokens,
        time.monotonic() - started,
        failures.path if failures.count else None,
    )


def _drive(
    stage, pending, work: Work, rows: RowLog, failures: EventLog, concurrency, resumed, progress
) -> tuple[int, int]:
    """Work the pending rows on the shared job runner: each finished row is written at once; a row failing
    with a ZephyrError is reported to the failures file and the run goes on; anything else stops it."""
    tokens = 0

    def write(_: int, result: tuple[dict, int]) -> None:
        nonlocal tokens
        row, used = result
        rows.append(row)
        tokens += used

    def report(index: int, error: ZephyrError) -> None:
        key = pending[index][0]
        failures.add(
            {
                "stage": stage,
                "kind": "row_failed",
                "prompt_id": key,
                "error": str(error),
                "attempts": getattr(error, "attempts", 1),
            }
        )
        tqdm.write(f"{stage}: row {key} failed: {error}")

    def rates(stats: JobStats) -> str:
        seconds = stats.seconds
        return f"{stats.done / seconds:.2f} rows/s, {tokens / seconds:.1f} tok/s, {stats.failed} failed"

    stats = run_jobs(
        [functools.partial(work, payload) for _, payload in pending],
        write,
        concurrency=concurrency,
        on_error="continue",
        on_failed=report,
        desc=stage,
        unit="row",
        progress=progress,
        already_done=resumed,
        postfix=rates,
    )
    return stats.done, tokens
