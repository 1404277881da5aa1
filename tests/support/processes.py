"""The real `zephyr` CLI in a subprocess, stopped at a named moment (``ZEPHYR_TEST_PAUSE_AT``, see
``zephyr.train.checkpoints``) so a test can kill it exactly there; and whether a process is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def sigint_as_usual() -> None:
    """A ``preexec_fn`` giving the child Ctrl-C's default action. A test run started in the background
    (``cmd &`` from a script) inherits SIGINT ignored, as every process it starts would, and a Python
    started that way never raises KeyboardInterrupt: the tests that send SIGINT would test nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_paused(
    args: list[str], pause_at: str, log: Path, timeout: float = 240
) -> tuple[subprocess.Popen, int]:
    """`zephyr ARGS` stopped at ``pause_at``; returns the process and the PID of the one that paused
    (under `zephyr run`, the stage child). Its stderr goes to ``log``."""
    # The same thread count as the test process: float sums split over threads change the last bits.
    # (Read now, not at import: earlier tests may have changed it with torch.set_num_threads.)
    import torch

    env = dict(os.environ, ZEPHYR_TEST_PAUSE_AT=pause_at, OMP_NUM_THREADS=str(torch.get_num_threads()))
    with open(log, "wb") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "zephyr.cli", *args], env=env, stderr=stderr)
    marker = f"paused at {pause_at} (pid "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if marker in text:
            return proc, int(text.split(marker)[1].split(")")[0])
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode} before pausing at {pause_at}:\n{text[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"never paused at {pause_at}; see {log}")


def is_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie nobody has reaped yet counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def wait_gone(pid: int, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_gone(pid):
            return True
        time.sleep(0.1)
    return False
