"""Evaluation generation speed: the built-in MT-Bench set answered with batching, against one at a time.

Both sides run `zephyr eval mt-bench --model MODEL` (answers only, no judge) on the same questions
with FastChat's rules (per-category temperatures, turn 2 after the model's own turn 1, up to 1024
new tokens per turn), each in its own process. The batched side keeps every question in flight at
once (the default `--concurrency`); the sequential side answers one question at a time. Reported:
wall time (model load included), generated tokens and tokens/s per side. Floors: the batched side
answers the 16 x 2 built-in set in under 5 minutes on CPU; speedup is the ratio of tokens/s
(sampled answers could differ in length between the sides, so rates are compared, not times).

    python bench/eval_generation.py                     # embedded model, built-in set, recorded
    python bench/eval_generation.py --model DIR --no-record

Ends with `RESULT batched_s=... speedup=...`; exits 1 when the 5-minute floor is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_to_benchmarks, emit_side, run_side

MAX_BATCHED_S = 300.0


def side(opts, concurrency: int) -> dict:
    from zephyr.evaluate.benchmarks import mt_bench
    from zephyr.evaluate.settings import MTBenchSettings
    from zephyr.models import load_tokenizer

    out = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    settings = MTBenchSettings(
        model=opts.model,
        model_name="bench",
        output_dir=str(out),
        concurrency=concurrency,
        questions=opts.questions,
        max_new_tokens=opts.max_new_tokens,
    )
    start = time.perf_counter()
    mt_bench(settings)
    seconds = time.perf_counter() - start
    tokenizer = load_tokenizer(opts.model)
    records = [json.loads(line) for line in (out / "model_answer" / "bench.jsonl").read_text().splitlines()]
    turns = [t for r in records for t in r["choices"][0]["turns"]]
    tokens = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in turns)
    return {
        "questions": len(records),
        "turns": len(turns),
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=["batched", "sequential"], help="internal: run one side")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--questions", default=None, help="FastChat question file (default: the built-in 16)")
    p.add_argument("--max-new-tokens", type=int, default=1024)
    p.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    opts = p.parse_args()
    if opts.side:
        from zephyr.generation.jobs import DEFAULT_CONCURRENCY

        emit_side(side(opts, DEFAULT_CONCURRENCY if opts.side == "batched" else 1))
        return
    args = sys.argv[1:]
    batched = run_side(__file__, "batched", args)
    sequential = run_side(__file__, "sequential", args)
    speedup = batched["tokens_per_s"] / sequential["tokens_per_s"]
    rows = [
        ("batched (all questions in flight)", batched),
        ("sequential (one question at a time)", sequential),
    ]
    table = "\n".join(
        ["| side | questions | turns | generated tokens | wall s | tokens/s |", "|---|---|---|---|---|---|"]
        + [
            f"| {name} | {r['questions']} | {r['turns']} | {r['tokens']} | {r['seconds']:.1f} | {r['tokens_per_s']:.1f} |"
            for name, r in rows
        ]
    )
    table += (
        f"\n\nmodel {opts.model}, {'built-in 16-question set' if not opts.questions else opts.questions}, "
        f"FastChat temperatures, max {opts.max_new_tokens} new tokens per turn. Floor: batched under "
        f"{MAX_BATCHED_S:.0f} s."
    )
    result = f"RESULT batched_s={batched['seconds']:.1f} speedup={speedup:.2f}"
    print(table)
    print(result)
    if not opts.no_record:
        append_to_benchmarks(
            "MT-Bench answer generation: batched vs one at a time",
            "python bench/eval_generation.py " + " ".join(args),
            table,
            result,
        )
    if batched["seconds"] > MAX_BATCHED_S:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
