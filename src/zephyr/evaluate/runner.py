"""Run many independent backend calls at once, keeping each result as soon as it is ready.

Every evaluation job (answer one question, judge one answer) is a blocking call into a generation
backend. Running them from a pool of threads keeps a batching backend full: the local engine decodes
whatever is in flight together and refills a row as soon as one finishes, and an HTTP backend keeps
its connections busy. There is no barrier between jobs, so one long answer never holds the others up,
and a multi-turn conversation asks its next turn the moment its previous answer is back.

Results reach ``on_done`` in the calling thread, one at a time, as they complete: the place to save
them, so an interrupted run keeps everything that finished.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TypeVar

from zephyr.errors import ZephyrError

T = TypeVar("T")

DEFAULT_CONCURRENCY = 32


class RunInterrupted(ZephyrError):
    """The backend failed mid-run; every finished result was saved, so rerunning resumes from there."""


def run_jobs(
    jobs: Sequence[Callable[[], T]],
    on_done: Callable[[int, T], None],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    desc: str = "",
    unit: str = "job",
) -> None:
    """Run ``jobs`` on up to ``concurrency`` threads; call ``on_done(index, result)`` for each as it finishes.

    The first job to raise stops the run: jobs not yet started are cancelled, the ones in flight are
    waited for and their results still delivered, then the error is raised (a backend failure as
    RunInterrupted, which says how much was saved).
    """
    from tqdm.auto import tqdm

    from zephyr.distill.backends import BackendError

    if not jobs:
        return
    pool = ThreadPoolExecutor(
        max_workers=max(1, min(concurrency, len(jobs))), thread_name_prefix="zephyr-eval"
    )
    error: BaseException | None = None
    finished = 0
    with tqdm(total=len(jobs), desc=desc, unit=unit) as bar:
        try:
            pending = {pool.submit(job): i for i, job in enumerate(jobs)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    index = pending.pop(future)
                    if future.cancelled():
                        continue
                    if future.exception() is not None:
                        if error is None:
                            error = future.exception()
                            for other in pending:
                                other.cancel()
                        continue
                    on_done(index, future.result())
                    finished += 1
                    bar.update()
        except BaseException:  # Ctrl-C or a failing on_done: do not wait for jobs still running
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    pool.shutdown(wait=True)
    if isinstance(error, BackendError):
        raise RunInterrupted(
            f"{desc or 'run'}: the backend failed after {finished} of {len(jobs)} {unit}(s) were saved: {error}. "
            f"Finished {unit}s are kept; rerun the same command to resume."
        ) from error
    if error is not None:
        raise error
