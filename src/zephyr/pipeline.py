"""`zephyr run RECIPE.yaml`: the whole recipe as one resumable sequence of stages.

A pipeline recipe has a ``run_dir`` and one section per stage (generate, feedback, binarize, clean,
sft, dpo, eval, report; any subset, in that order). Each section holds that stage's own recipe
keys; keys a stage needs from an earlier one (its input data, its starting model) are filled in
when the section leaves them out. Every stage runs its own subcommand on a ``recipe.yaml`` written
into its directory ``run_dir/STAGE/``, so a stage of a pipeline and the same command run by hand do
exactly the same thing.

A stage's *key* hashes its effective settings and the keys of the stages it reads from. A stage
whose ``stage.json`` records the same key is skipped; a changed one is redone (and so is everything
downstream, whose keys change with it); one that started but has no ``stage.json`` was interrupted
and is resumed (trainers from their last checkpoint, generate/feedback from their last row).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zephyr.errors import ConfigError

log = logging.getLogger(__name__)

STAGE_FILE = "stage.json"


@dataclass
class StageSpec:
    """How one stage is wired into a pipeline.

    ``wire(section, ctx)`` returns the section with defaults filled from upstream outputs and the stage
    dir; ``outputs(stage_dir, settings)`` says what the stage leaves for later stages;
    ``reads`` names the stages whose outputs it consumes (they enter its key).
    """

    name: str
    command: list[str]
    wire: Callable[[dict, PipelineContext], dict]
    outputs: Callable[[Path, dict], dict]
    reads: tuple[str, ...] = ()
    trains: bool = False  # may run under a multi-process launcher
    resume_keys: dict[str, Any] = field(default_factory=dict)  # settings added when resuming
    entry: Callable[[dict], None] | None = (
        None  # for stages with no subcommand: run in `python -m zephyr.stages`
    )


@dataclass
class PipelineContext:
    run_dir: Path
    outputs: dict[str, dict] = field(default_factory=dict)  # stage -> its outputs
    keys: dict[str, str] = field(default_factory=dict)  # stage -> its key

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def upstream(self, stage: str, wanted: str, name: str):
        """An earlier stage's output, or a clear error when the recipe gives neither it nor that stage."""
        if stage in self.outputs and wanted in self.outputs[stage]:
            return self.outputs[stage][wanted]
        raise ConfigError(
            f"Stage `{name}` needs `{wanted}` from stage `{stage}`; add a `{stage}` section or set it"
        )


def stage_key(name: str, settings: dict, ctx: PipelineContext, reads: tuple[str, ...]) -> str:
    payload = json.dumps(
        {"stage": name, "settings": settings, "upstream": {s: ctx.keys.get(s) for s in reads}},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_stage_record(stage_dir: Path) -> dict | None:
    try:
        return json.loads((stage_dir / STAGE_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_stage_record(stage_dir: Path, record: dict) -> None:
    tmp = stage_dir / (STAGE_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, stage_dir / STAGE_FILE)


def launch_command(command: list[str], recipe: Path, processes: int) -> list[str]:
    """The subprocess that runs one stage: plain, or under torchrun for several processes.

    torchrun starts N real processes on CPU (gloo) and GPU alike; accelerate launch on CPU routes
    multi-process runs through mpirun, which machines often lack.
    """
    base = ["-m", "zephyr.cli", *command, str(recipe)]
    if processes > 1:
        return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", *base]
    return [sys.executable, *base]


@dataclass
class Plan:
    run_dir: Path
    stages: list[tuple[StageSpec, dict]]  # (spec, raw section) in pipeline order
    processes: int = 1


def expand_env(value):
    """Replace ${VAR} in every string of a recipe (judge endpoints and keys come from the environment)."""
    if isinstance(value, dict):
        return {k: expand_env(v) for k, v in value.items()}
    if isinstance(value, list):
        return [expand_env(v) for v in value]
    return os.path.expandvars(value) if isinstance(value, str) else value


def unset_variables(value) -> set[str]:
    """Names of ${VAR} references left in a recipe because the variable is not set."""
    import re

    text = json.dumps(value, default=str)
    return set(re.findall(r"\$\{(\w+)\}", text))


def load_plan(recipe_path: str | Path, overrides: dict | None = None) -> Plan:
    from zephyr.stages import STAGES

    path = Path(recipe_path)
    if not path.is_file():
        raise ConfigError(f"Pipeline recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    for dotted, value in (overrides or {}).items():  # `--sft.max_steps=5` sets a key of one stage
        stage, _, key = dotted.partition(".")
        if key:
            raw.setdefault(stage, {})
            raw[stage] = {**(raw[stage] or {}), key: value}
        else:
            raw[dotted] = value
    raw = expand_env(raw)
    known = {"run_dir", "processes", *STAGES}
    for key in raw:
        if key not in known:
            import difflib

            close = difflib.get_close_matches(key, sorted(known), n=1)
            raise ConfigError(
                f"Unknown key `{key}` in {path}" + (f"; did you mean `{close[0]}`?" if close else "")
            )
    if "run_dir" not in raw:
        raise ConfigError(f"{path}: a pipeline recipe needs `run_dir`")
    stages = [(STAGES[name], raw[name] or {}) for name in STAGES if name in raw]
    if not stages:
        raise ConfigError(f"{path}: no stage sections; expected some of {', '.join(STAGES)}")
    return Plan(Path(raw["run_dir"]), stages, int(raw.get("processes", 1)))


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


def prepare(plan: Plan) -> list[tuple[StageSpec, dict, str, PipelineContext]]:
    """Wire every stage and compute its key, without running anything (used by --dry-run too)."""
    ctx = PipelineContext(plan.run_dir)
    wired = []
    for spec, section in plan.stages:
        settings = spec.wire(dict(section), ctx)
        key = stage_key(spec.name, settings, ctx, spec.reads)
        ctx.keys[spec.name] = key
        ctx.outputs[spec.name] = spec.outputs(ctx.stage_dir(spec.name), settings)
        wired.append((spec, settings, key, ctx))
    return wired


def run_stage(spec: StageSpec, settings: dict, key: str, stage_dir: Path, processes: int) -> float:
    """Run one stage to completion (resuming if it was interrupted) and record it. Returns seconds."""
    record = read_stage_record(stage_dir)
    if record is None and stage_dir.exists() and any(stage_dir.iterdir()):
        prior = (
            yaml.safe_load((stage_dir / "recipe.yaml").read_text())
            if (stage_dir / "recipe.yaml").exists()
            else None
        )
        if prior is not None and {k: v for k, v in prior.items() if k not in spec.resume_keys} == settings:
            log.info("Stage %s was interrupted; resuming it", spec.name)
            settings = {**settings, **spec.resume_keys}
        else:
            shutil.rmtree(stage_dir)
    elif record is not None:  # finished, but with other settings or inputs: start over
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    recipe = stage_dir / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(settings, sort_keys=True))
    if spec.entry is not None:
        cmd = [sys.executable, "-m", "zephyr.stages", spec.name, str(recipe)]
    else:
        cmd = launch_command(spec.command, recipe, processes if spec.trains else 1)
    log.info("Stage %s: %s", spec.name, " ".join(cmd))
    start = time.time()
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise ConfigError(
            f"Stage `{spec.name}` failed (exit code {proc.returncode}); fix the cause and rerun "
            f"`zephyr run`: finished stages are kept and this one resumes"
        )
    seconds = time.time() - start
    write_stage_record(
        stage_dir,
        {"stage": spec.name, "key": key, "seconds": seconds, "finished": time.strftime("%Y-%m-%d %H:%M:%S")},
    )
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
    wired = prepare(plan)
    summary, produced = {}, []
    for spec, settings, key, ctx in wired:
        stage_dir = ctx.stage_dir(spec.name)
        record = read_stage_record(stage_dir)
        done = record is not None and record.get("key") == key
        if dry_run:
            validate_stage(spec, settings, produced)
            state = "up to date" if done else ("would run" if spec.name in chosen else "not selected")
        elif spec.name not in chosen:
            state = "not selected"
        elif done:
            state = "skipped (up to date)"
        else:
            state = f"ran in {run_stage(spec, settings, key, stage_dir, plan.processes):.0f} s"
        summary[spec.name] = {"state": state, "dir": str(stage_dir), "outputs": ctx.outputs[spec.name]}
        produced += [str(v) for v in ctx.outputs[spec.name].values()]
    return summary


def validate_stage(spec: StageSpec, settings: dict, produced: list[str]) -> None:
    """Parse a stage's settings exactly as its command would, and check offline the local paths and model
    specs that earlier stages do not produce (``produced``)."""
    from zephyr.stages import VALIDATORS

    try:
        VALIDATORS[spec.name](settings, produced)
    except ConfigError as exc:
        raise ConfigError(f"stage `{spec.name}`: {exc}") from None


def print_summary(summary: dict, dry_run: bool) -> None:
    print("\nPlan:" if dry_run else "\nSummary:")
    for name, info in summary.items():
        print(f"  {name:9s} {info['state']:24s} {info['dir']}")
        for what, where in info["outputs"].items():
            print(f"  {'':9s}   {what}: {where}")
