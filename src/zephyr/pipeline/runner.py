"""`zephyr run RECIPE.yaml`: the whole recipe as one resumable sequence of stages.

A pipeline recipe has a ``run_dir`` and one section per stage (generate, feedback, binarize, clean,
sft, one alignment stage of dpo, kto, orpo, cpo or simpo, eval, report, export; any subset, in that order).
Each section holds that stage's own recipe
keys; what a stage needs from an earlier one (its input data, its starting model) is filled in when
the section leaves it out (``zephyr.pipeline.stages``). Every stage runs as its own subcommand,
``zephyr STAGE run_dir/STAGE/recipe.yaml``, so a stage of a pipeline and the same command run by hand
do exactly the same thing.

A stage whose ``stage.json`` records the same key (``zephyr.pipeline.keys``) is skipped; a changed one
is redone (and so is everything downstream, whose keys change with it); one that started but has no
``stage.json`` was interrupted and is resumed (trainers from their last checkpoint, generate/feedback
from their last row).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from zephyr.config import check_keys, load_yaml
from zephyr.errors import ConfigError, ZephyrError
from zephyr.io import output_lock, read_json, write_atomic, write_json
from zephyr.pipeline.keys import input_digests, stage_key
from zephyr.pipeline.stages import ALIGNMENT_STAGES, STAGES, PipelineContext, StageSpec

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"


@dataclass
class Plan:
    run_dir: Path
    stages: list[tuple[StageSpec, dict]]  # (spec, raw section) in pipeline order
    processes: int = 1


@dataclass
class WiredStage:
    spec: StageSpec
    settings: dict
    key: str
    stage_dir: Path
    outputs: dict[str, str]
    produced_before: list[str]  # every output of the stages before this one


def expand_env(value):
    """Replace ${VAR} in every string of a recipe (judge endpoints and keys come from the environment)."""
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return os.path.expandvars(value) if isinstance(value, str) else value


def unset_variables(value) -> set[str]:
    """Names of ${VAR} references left in a recipe because the variable is not set."""
    return set(re.findall(r"\$\{(\w+)\}", yaml.safe_dump(value)))


def load_plan(recipe_path: str | Path, overrides: dict | None = None) -> Plan:
    path = Path(recipe_path)
    if not path.is_file():
        raise ConfigError(f"Pipeline recipe not found: {path}")
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: a pipeline recipe must be a mapping (run_dir, then one section per stage)"
        )
    for dotted, value in (overrides or {}).items():  # `--sft.max_steps=5` sets a key of one stage
        stage, _, key = dotted.partition(".")
        if key:
            raw[stage] = {**(raw.get(stage) or {}), key: value}
        else:
            raw[dotted] = value
    raw = expand_env(raw)
    check_keys(raw, ["run_dir", "processes", *STAGES], str(path))
    if "run_dir" not in raw:
        raise ConfigError(f"{path}: a pipeline recipe needs `run_dir`")
    for name in STAGES:
        if raw.get(name) is not None and not isinstance(raw[name], dict):
            raise ConfigError(f"{path}: section `{name}` must be a mapping of its keys; got {raw[name]!r}")
    stages = [(STAGES[name], raw[name] or {}) for name in STAGES if name in raw]
    if not stages:
        raise ConfigError(f"{path}: no stage sections; expected some of {', '.join(STAGES)}")
    aligned = [name for name in ALIGNMENT_STAGES if name in raw]
    if len(aligned) > 1:
        raise ConfigError(
            f"{path}: one alignment stage per pipeline (eval and export take its model); got sections "
            f"{', '.join(aligned)}"
        )
    processes = raw.get("processes", 1)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"{path}: `processes` must be a whole number >= 1; got {processes!r}")
    return Plan(Path(raw["run_dir"]), stages, processes)


def select(plan: Plan, start: str | None, only: str | None) -> set[str]:
    names = [s.name for s, _ in plan.stages]
    for wanted in (start, only):
        if wanted is not None and wanted not in names:
            raise ConfigError(f"Stage `{wanted}` is not in this recipe; its stages: {', '.join(names)}")
    if only:
        return {only}
    if start:
        return set(names[names.index(start) :])
    return set(names)


def prepare(plan: Plan) -> list[WiredStage]:
    """Wire every stage and compute its key, without running anything (used by --dry-run too)."""
    from zephyr.pipeline.validate import check_stage_keys

    ctx = PipelineContext(plan.run_dir)
    wired = []
    for spec, section in plan.stages:
        check_stage_keys(spec.name, section)
        settings = spec.wire(section, ctx)
        produced = ctx.produced()
        upstream = {s: ctx.keys.get(s) for s in spec.reads}
        key = stage_key(spec.name, settings, upstream, input_digests(settings, produced))
        ctx.keys[spec.name] = key
        ctx.outputs[spec.name] = spec.outputs(ctx.stage_dir(spec.name), settings)
        wired.append(
            WiredStage(spec, settings, key, ctx.stage_dir(spec.name), ctx.outputs[spec.name], produced)
        )
    return wired


def read_stage_record(stage_dir: Path, name: str = STAGE_FILE) -> dict | None:
    try:
        record = read_json(stage_dir / name)
    except ZephyrError:  # missing or unreadable: the stage did not finish, so it (re)runs
        return None
    return record if isinstance(record, dict) else None


def stage_command(spec: StageSpec, recipe: Path, processes: int) -> list[str]:
    """The subprocess that runs one stage: plain, or under torchrun for several processes.

    torchrun starts N real processes on CPU (gloo) and GPU alike; accelerate launch on CPU routes
    multi-process runs through mpirun, which machines often lack.
    """
    base = ["-m", "zephyr.cli", spec.name, str(recipe)]
    if processes > 1 and spec.trains:
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", *base]
    return [sys.executable, *base]


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _child_setup() -> Callable[[], None]:
    """The stage child's first act (a preexec_fn): its own process group, so the pipeline can stop the
    stage and everything it started at once; and on Linux a parent-death signal, so even a SIGKILLed
    pipeline takes its stage with it. SIGTERM, not SIGKILL: torchrun passes it on to its workers."""
    parent = os.getpid()
    # Looked up here, before the fork: the child should do as little as possible before exec.
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

    def setup() -> None:
        os.setpgid(0, 0)
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
            if os.getppid() != parent:  # the pipeline died before the signal was armed
                os._exit(1)

    return setup


def _stop_group(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """End the stage's process group: SIGTERM, then SIGKILL for whatever is still there after ``grace``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers: the stage's own children
    proc.wait()


def run_child(cmd: list[str]) -> int:
    """Run a stage command in its own process group and return its exit status. SIGINT and SIGTERM sent
    to the pipeline go to the whole group; once it exits (or the pipeline fails) nothing of it is left."""
    proc = subprocess.Popen(cmd, preexec_fn=_child_setup())
    received: list[int] = []

    def forward(signum, frame) -> None:
        received.append(signum)
        with contextlib.suppress(ProcessLookupError):
            # A second Ctrl-C means now.
            os.killpg(proc.pid, signal.SIGKILL if len(received) > 1 else signum)

    handlers = {}
    if threading.current_thread() is threading.main_thread():  # signal handlers live on the main thread
        handlers = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        returncode = proc.wait()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        _stop_group(proc)
    if received:
        if received[0] == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning(
            "Stopped by signal %d; the stage was stopped too and resumes on the next run", received[0]
        )
        raise SystemExit(128 + received[0])
    return returncode


def _resumable(stage: WiredStage) -> dict | None:
    """The settings to rerun an interrupted stage with, or None when what is there must be cleared."""
    record = read_stage_record(stage.stage_dir)
    if record is not None or not stage.stage_dir.exists() or not any(stage.stage_dir.iterdir()):
        return None
    recipe = stage.stage_dir / "recipe.yaml"
    prior = yaml.safe_load(recipe.read_text(encoding="utf-8")) if recipe.is_file() else None
    if not isinstance(prior, dict):
        return None
    resume = stage.spec.resume_settings
    if {k: v for k, v in prior.items() if k not in resume} != stage.settings:
        return None
    prior_key = read_stage_record(stage.stage_dir, "key.json") or {}
    if prior_key.get("key") not in (None, stage.key):
        return None  # same settings, but an input file changed: start over
    return {**stage.settings, **resume}


def run_stage(stage: WiredStage, processes: int) -> float:
    """Run one stage to completion (resuming if it was interrupted) and record it. Returns seconds."""
    settings = _resumable(stage)
    if settings is not None:
        log.info("Stage %s was interrupted; resuming it", stage.spec.name)
    else:
        settings = stage.settings
        if stage.stage_dir.exists():
            shutil.rmtree(stage.stage_dir)
    stage.stage_dir.mkdir(parents=True, exist_ok=True)
    recipe = stage.stage_dir / "recipe.yaml"
    write_atomic(recipe, yaml.safe_dump(settings, sort_keys=True))
    write_json(stage.stage_dir / "key.json", {"key": stage.key})
    cmd = stage_command(stage.spec, recipe, processes)
    log.info("Stage %s: %s", stage.spec.name, " ".join(cmd))
    start = time.time()
    returncode = run_child(cmd)
    if returncode != 0:
        raise ConfigError(
            f"Stage `{stage.spec.name}` failed (exit code {returncode}); fix the cause and rerun "
            f"`zephyr run`: finished stages are kept and this one resumes"
        )
    seconds = time.time() - start
    record = {"stage": stage.spec.name, "key": stage.key, "seconds": seconds}
    write_json(stage.stage_dir / STAGE_FILE, {**record, "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    return seconds


def run_pipeline(
    recipe_path: str | Path,
    *,
    start: str | None = None,
    only: str | None = None,
    dry_run: bool = False,
    overrides: dict | None = None,
) -> dict:
    """Run (or with ``dry_run`` validate and plan) a pipeline recipe; returns a summary per stage."""
    plan = load_plan(recipe_path, overrides)
    chosen = select(plan, start, only)
    for spec, section in plan.stages:
        missing = unset_variables(section)
        if missing and spec.name in chosen:
            message = f"stage `{spec.name}` uses unset environment variable(s): {', '.join(sorted(missing))}"
            if not dry_run:
                raise ConfigError(message)
            log.warning("%s (set them before running)", message)
    with contextlib.ExitStack() as stack:
        if not dry_run:  # one pipeline per run_dir: a second one would run the same stages in the same dirs
            stack.enter_context(output_lock(plan.run_dir, "zephyr run"))
        return _run_stages(plan, chosen, dry_run)


def _run_stages(plan: Plan, chosen: set[str], dry_run: bool) -> dict:
    from zephyr.pipeline.validate import validate_stage

    summary = {}
    for stage in prepare(plan):
        record = read_stage_record(stage.stage_dir)
        done = record is not None and record.get("key") == stage.key
        if dry_run:
            validate_stage(stage.spec.name, stage.settings, stage.produced_before)
            state = "up to date" if done else ("would run" if stage.spec.name in chosen else "not selected")
        elif stage.spec.name not in chosen:
            state = "not selected"
        elif done:
            state = "skipped (up to date)"
        else:
            state = f"ran in {run_stage(stage, plan.processes):.0f} s"
        summary[stage.spec.name] = {"state": state, "dir": str(stage.stage_dir), "outputs": stage.outputs}
    return summary


def print_summary(summary: dict, dry_run: bool) -> None:
    print("\nPlan:" if dry_run else "\nSummary:")
    for name, info in summary.items():
        print(f"  {name:9s} {info['state']:24s} {info['dir']}")
        for what, where in info["outputs"].items():
            print(f"  {'':9s}   {what}: {where}")
