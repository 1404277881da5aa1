"""The kill matrix: every stage that writes, SIGKILLed at several moments, rerun, compared with a run
that was never interrupted.

Each case runs the real CLI (`python -m zephyr.cli ...`) in a subprocess on a tiny random Llama (built
like tests/support/models.py, with the embedded model's tokenizer) or, with ``--embedded``, on the
embedded SmolLM2-135M-Instruct; kills it at a moment; reruns the same command to completion; and
compares what it left with the uninterrupted run:

- generate, feedback: killed after the first row, half the rows and all but the last row appeared in
  the output; rows lost (a prompt_id of the uninterrupted run missing) and duplicated (one twice);
- sft, dpo: killed between checkpoints (checkpoint-2 just appeared), during the checkpoint-4 save and
  during the final save (``ZEPHYR_TEST_PAUSE_AT``, see zephyr.train.checkpoints); the final weights must
  equal the uninterrupted run's bit for bit, and the run must be finished (model card, trainer_state.json
  at max_steps);
- run (`zephyr run` of sft -> dpo): only the pipeline process is killed, during sft's checkpoint-4 save,
  sft's final save, and dpo's training; its stage process must not outlive it.

    python bench/kill_matrix.py                  # tiny model, every stage (~4 minutes on 2 CPU cores)
    python bench/kill_matrix.py --only sft,run   # some stages
    python bench/kill_matrix.py --embedded       # the embedded model (much slower)

The last line sums it up: kills, rows lost, rows duplicated, runs whose final weights differ (all 0 but
the kills); the exit status is 1 when any of those, or a failed rerun or a leftover process, is not 0.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

MAX_STEPS = 4
TRAINING = {
    "max_steps": MAX_STEPS,
    "save_strategy": "steps",
    "save_steps": 2,
    "per_device_train_batch_size": 2,
    "learning_rate": 1e-3,
    "logging_steps": 1,
    "report_to": "none",
    "use_cpu": True,
    "seed": 7,
}
SFT = {"dataset_mixer": {"zephyr:demo_sft": 1.0}, "dataset_splits": ["train"], "max_train_samples": 16}
DPO = {"dataset_mixer": {"zephyr:demo_prefs": 1.0}, "dataset_splits": ["train"], "max_train_samples": 16}
PROMPTS = 12


@dataclass
class Case:
    stage: str
    moment: str
    pause: str | None = None  # ZEPHYR_TEST_PAUSE_AT
    rows: int | None = None  # kill once the output has this many lines
    appears: str | None = None  # kill once this path (under the case dir) exists


@dataclass
class Outcome:
    case: Case
    killed: bool = False
    rerun_ok: bool = False
    rows_lost: int = 0
    rows_duplicated: int = 0
    weights_differ: bool = False
    unfinished: list[str] = field(default_factory=list)
    orphans: int = 0
    seconds: float = 0.0


CASES = [
    *(
        Case(s, f"after {label} rows", rows=n)
        for s in ("generate", "feedback")
        for label, n in (("1", 1), ("half the", PROMPTS // 2), ("all but 1", PROMPTS - 1))
    ),
    *(
        c
        for s in ("sft", "dpo")
        for c in (
            Case(s, "between checkpoints", appears="out/checkpoint-2"),
            Case(s, "during checkpoint-4 save", pause="checkpoint-4"),
            Case(s, "during the final save", pause="final-save"),
        )
    ),
    Case("sft", "moving the final files in", pause="final-move"),
    Case("run", "during sft checkpoint-4 save", pause="checkpoint-4"),
    Case("run", "during sft final save", pause="final-save"),
    Case("run", "during dpo training", appears="run/dpo/model/checkpoint-2"),
]


# ---- inputs -----------------------------------------------------------------------------------------


def make_model(root: Path, embedded: bool) -> str:
    from zephyr.models import resolve_model

    embedded_dir = resolve_model("smollm2-135m-instruct")
    if embedded:
        return embedded_dir
    from transformers import AutoTokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from support.models import make_tiny_model  # the tests' own tiny model: the same runs they check

    out = root / "tiny-llama"
    make_tiny_model().save_pretrained(out)
    AutoTokenizer.from_pretrained(embedded_dir).save_pretrained(out)
    return str(out)


def recipe(stage: str, case_dir: Path, model: str, shared: Path) -> list[str]:
    """The `zephyr ...` arguments of one stage's run in ``case_dir`` (its recipe written there)."""
    backend = {"model": model, "threads": 1}
    if stage == "generate":
        body = {
            "prompts": str(shared / "prompts.jsonl"),
            "output": str(case_dir / "out.jsonl"),
            "teachers": [{"backend": backend, "temperature": 1.0, "max_tokens": 48}],
            "completions_per_prompt": 1,
            "concurrency": 1,
            "progress": False,
            "seed": 1,
        }
    elif stage == "feedback":
        body = {
            "input": str(shared / "completions.jsonl"),
            "output": str(case_dir / "out.jsonl"),
            "judge": backend,
            "max_tokens": 16,
            "critique": False,
            "concurrency": 1,
            "progress": False,
        }
    elif stage in ("sft", "dpo"):
        body = {
            "model_name_or_path": model,
            **(SFT if stage == "sft" else DPO),
            **TRAINING,
            "output_dir": str(case_dir / "out"),
        }
    else:
        body = {
            "run_dir": str(case_dir / "run"),
            "sft": {"model_name_or_path": model, **SFT, **TRAINING},
            "dpo": {**DPO, **TRAINING},
        }
    path = case_dir / "recipe.yaml"
    path.write_text(yaml.safe_dump(body))
    return [stage, str(path)]


# ---- running ----------------------------------------------------------------------------------------


def zephyr(args: list[str], log: Path, pause: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("ZEPHYR_TEST_PAUSE_AT", None)
    if pause:
        env["ZEPHYR_TEST_PAUSE_AT"] = pause
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "zephyr.cli", *args], env=env, stdout=out, stderr=out)


def line_count(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


def reached(case: Case, case_dir: Path, log: Path) -> int | None:
    """The PID that reached the case's moment (0 when the moment is a file), or None if not yet."""
    if case.pause:
        marker = f"paused at {case.pause} (pid "
        text = log.read_text(errors="replace")
        return int(text.split(marker)[1].split(")")[0]) if marker in text else None
    if case.rows is not None:
        return 0 if line_count(case_dir / "out.jsonl") >= case.rows else None
    return 0 if (case_dir / case.appears).exists() else None


def stage_pids(case_dir: Path, parent: int) -> list[int]:
    """The processes of a pipeline's stages: every process but the pipeline whose command line names a
    file under its run dir (found through /proc, so whatever the stage is, torchrun workers included)."""
    marker = str(case_dir / "run").encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) not in (parent, os.getpid()):
            try:
                if marker in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def kill_at(case: Case, args: list[str], case_dir: Path, log: Path) -> tuple[bool, int]:
    """Start the run, SIGKILL it at the case's moment; returns (killed before finishing, orphans left)."""
    proc = zephyr(args, log, case.pause)
    deadline = time.monotonic() + 600
    while (pid := reached(case, case_dir, log)) is None:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return False, 0
        time.sleep(0.01)
    if proc.poll() is not None:  # it finished first: no kill
        return False, 0
    children = stage_pids(case_dir, proc.pid) if case.stage == "run" else []
    proc.send_signal(signal.SIGKILL)  # the pipeline only: its stage must go with it by itself
    proc.wait()
    # A stage that is still there 2 s after its pipeline died was left running (with the parent-death
    # signal it goes within milliseconds); waiting longer would let an orphan finish and look fine.
    orphans = [pid for pid in children if not gone(pid, timeout=2.0)]
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
        gone(pid)
    return True, len(orphans)


def finish(args: list[str], stage: str, log: Path) -> bool:
    extra = ["--resume_from_checkpoint=true"] if stage in ("sft", "dpo") else []
    proc = zephyr(args + extra, log)
    return proc.wait(1200) in (0, 3)  # 3: finished with rows a weak judge could not rate


# ---- comparing --------------------------------------------------------------------------------------


def row_keys(path: Path) -> collections.Counter:
    keys = collections.Counter()
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        if line.strip():
            keys[json.loads(line).get("prompt_id")] += 1
    return keys


def model_dirs(stage: str, case_dir: Path) -> list[Path]:
    if stage == "run":
        return [case_dir / "run" / "sft" / "model", case_dir / "run" / "dpo" / "model"]
    return [case_dir / "out"]


def unfinished(model_dir: Path) -> list[str]:
    problems = [
        f"{model_dir.name}: no {n}"
        for n in ("README.md", "model.safetensors")
        if not (model_dir / n).is_file()
    ]
    if (model_dir / ".final.saving").exists() or any(model_dir.glob(".checkpoint-*")):
        problems.append(f"{model_dir.name}: staging dir left")
    state = model_dir / "trainer_state.json"
    steps = json.loads(state.read_text())["global_step"] if state.is_file() else None
    if steps != MAX_STEPS:
        problems.append(f"{model_dir.name}: {steps} steps, not {MAX_STEPS}")
    return problems


def same_weights(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    if not (a / "model.safetensors").is_file() or not (b / "model.safetensors").is_file():
        return False
    x, y = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def compare(outcome: Outcome, case_dir: Path, clean_dir: Path) -> None:
    stage = outcome.case.stage
    if stage in ("generate", "feedback"):
        got, want = row_keys(case_dir / "out.jsonl"), row_keys(clean_dir / "out.jsonl")
        outcome.rows_lost = len(set(want) - set(got))
        outcome.rows_duplicated = sum(n - 1 for n in got.values() if n > 1)
        return
    for mine, clean in zip(model_dirs(stage, case_dir), model_dirs(stage, clean_dir), strict=True):
        outcome.unfinished += unfinished(mine)
        outcome.weights_differ |= not same_weights(mine, clean)


# ---- the matrix -------------------------------------------------------------------------------------


def prepare_inputs(root: Path, model: str) -> None:
    shared = root / "inputs"
    shared.mkdir()
    prompts = [{"prompt": f"Write one sentence about topic number {i}."} for i in range(PROMPTS)]
    (shared / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    # feedback rates what an uninterrupted generate wrote
    case_dir = root / "inputs-generate"
    case_dir.mkdir()
    if not finish(recipe("generate", case_dir, model, shared), "generate", case_dir / "log.txt"):
        raise SystemExit(f"generating the feedback input failed; see {case_dir / 'log.txt'}")
    (shared / "completions.jsonl").write_bytes((case_dir / "out.jsonl").read_bytes())


def run_case(case: Case, index: int, root: Path, model: str) -> Outcome:
    started = time.monotonic()
    case_dir = root / f"{case.stage}-{index}"
    case_dir.mkdir()
    log = case_dir / "log.txt"
    args = recipe(case.stage, case_dir, model, root / "inputs")
    outcome = Outcome(case)
    outcome.killed, outcome.orphans = kill_at(case, args, case_dir, log)
    outcome.rerun_ok = finish(args, case.stage, log)
    compare(outcome, case_dir, root / f"{case.stage}-clean")
    outcome.seconds = time.monotonic() - started
    return outcome


def table(outcomes: list[Outcome]) -> str:
    head = (
        f"{'stage':9s} {'moment':32s} {'killed':6s} {'rerun':5s} {'lost':>4s} {'dup':>4s} {'weights':8s} "
        f"{'orphan':>6s} {'s':>5s}  notes"
    )
    lines = [head, "-" * len(head)]
    for o in outcomes:
        training = o.case.stage in ("sft", "dpo", "run")
        weights = ("DIFFER" if o.weights_differ else "same") if training else "-"
        lines.append(
            f"{o.case.stage:9s} {o.case.moment:32s} {'yes' if o.killed else 'MISSED':6s} "
            f"{'ok' if o.rerun_ok else 'FAIL':5s} {o.rows_lost:4d} {o.rows_duplicated:4d} {weights:8s} "
            f"{o.orphans:6d} {o.seconds:5.0f}  {'; '.join(o.unfinished)}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--embedded", action="store_true", help="Use the embedded SmolLM2-135M-Instruct")
    parser.add_argument("--only", help="Comma-separated stages (generate,feedback,sft,dpo,run)")
    parser.add_argument("--workdir", help="Keep everything here (default: a temporary dir, removed)")
    opts = parser.parse_args()
    stages = opts.only.split(",") if opts.only else ["generate", "feedback", "sft", "dpo", "run"]
    with tempfile.TemporaryDirectory(prefix="kill-matrix-", dir=opts.workdir) as tmp:
        root = Path(tmp)
        started = time.monotonic()
        model = make_model(root, opts.embedded)
        prepare_inputs(root, model)
        for stage in stages:  # the uninterrupted runs everything is compared with
            clean = root / f"{stage}-clean"
            clean.mkdir()
            if not finish(recipe(stage, clean, model, root / "inputs"), stage, clean / "log.txt"):
                raise SystemExit(f"the uninterrupted {stage} run failed; see {clean / 'log.txt'}")
        outcomes = []
        for i, case in enumerate(c for c in CASES if c.stage in stages):
            outcomes.append(run_case(case, i, root, model))
            print(table(outcomes[-1:]).splitlines()[-1] if outcomes[1:] else table(outcomes), flush=True)
        print("\n" + table(outcomes))
        totals = {
            "kills": sum(o.killed for o in outcomes),
            "rows lost": sum(o.rows_lost for o in outcomes),
            "rows duplicated": sum(o.rows_duplicated for o in outcomes),
            "runs whose final weights differ": sum(o.weights_differ for o in outcomes),
            "reruns failed or unfinished": sum(not o.rerun_ok or bool(o.unfinished) for o in outcomes),
            "stage processes left running": sum(o.orphans for o in outcomes),
        }
        print(f"\n({time.monotonic() - started:.0f} s)")
        print(", ".join(f"{k}: {v}" for k, v in totals.items()))
        return 1 if any(v for k, v in totals.items() if k != "kills") else 0


if __name__ == "__main__":
    sys.exit(main())
