"""Dialogue distillation speed: `zephyr dialogue` batched across dialogues, against one dialogue at a time.

Both sides make the same dialogues (the first N built-in seeds, a fixed number of exchanges each, the
same model as user simulator and teacher, the same seeds for every draw and sample), each side in its
own process. The batched side keeps every dialogue open at once, so each round is one batch of user
turns and one batch of answers; the sequential side (`concurrency: 1`) finishes one dialogue before
starting the next. Sides alternate (B S, then S B, ...) for `--repeats` rounds and each keeps its best,
so a burst of load from other jobs on a shared machine hurts one measurement, not the ratio. Timed:
the stage itself, after the model is loaded. Reported: dialogues per minute, exchanges, generated
tokens and tokens/s per side; the speedup is the ratio of dialogues per minute (sampled turns can
differ in length between the sides: the tokens/s ratio is printed beside it).

    python bench/dialogue_speed.py                              # embedded model, 12 dialogues x 2 turns
    python bench/dialogue_speed.py --dialogues 2 --turns 1 --max-tokens 8 --repeats 1 --no-record

Ends with `RESULT batched_dpm=... sequential_dpm=... speedup=...`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_to_benchmarks, emit_side, run_side


def side(opts, concurrency: int) -> dict:
    from zephyr.config import parse_config
    from zephyr.distill.dialogue import DialogueConfig, dialogue

    out = Path(tempfile.mkdtemp(prefix="bench-dialogue-")) / "dialogues.jsonl"
    backend = {"model": opts.model, "dtype": "float32"}
    settings = {
        "seeds": "zephyr:dialogue_seeds",
        "max_dialogues": opts.dialogues,
        "output": str(out),
        "simulator": {"name": "user", "backend": backend, "temperature": 0.8, "max_tokens": opts.max_tokens},
        "teachers": [
            {"name": "teacher", "backend": backend, "temperature": 0.7, "max_tokens": opts.max_tokens}
        ],
        "turns": {sector: opts.turns for sector in ("world", "writing", "materials")},
        "transcript_chars": 3000,
        "concurrency": concurrency,
        "progress": False,
    }
    (cfg,) = parse_config([DialogueConfig], None, settings)
    result = dialogue(cfg)
    made = result.stage.written + result.stage.rejected
    seconds = result.stage.seconds
    return {
        "dialogues": made,
        "exchanges": result.report["exchanges"],
        "tokens": result.stage.tokens,
        "seconds": seconds,
        "dialogues_per_min": 60 * made / seconds,
        "tokens_per_s": result.stage.tokens / seconds,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--side", choices=["batched", "sequential"], help="internal: run one side")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--dialogues", type=int, default=12, help="dialogues per side (first N built-in seeds)")
    p.add_argument("--turns", type=int, default=2, help="exchanges per dialogue (every sector)")
    p.add_argument("--max-tokens", type=int, default=48, help="longest user turn and answer")
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per side; the best is kept")
    p.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    opts = p.parse_args()
    if opts.side:
        emit_side(side(opts, opts.dialogues if opts.side == "batched" else 1))
        return
    args = [a for a in sys.argv[1:] if a != "--no-record"]
    runs: dict[str, list[dict]] = {"batched": [], "sequential": []}
    for r in range(opts.repeats):
        order = ("batched", "sequential") if r % 2 == 0 else ("sequential", "batched")
        for name in order:
            runs[name].append(run_side(__file__, name, args))
            print(f"{name}: {runs[name][-1]['dialogues_per_min']:.2f} dialogues/min", flush=True)
    best = {name: max(results, key=lambda x: x["dialogues_per_min"]) for name, results in runs.items()}
    batched, sequential = best["batched"], best["sequential"]
    speedup = batched["dialogues_per_min"] / sequential["dialogues_per_min"]
    token_ratio = batched["tokens_per_s"] / sequential["tokens_per_s"] if sequential["tokens_per_s"] else 0.0
    rows = [
        (f"batched (all {opts.dialogues} dialogues open)", batched),
        ("sequential (one dialogue at a time)", sequential),
    ]
    table = "\n".join(
        [
            "| side | dialogues | exchanges | generated tokens | stage s | dialogues/min | tokens/s |",
            "|---|---|---|---|---|---|---|",
        ]
        + [
            f"| {name} | {r['dialogues']} | {r['exchanges']} | {r['tokens']} | {r['seconds']:.1f} | "
            f"{r['dialogues_per_min']:.2f} | {r['tokens_per_s']:.1f} |"
            for name, r in rows
        ]
    )
    table += (
        f"\n\nmodel {opts.model} as user simulator and teacher (fp32), the first {opts.dialogues} built-in "
        f"seeds, {opts.turns} exchange(s) each, at most {opts.max_tokens} tokens per turn; best of "
        f"{opts.repeats} alternating run(s) per side, model loading not timed. tokens/s ratio {token_ratio:.2f}."
    )
    result = (
        f"RESULT batched_dpm={batched['dialogues_per_min']:.2f} "
        f"sequential_dpm={sequential['dialogues_per_min']:.2f} speedup={speedup:.2f}"
    )
    print(table)
    print(result)
    if not opts.no_record:
        append_to_benchmarks(
            "Dialogue distillation: batched across dialogues vs one at a time",
            "python bench/dialogue_speed.py " + " ".join(args),
            table,
            result,
        )


if __name__ == "__main__":
    main()
