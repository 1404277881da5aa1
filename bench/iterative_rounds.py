"""Do iterative rounds improve the model round after round? The rubric-judged loop on the embedded model.

Runs recipes/iterative/pipeline.yaml (`zephyr run`, in its own process) with its prompts swapped for
AlpacaEval's instructions from ../shared/data: the first `--held-out` are the held-out set every round's
eval answers (greedy), the rest are the pool the rounds sample from, `--prompts-per-round` fresh ones per
round. The judge is the recipe's rubric, a rule set a program checks (by default: 5 to 40 words), so
the measured rate is exact and the judge cannot drift between rounds. Round 0 is the starting model.

The table gives, per round, the held-out satisfaction rate with its binomial standard error, the mean
share of rules passed, the mean reply length, the satisfaction rate of the round's own samples (what its
DPO learned from) and the number of pairs it trained on. Exits 1 unless the held-out rate rises from each
round to the next and the last round is above round 0 by two combined standard errors.

    python bench/iterative_rounds.py                    # 3 rounds, 64 prompts each, 100 held out
    python bench/iterative_rounds.py --rounds 1 --prompts-per-round 8 --held-out 8 --no-record  # quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED_DATA, append_to_benchmarks

INSTRUCTIONS = SHARED_DATA / "alpaca_eval" / "instructions.jsonl"
RECIPE = ROOT / "recipes" / "iterative" / "pipeline.yaml"


def split_prompts(held_out: int, pool: int, out: Path) -> tuple[Path, Path]:
    rows = [
        json.loads(line) for line in INSTRUCTIONS.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    if len(rows) < held_out + pool:
        raise SystemExit(f"{INSTRUCTIONS} has {len(rows)} instructions; need {held_out + pool}")
    evals, train = out / "held_out.jsonl", out / "pool.jsonl"
    evals.write_text("".join(json.dumps({"prompt": r["instruction"]}) + "\n" for r in rows[:held_out]))
    train.write_text("".join(json.dumps({"prompt": r["instruction"]}) + "\n" for r in rows[held_out:][:pool]))
    return evals, train


def round_rows(run: Path, rounds: int) -> list[dict]:
    rows = []
    for k in range(rounds + 1):
        (result,) = (run / f"round{k}" / "eval" / "rules").glob("*/results.json")
        r = json.loads(result.read_text())
        row = {
            "round": k,
            "rate": r["satisfied"],
            "se": r["satisfied_se"],
            "score": r["mean_score"],
            "words": r["mean_words"],
            "n": r["n"],
        }
        if k:
            rated = [
                json.loads(x)
                for x in (run / f"round{k}" / "feedback" / "rated.jsonl").read_text().splitlines()
            ]
            ratings = [c["fine-grained_score"] for row_ in rated for c in row_["completions"]]
            report = json.loads(
                (run / f"round{k}" / "binarize" / "data" / "binarize_report.json").read_text()
            )
            row["sample_rate"] = sum(s == 5.0 for s in ratings) / len(ratings)
            row["pairs"] = report["splits"]["train_prefs"]
        rows.append(row)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--prompts-per-round", type=int, default=64)
    p.add_argument("--held-out", type=int, default=100)
    p.add_argument("--completions", type=int, default=4, help="samples per prompt each round")
    p.add_argument("--learning-rate", type=float, default=None, help="default: the recipe's")
    p.add_argument("--run-dir", default=None, help="keep the run here (default: a temporary directory)")
    p.add_argument("--no-record", action="store_true", help="do not append to BENCHMARKS.md")
    opts = p.parse_args()
    if not INSTRUCTIONS.exists():
        raise SystemExit(f"benchmark data not found: {INSTRUCTIONS}")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(opts.run_dir or tmp)
        base.mkdir(parents=True, exist_ok=True)
        evals, pool = split_prompts(opts.held_out, opts.rounds * opts.prompts_per_round, base)
        run = base / "run"
        overrides = {
            "run_dir": run,
            "rounds.count": opts.rounds,
            "rounds.prompts_per_round": opts.prompts_per_round,
            "rounds.generate.prompts": pool,
            "rounds.generate.completions_per_prompt": opts.completions,
            "rounds.generate.progress": "false",
            "rounds.feedback.progress": "false",
            "rounds.eval.rules.prompts": evals,
        }
        if opts.learning_rate is not None:
            overrides["rounds.dpo.learning_rate"] = opts.learning_rate
        args = [f"--{k}={v}" for k, v in overrides.items()]
        command = [sys.executable, "-m", "zephyr.cli", "run", str(RECIPE), *args]
        env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
        start = time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
            raise SystemExit(f"`zephyr run` failed with exit code {proc.returncode}")
        rows = round_rows(run, opts.rounds)
    print_and_record(rows, opts, seconds)


def print_and_record(rows: list[dict], opts, seconds: float) -> None:
    header = "| round | held-out satisfied | ± s.e. | mean share of rules passed | mean words | samples satisfied | pairs |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        sample = f"{r['sample_rate']:.3f}" if "sample_rate" in r else "-"
        pairs = str(r.get("pairs", "-"))
        lines.append(
            f"| {r['round']} | {r['rate']:.3f} | {r['se']:.3f} | {r['score']:.3f} | {r['words']:.1f} | {sample} | {pairs} |"
        )
    table = "\n".join(lines)
    rising = all(b["rate"] > a["rate"] for a, b in zip(rows, rows[1:], strict=False))
    first, last = rows[0], rows[-1]
    gap_se = math.sqrt(first["se"] ** 2 + last["se"] ** 2)
    significant = last["rate"] - first["rate"] > 2 * gap_se
    result = "RESULT " + " ".join(f"round{r['round']}={r['rate']:.3f}±{r['se']:.3f}" for r in rows)
    result += f" rising={rising} last_minus_first_over_2se={significant} minutes={seconds / 60:.1f}"
    print(table)
    print(result)
    if not opts.no_record:
        note = (
            f"\n\n{opts.rounds} rounds of {opts.prompts_per_round} fresh AlpacaEval instructions x {opts.completions} "
            f"samples from the round's model; held-out: the first {opts.held_out} instructions, answered greedily. "
            f"Rubric and training settings: recipes/iterative/pipeline.yaml. Whole run {seconds / 60:.1f} min "
            "(the rates do not depend on the machine's load: sampling and greedy decoding are seeded)."
        )
        command = " ".join(shlex.quote(a) for a in ["python", "bench/iterative_rounds.py", *sys.argv[1:]])
        append_to_benchmarks("Iterative rounds: rule satisfaction per round", command, table + note, result)
    sys.exit(0 if rising and significant else 1)


if __name__ == "__main__":
    main()
