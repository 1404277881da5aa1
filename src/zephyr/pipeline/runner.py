"""`zephyr run RECIPE.yaml`: the whole recipe as one resumable sequence of stages.

A pipeline recipe has a ``run_dir`` and one section per stage (generate, feedback, binarize, clean,
sft, one alignment stage of dpo, kto, orpo, cpo or simpo, eval, report, export; any subset, in that order),
and optionally ``rounds``: iterative rounds of generate -> feedback -> binarize -> align -> eval, each from
the model the round before trained (``zephyr.pipeline.rounds``).
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
from zephyr.pipeline.rounds import (
    AFTER_ROUNDS,
    Rounds,
    baseline_benchmarks,
    baseline_eval,
    parse_rounds,
    round_context,
    round_name,
    round_section,
    starting_model,
)
from zephyr.pipeline.stages import ALIGNMENT_STAGES, STAGES, PipelineContext, StageSpec

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"


@dataclass
class Plan:
    run_dir: Path
    stages: list[tuple[StageSpec, dict]]  # (spec, raw section) in pipeline order
    processes: int = 1
    rounds: Rounds | None = None

    def split(self) -> tuple[list[tuple[StageSpec, dict]], list[tuple[StageSpec, dict]]]:
        """The top-level stages that run before the rounds, and those that run after them."""
        if self.rounds is None:
            return self.stages, []
        before = [(s, section) for s, section in self.stages if s.name not in AFTER_ROUNDS]
        return before, [(s, section) for s, section in self.stages if s.name in AFTER_ROUNDS]

    def names(self) -> list[str]:
        """Every stage's name in run order (a round's stages as `round<k>/<stage>`)."""
        before, after = self.split()
        names = [s.name for s, _ in before]
        if self.rounds is not None:
            names += [round_name(0, "eval")] if baseline_benchmarks(self.rounds) else []
            names += [
                round_name(k, s.name) for k in range(1, self.rounds.count + 1) for s, _ in self.rounds.stages
            ]
        return names + [s.name for s, _ in after]


@dataclass
class WiredStage:
    name: str  # the stage's name in this pipeline: `dpo`, or `round2/dpo`
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
        *parents, key = dotted.split(".")  # `--rounds.dpo.beta=0.2` one of a round stage
        section = raw
        for part in parents:
            section[part] = dict(section.get(part) or {})
            section = section[part]
        section[key] = value
    raw = expand_env(raw)
    check_keys(raw, ["run_dir", "processes", "rounds", *STAGES], str(path))
    if "run_dir" not in raw:
        raise ConfigError(f"{path}: a pipeline recipe needs `run_dir`")
    for name in STAGES:
        if raw.get(name) is not None and not isinstance(raw[name], dict):
            raise ConfigError(f"{path}: section `{name}` must be a mapping of its keys; got {raw[name]!r}")
    stages = [(STAGES[name], raw[name] or {}) for name in STAGES if name in raw]
    rounds = parse_rounds(raw["rounds"], str(path)) if raw.get("rounds") is not None else None
    if not stages and rounds is None:
        raise ConfigError(f"{path}: no stage sections; expected some of {', '.join(STAGES)}, or `rounds`")
    aligned = [name for name in ALIGNMENT_STAGES if name in raw]
    if len(aligned) > 1:
        raise ConfigError(
            f"{path}: one alignment stage per pipeline (eval and export take its model); got sections "
            f"{', '.join(aligned)}"
        )
    processes = raw.get("processes", 1)
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ConfigError(f"{path}: `processes` must be a whole number >= 1; got {processes!r}")
    return Plan(Path(raw["run_dir"]), stages, processes, rounds)


def select(plan: Plan, start: str | None, only: str | None) -> set[str]:
    names = plan.names()
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
    wired: list[WiredStage] = []

    def add(name: str, spec: StageSpec, section: dict, scope: PipelineContext, upstream: dict) -> None:
        check_stage_keys(spec.name, section)
        settings = spec.wire(section, scope)
        produced = scope.produced()
        upstream = {s: scope.keys.get(s) for s in spec.reads} | upstream
        key = stage_key(spec.name, settings, upstream, input_digests(settings, produced))
        scope.keys[spec.name] = key
        scope.outputs[spec.name] = spec.outputs(scope.stage_dir(spec.name), settings)
        ctx.outputs[name], ctx.keys[name] = scope.outputs[spec.name], key
        wired.append(
            WiredStage(
                name, spec, settings, key, scope.stage_dir(spec.name), scope.outputs[spec.name], produced
            )
        )

    before, after = plan.split()
    for spec, section in before:
        add(spec.name, spec, section, ctx, {})
    round_keys = {}
    if plan.rounds is not None:
        round_keys = _wire_rounds(plan.rounds, ctx, add)
    for spec, section in after:
        add(spec.name, spec, section, ctx, {"rounds": round_keys} if round_keys else {})
    return wired


def _wire_rounds(rounds: Rounds, ctx: PipelineContext, add) -> dict[str, str]:
    """Wire round 0's eval and rounds 1..K, each from the model the round before trained; the last round's
    stages then stand under their plain names for the stages after the rounds. Returns every round
    stage's key."""
    model, key = starting_model(rounds, ctx)
    baseline = baseline_eval(rounds, model)
    if baseline is not None:
        add(
            round_name(0, "eval"), STAGES["eval"], baseline, round_context(ctx, 0, model, key), {"model": key}
        )
    scope = None
    for k in range(1, rounds.count + 1):
        scope = round_context(ctx, k, model, key)
        for spec, section in rounds.stages:
            add(
                round_name(k, spec.name),
                spec,
                round_section(rounds, spec.name, section, k, model),
                scope,
                {"model": key},
            )
        aligned = next(s for s in ALIGNMENT_STAGES if s in scope.outputs)
        model, key = scope.outputs[aligned]["model"], scope.keys[aligned]
    for name, outputs in scope.outputs.items():
        if name != "sft":  # the stand-in for the round's starting model
            ctx.outputs[name], ctx.keys[name] = outputs, scope.keys[name]
    return {name: k for name, k in ctx.keys.items() if name.startswith("round")}


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
        log.info("Stage %s was interrupted; resuming it", stage.name)
    else:
        settings = stage.settings
        if stage.stage_dir.exists():
            shutil.rmtree(stage.stage_dir)
    stage.stage_dir.mkdir(parents=True, exist_ok=True)
    recipe = stage.stage_dir / "recipe.yaml"
    write_atomic(recipe, yaml.safe_dump(settings, sort_keys=True))
    write_json(stage.stage_dir / "key.json", {"key": stage.key})
    cmd = stage_command(stage.spec, recipe, processes)
    log.info("Stage %s: %s", stage.name, " ".join(cmd))
    start = time.time()
    returncode = run_child(cmd)
    if returncode != 0:
        raise ConfigError(
            f"Stage `{stage.name}` failed (exit code {returncode}); fix the cause and rerun "
            f"`zephyr run`: finished stages are kept and this one resumes"
        )
    seconds = time.time() - start
    record = {"stage": stage.name, "key": stage.key, "seconds": seconds}
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
    sections = [(spec.name, section) for spec, section in plan.stages]
    if plan.rounds is not None:
        by_stage = {spec.name: section for spec, section in plan.rounds.stages}
        sections += [(n, by_stage[n.partition("/")[2]]) for n in plan.names() if n.startswith("round")]
    for name, section in sections:
        missing = unset_variables(section)
        if missing and name in chosen:
            message = f"stage `{name}` uses unset environment variable(s): {', '.join(sorted(missing))}"
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
            state = "up to date" if done else ("would run" if stage.name in chosen else "not selected")
        elif stage.name not in chosen:
            state = "not selected"
        elif done:
            state = "skipped (up to date)"
        else:
            state = f"ran in {run_stage(stage, plan.processes):.0f} s"
        summary[stage.name] = {"state": state, "dir": str(stage.stage_dir), "outputs": stage.outputs}
    return summary


def print_summary(summary: dict, dry_run: bool) -> None:
    print("\nPlan:" if dry_run else "\nSummary:")
    for name, info in summary.items():
        print(f"  {name:15s} {info['state']:24s} {info['dir']}")
        for what, where in info["outputs"].items():
            print(f"  {'':15s}   {what}: {where}")
