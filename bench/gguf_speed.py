"""What a GGUF export buys on a CPU: the same chat load through llama.cpp (q8_0 and f16) and `zephyr serve`.

Exports the model once per type with `zephyr export --format gguf` into a temporary directory, then sends
the same 64 chat requests (all at once, greedy, `--max-tokens` each) to three servers, one at a time
and each alone on the machine:

- `zephyr serve` on the checkpoint (fp32, dynamic batching);
- llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`) on the q8_0 file;
- the same server on the f16 file.

llama-cpp-python's server answers one request at a time (its requests queue behind a lock), so its
figure is llama.cpp's single-stream speed under a concurrent load; the C++ `llama-server` with
parallel slots is not built by the package and is not measured here. The sides run in the order
zephyr, q8_0, f16, zephyr, q8_0, f16 and each keeps its better run (the machine is shared and noisy).

    pip install 'llama-cpp-python[server]==0.3.36'   # builds llama.cpp from source, ~5 min on 2 cores
    python bench/gguf_speed.py                        # recorded in BENCHMARKS.md
    python bench/gguf_speed.py --requests 16 --no-record

Ends with `RESULT q8_0_vs_zephyr=... f16_vs_zephyr=... failed=...` (tokens/s ratios, above 1 means
llama.cpp is faster).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_to_benchmarks
from serve_load import TABLE_HEAD, Phase, run_concurrent, start_server, zephyr_command

OUTTYPES = ("q8_0", "f16")


def export(model: str, outtype: str, root: Path) -> Path:
    from zephyr.export import export_gguf

    return export_gguf(model, root / outtype, outtype=outtype, modelfile=False).gguf


# llama_cpp.server with the weights in llama.cpp's plain CPU layout: 0.3.36's repacked (AVX-512/AMX)
# layouts crash on quantized models on some CPUs (the CLI's `llama-server --no-repack` does the same).
PLAIN_LAYOUT_SERVER = """
import runpy
import llama_cpp.llama_cpp as lib
default = lib.llama_model_default_params
def plain_layout():
    params = default()
    params.use_extra_bufts = False
    return params
lib.llama_model_default_params = plain_layout
runpy.run_module("llama_cpp.server", run_name="__main__")
"""


def llama_cpp_command(gguf: Path, threads: int, repack: bool):
    def command(args, port: int) -> list[str]:
        return [
            sys.executable,
            *(["-m", "llama_cpp.server"] if repack else ["-c", PLAIN_LAYOUT_SERVER]),
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads),
            "--n_ctx",
            "2048",
        ]

    return command


def measure(args, name: str, command, health: str) -> Phase:
    with tempfile.TemporaryFile() as log_file:
        proc, url = start_server(args, log_file, command, health)
        try:
            phase = asyncio.run(run_concurrent(url, args, name))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"{name}: {phase.done} requests, {phase.tokens} tokens in {phase.wall:.1f} s", flush=True)
    return phase


def best(phases: list[Phase]) -> Phase:
    return max(phases, key=lambda p: (p.done - p.failed, p.tokens_per_s))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--max-batch-size", type=int, default=32, help="`zephyr serve --max-batch-size`")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for every server")
    parser.add_argument("--repeats", type=int, default=2, help="Runs per side, alternating; the best is kept")
    parser.add_argument("--request-timeout", type=float, default=900.0)
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument(
        "--repack",
        action="store_true",
        help="Let llama.cpp repack weights for the CPU (crashes on some AVX-512 CPUs)",
    )
    parser.add_argument("--no-record", action="store_true", help="Do not append the result to BENCHMARKS.md")
    args = parser.parse_args(argv)
    try:
        import llama_cpp  # noqa: F401
        import sse_starlette  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"{exc}: install the peer with `pip install 'llama-cpp-python[server]'`") from exc
    load_at_start = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        files = {t: export(args.model, t, Path(tmp)) for t in OUTTYPES}
        sizes = {t: files[t].stat().st_size / 2**20 for t in OUTTYPES}
        # llama_cpp.server has no /health route; its model list answers once the model is loaded.
        sides = {"zephyr serve (fp32 checkpoint, batched)": (zephyr_command, "/health")} | {
            f"llama.cpp {t} (llama_cpp.server)": (
                llama_cpp_command(files[t], args.threads, args.repack),
                "/v1/models",
            )
            for t in OUTTYPES
        }
        runs: dict[str, list[Phase]] = {name: [] for name in sides}
        for _ in range(args.repeats):
            for name, (command, health) in sides.items():
                runs[name].append(measure(args, name, command, health))
    kept = {name: best(phases) for name, phases in runs.items()}
    zephyr_name, q8_name, f16_name = sides
    base = kept[zephyr_name].tokens_per_s
    ratios = {
        t: kept[n].tokens_per_s / base if base else float("nan")
        for t, n in zip(OUTTYPES, (q8_name, f16_name), strict=True)
    }
    failed = sum(p.failed for phases in runs.values() for p in phases)

    table = "\n".join([TABLE_HEAD] + [kept[name].row() for name in sides])
    result = f"RESULT q8_0_vs_zephyr={ratios['q8_0']:.2f} f16_vs_zephyr={ratios['f16']:.2f} failed={failed}"
    print("\n" + table + "\n")
    if not args.no_record:
        command = shlex.join(["python", "bench/gguf_speed.py", *(argv if argv is not None else sys.argv[1:])])
        every = "; ".join(
            f"{name}: " + ", ".join(f"{p.tokens_per_s:.1f}" for p in phases) for name, phases in runs.items()
        )
        notes = (
            f"{args.requests} chat requests to `{args.model}`, all at once, max_tokens {args.max_tokens}, greedy, "
            f"{args.threads} threads per server, llama.cpp weights {'repacked' if args.repack else 'in the plain layout (no repack)'}; each server alone on the machine, sides alternated "
            f"{args.repeats} times and the best run kept (tokens/s of every run: {every}). GGUF files from "
            f"`zephyr export --format gguf`: q8_0 {sizes['q8_0']:.0f} MiB, f16 {sizes['f16']:.0f} MiB. "
            "llama-cpp-python's server (0.3.36) decodes one request at a time, so its rows are llama.cpp's "
            "single-stream speed under this load, against zephyr's batched fp32 serving. Load average "
            f"{load_at_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end."
        )
        append_to_benchmarks(
            "GGUF export: llama.cpp against zephyr serve", command, table + "\n\n" + notes, result
        )
    print(result)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
