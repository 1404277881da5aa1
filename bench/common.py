"""Helpers shared by the benchmark scripts: run a side in its own process, describe the machine,
append results to BENCHMARKS.md."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {gpu}, torch {torch.__version__}"


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def run_side(script: str, side: str, args: list[str], timeout: int = 3600) -> dict:
    """Run one side of a benchmark in a fresh process; it prints one JSON line starting with `SIDE `."""
    cmd = [sys.executable, script, "--side", side, *args]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-5000:] + proc.stderr[-5000:])
        raise SystemExit(f"side {side!r} failed with exit code {proc.returncode}")
    for line in proc.stdout.splitlines():
        if line.startswith("SIDE "):
            result = json.loads(line[5:])
            result["wall_s"] = time.time() - start
            return result
    raise SystemExit(f"side {side!r} printed no result")


def emit_side(result: dict) -> None:
    print("SIDE " + json.dumps(result), flush=True)


def append_to_benchmarks(title: str, command: str, table: str, result_line: str) -> None:
    """Append one dated section to BENCHMARKS.md."""
    path = ROOT / "BENCHMARKS.md"
    if not path.exists():
        path.write_text(
            "# Benchmarks\n\nEach section is appended by a script under `bench/`; ratios compare two sides "
            "measured in the same run, each in its own process.\n"
        )
    stamp = time.strftime("%Y-%m-%d %H:%M")
    with open(path, "a") as f:
        f.write(
            f"\n## {title} ({stamp})\n\nMachine: {machine()}\n\nCommand: `{command.strip()}`\n\n{table}\n\n"
            f"```\n{result_line}\n```\n"
        )
