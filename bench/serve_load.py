"""Load test of `zephyr serve`: many concurrent chat requests against the same requests one at a time.

Starts the server as a subprocess on 127.0.0.1 (the embedded model by default), warms it up, sends
all requests at once through the official `openai` async client, then sends the same requests
sequentially. Reports requests/s, generated tokens/s and p50/p95 latency for both, and the speedup
of dynamic batching (concurrent tokens/s over sequential tokens/s). Floors: speedup >= 3, no failures.

Then, with zephyr's server stopped, the same concurrent load goes to the peer: transformers' own
OpenAI-compatible server, `transformers serve --continuous-batching`, on the same checkpoint (each
side alone on the machine, one after the other). `vs_peer` is zephyr's concurrent tokens/s over the
peer's. `--peer none` skips it.

    python bench/serve_load.py                      # 64 requests, 48 tokens each, recorded in BENCHMARKS.md
    python bench/serve_load.py --requests 16 --no-record

Ends with `RESULT speedup=... failed=... vs_peer=...`; exits 1 when a floor is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_to_benchmarks

MIN_SPEEDUP = 3.0

TOPICS = [
    "the sea",
    "a mountain",
    "coffee",
    "rain",
    "a library",
    "trains",
    "the moon",
    "bread",
    "winter",
    "a cat",
    "music",
    "a garden",
    "bicycles",
    "the desert",
    "a lighthouse",
    "chess",
]
# Open-ended asks, so replies usually run to max_tokens and both phases generate about the same tokens.
ASKS = [
    "Write a short story about {}.",
    "Explain in detail why people love {}.",
    "Describe {} to a child, in detail.",
    "Write a poem about {}.",
]


def prompts(count: int) -> list[str]:
    return [ASKS[i % len(ASKS)].format(TOPICS[(i // len(ASKS)) % len(TOPICS)]) for i in range(count)]


@dataclass
class Phase:
    name: str
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    failed: int = 0
    wall: float = 0.0
    note: str = ""

    @property
    def done(self) -> int:
        return len(self.latencies)

    def row(self) -> str:
        lat = sorted(self.latencies) or [float("nan")]
        p95 = lat[min(len(lat) - 1, round(0.95 * (len(lat) - 1)))]
        return (
            f"| {self.name} | {self.done} | {self.failed} | {self.wall:.1f} | {self.done / self.wall:.2f} | "
            f"{self.tokens / self.wall:.1f} | {statistics.median(lat):.2f} | {p95:.2f} |"
        )

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0


TABLE_HEAD = (
    "| mode | requests | failed | wall s | requests/s | tokens/s | p50 latency s | p95 latency s |\n"
    "|---|---|---|---|---|---|---|---|"
)


async def ask(client, model: str, prompt: str, args, phase: Phase) -> None:
    start = time.perf_counter()
    try:
        reply = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=args.max_tokens,
            temperature=0,
        )
    except Exception as exc:  # noqa: BLE001 - any failure counts; the first few are printed
        phase.failed += 1
        if phase.failed <= 3:
            print(f"  {phase.name} request failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return
    phase.latencies.append(time.perf_counter() - start)
    phase.tokens += reply.usage.completion_tokens


async def run_phases(url: str, args) -> tuple[Phase, Phase]:
    from openai import AsyncOpenAI

    concurrent = await run_concurrent(url, args, "concurrent")
    print(f"concurrent: {concurrent.done} requests in {concurrent.wall:.1f} s", flush=True)
    client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=args.request_timeout)
    model = (await client.models.list()).data[0].id
    work = prompts(args.requests)

    sequential = Phase("sequential")
    start = time.perf_counter()
    for i, p in enumerate(work):
        if time.perf_counter() - start > args.sequential_budget:
            sequential.note = (
                f" The sequential phase stopped at its {args.sequential_budget:.0f} s budget "
                f"after {i} requests."
            )
            break
        await ask(client, model, p, args, sequential)
    sequential.wall = time.perf_counter() - start
    print(f"sequential: {sequential.done} requests in {sequential.wall:.1f} s", flush=True)
    await client.close()
    return concurrent, sequential


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zephyr_command(args, port: int) -> list[str]:
    cmd = [
        sys.executable,
        "-m",
        "zephyr.cli",
        "serve",
        args.model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    cmd += ["--max-batch-size", str(args.max_batch_size)]
    return cmd + (["--threads", str(args.threads)] if args.threads else [])


def peer_command(args, port: int) -> list[str]:
    """transformers serve on the same weights: the checkpoint zephyr resolves the model spec to."""
    from zephyr.models import resolve_model

    checkpoint = resolve_model(args.model)
    transformers_cli = str(Path(sys.executable).with_name("transformers"))
    return [transformers_cli, "serve", checkpoint, "--continuous-batching", "--host", "127.0.0.1"] + [
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--device",
        "cpu",
        "--log-level",
        "warning",
    ]


def start_server(
    args, log_file, command=zephyr_command, health: str = "/health"
) -> tuple[subprocess.Popen, str]:
    """Start a server from ``command(args, port)`` and wait until ``health`` answers."""
    port = free_port()
    proc = subprocess.Popen(command(args, port), stdout=log_file, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.startup_timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url + health, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    log_file.seek(0)
    raise SystemExit(f"The server did not come up:\n{log_file.read().decode(errors='replace')[-3000:]}")


def run_peer(args) -> Phase:
    """The same concurrent load against the peer server (zephyr's is stopped by then)."""
    with tempfile.TemporaryFile() as log_file:
        proc, url = start_server(args, log_file, peer_command)
        try:
            peer = asyncio.run(run_concurrent(url, args, "peer: transformers serve --continuous-batching"))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"peer: {peer.done} requests in {peer.wall:.1f} s", flush=True)
    return peer


async def run_concurrent(url: str, args, name: str) -> Phase:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=args.request_timeout)
    model = (await client.models.list()).data[0].id
    await ask(client, model, "Hello!", args, Phase("warm-up"))
    phase = Phase(name)
    start = time.perf_counter()
    await asyncio.gather(*(ask(client, model, p, args, phase) for p in prompts(args.requests)))
    phase.wall = time.perf_counter() - start
    await client.close()
    return phase


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--threads", type=int, default=None, help="Passed to `zephyr serve --threads`")
    parser.add_argument(
        "--sequential-budget",
        type=float,
        default=300.0,
        help="Stop the one-at-a-time phase after this many seconds (rates stay comparable)",
    )
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument(
        "--peer", choices=["transformers", "none"], default="transformers", help="Also load the peer server"
    )
    parser.add_argument("--no-record", action="store_true", help="Do not append the result to BENCHMARKS.md")
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()[0]

    with tempfile.TemporaryFile() as log_file:
        proc, url = start_server(args, log_file)
        try:
            concurrent, sequential = asyncio.run(run_phases(url, args))
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    peer = run_peer(args) if args.peer != "none" else None
    speedup = concurrent.tokens_per_s / sequential.tokens_per_s if sequential.tokens_per_s else float("nan")
    failed = concurrent.failed + sequential.failed
    ok = speedup >= MIN_SPEEDUP and failed == 0
    rows = [TABLE_HEAD, concurrent.row(), sequential.row()] + ([peer.row()] if peer else [])
    table = "\n".join(rows)
    print("\n" + table + "\n")
    result = f"RESULT speedup={speedup:.2f} failed={failed}"
    if peer:
        vs_peer = concurrent.tokens_per_s / peer.tokens_per_s if peer.tokens_per_s else float("nan")
        result += f" vs_peer={vs_peer:.2f} peer_failed={peer.failed}"
    if not args.no_record:
        command = shlex.join(["python", "bench/serve_load.py", *(argv if argv is not None else sys.argv[1:])])
        notes = (
            f"{args.requests} chat requests to `{args.model}`, max_tokens {args.max_tokens}, greedy, batches of "
            f"up to {args.max_batch_size}; load average {load_at_start:.1f} at the start, "
            f"{os.getloadavg()[0]:.1f} at the end. Speedup is concurrent tokens/s over sequential tokens/s "
            f"(floor {MIN_SPEEDUP:.0f}x, zero failures): floors {'met' if ok else 'MISSED'}.{sequential.note}"
        )
        if peer:
            notes += (
                " The peer row is `transformers serve --continuous-batching` (fp32, CPU) on the same checkpoint, "
                "same requests all at once, started after zephyr's server had stopped; `vs_peer` is zephyr's "
                "concurrent tokens/s over the peer's."
            )
        append_to_benchmarks(
            "Serving load: dynamic batching vs one request at a time", command, table + "\n\n" + notes, result
        )
    print(result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
