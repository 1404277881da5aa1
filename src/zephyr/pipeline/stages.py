"""The stages `zephyr run` knows, as a table: what each reads, what it writes, and where by default.

Every stage runs as its own subcommand, ``zephyr STAGE run_dir/STAGE/recipe.yaml``, on the section of
the pipeline recipe that names it, after ``wire`` has filled in what the section leaves out: where to
write (``output_key`` under the stage's directory) and what to read (``inputs``: a setting, the
upstream stages that can provide it, first present wins, and which of their outputs). A few stages
need more than the table says (training data as a mixture, eval's per-benchmark sections); their
``extra`` hook does that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zephyr.errors import ConfigError


@dataclass(frozen=True)
class Input:
    """Setting ``key`` defaults to output ``output`` of the first of ``stages`` the recipe has."""

    key: str
    stages: tuple[str, ...]
    output: str


@dataclass
class PipelineContext:
    run_dir: Path
    outputs: dict[str, dict] = field(default_factory=dict)  # stage -> {output name: path}
    keys: dict[str, str] = field(default_factory=dict)  # stage -> its key

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    def upstream(self, stages: tuple[str, ...], wanted: str, name: str) -> str:
        """An earlier stage's output, or a clear error when the recipe gives neither it nor that stage."""
        for stage in stages:
            if wanted in self.outputs.get(stage, {}):
                return self.outputs[stage][wanted]
        raise ConfigError(
            f"Stage `{name}` needs `{wanted}` from stage `{stages[0]}`; add a `{stages[0]}` section or set it"
        )

    def produced(self) -> list[str]:
        return [str(path) for outputs in self.outputs.values() for path in outputs.values()]


@dataclass(frozen=True)
class StageSpec:
    name: str
    output_key: str | None  # the setting naming what the stage writes; None: the stage directory itself
    default_output: str  # under run_dir/STAGE/
    product: str  # the name later stages use for that output
    inputs: tuple[Input, ...] = ()
    reads: tuple[str, ...] = ()  # stages whose keys enter this stage's key
    trains: bool = False  # may run under torchrun with several processes
    resume_settings: dict[str, Any] = field(default_factory=dict)  # added when resuming an interrupted run
    extra: Callable[[dict, PipelineContext], None] | None = None
    product_file: str = ""  # the product is this file inside the output (report: index.html)

    def wire(self, section: dict, ctx: PipelineContext) -> dict:
        """The section with the defaults filled in from the stage dir and upstream outputs."""
        section = dict(section)
        if self.output_key is not None:
            section.setdefault(self.output_key, str(ctx.stage_dir(self.name) / self.default_output))
        for need in self.inputs:
            if need.key not in section:
                section[need.key] = ctx.upstream(need.stages, need.output, self.name)
        if self.extra is not None:
            self.extra(section, ctx)
        return section

    def outputs(self, stage_dir: Path, settings: dict) -> dict[str, str]:
        where = settings[self.output_key] if self.output_key else str(stage_dir)
        return {self.product: str(Path(where) / self.product_file) if self.product_file else where}


def _has_data(section: dict) -> bool:
    return any(k in section for k in ("dataset_name", "dataset_mixer", "dataset_mixture"))


def _sft_data(section: dict, ctx: PipelineContext) -> None:
    if not _has_data(section):
        section["dataset_mixer"] = {ctx.upstream(("clean", "binarize"), "data", "sft"): 1.0}
        section["dataset_splits"] = ["train_sft", "test_sft"]


def _dpo_data(section: dict, ctx: PipelineContext) -> None:
    if not _has_data(section):
        section["dataset_mixer"] = {ctx.upstream(("binarize",), "data", "dpo"): 1.0}
        section["dataset_splits"] = ["train_prefs", "test_prefs"]


EVAL_BENCHMARKS = ("mt_bench", "alpaca", "prefs")


def _eval_sections(section: dict, ctx: PipelineContext) -> None:
    """Evaluate the last trained model; prefs compares it with the SFT model on the held-out pairs."""
    trained = next((ctx.outputs[s]["model"] for s in ("dpo", "sft") if s in ctx.outputs), None)
    for name in section:
        if name not in EVAL_BENCHMARKS:
            raise ConfigError(
                f"Unknown eval benchmark `{name}`; expected some of {', '.join(EVAL_BENCHMARKS)}"
            )
    for name, settings in section.items():
        if settings is not None and not isinstance(settings, dict):
            raise ConfigError(f"`eval.{name}` must be a mapping of its settings; got {settings!r}")
        settings = dict(settings or {})
        settings.setdefault("output_dir", str(ctx.stage_dir("eval") / name))
        if trained is not None:
            settings.setdefault("model", trained)
        if name == "prefs":
            if "binarize" in ctx.outputs:
                settings.setdefault("data", ctx.outputs["binarize"]["data"])
            if "sft" in ctx.outputs and "dpo" in ctx.outputs:
                settings.setdefault("ref_model", ctx.outputs["sft"]["model"])
        section[name] = settings


RESUME_TRAINING = {"resume_from_checkpoint": True}

STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec("generate", "output", "completions.jsonl", "completions"),
        StageSpec(
            "feedback",
            "output",
            "rated.jsonl",
            "rated",
            inputs=(Input("input", ("generate",), "completions"),),
            reads=("generate",),
        ),
        StageSpec(
            "binarize",
            "output_dir",
            "data",
            "data",
            inputs=(Input("input", ("feedback",), "rated"),),
            reads=("feedback",),
        ),
        StageSpec(
            "clean",
            "output_dir",
            "data",
            "data",
            inputs=(Input("input", ("binarize",), "data"),),
            reads=("binarize",),
        ),
        StageSpec(
            "sft",
            "output_dir",
            "model",
            "model",
            reads=("binarize", "clean"),
            trains=True,
            resume_settings=RESUME_TRAINING,
            extra=_sft_data,
        ),
        StageSpec(
            "dpo",
            "output_dir",
            "model",
            "model",
            inputs=(Input("model_name_or_path", ("sft",), "model"),),
            reads=("sft", "binarize"),
            trains=True,
            resume_settings=RESUME_TRAINING,
            extra=_dpo_data,
        ),
        StageSpec("eval", None, "", "results", reads=("sft", "dpo", "binarize"), extra=_eval_sections),
        StageSpec(
            "report",
            "output_dir",
            "",
            "html",
            reads=("sft", "dpo", "eval"),
            extra=lambda section, ctx: section.setdefault("run_dir", str(ctx.run_dir)),
            product_file="index.html",
        ),
        StageSpec(
            "export",
            "output_dir",
            "model",
            "export",
            inputs=(Input("model", ("dpo", "sft"), "model"),),
            reads=("sft", "dpo"),
        ),
    )
}
