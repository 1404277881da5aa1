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
    """Setting ``key`` defaults to output ``output`` of the first of ``stages`` the recipe has, unless the
    section sets one of ``unless`` (another source of the same thing: binarize's `votes` file)."""

    key: str
    stages: tuple[str, ...]
    output: str
    unless: tuple[str, ...] = ()


@dataclass
class PipelineContext:
    run_dir: Path
    outputs: dict[str, dict] = field(default_factory=dict)  # stage -> {output name: path}
    keys: dict[str, str] = field(default_factory=dict)  # stage -> its key
    settings: dict[str, dict] = field(default_factory=dict)  # stage -> its wired section
    elsewhere: list[str] = field(default_factory=list)  # outputs of stages outside this view (other rounds)

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
        return [
            *self.elsewhere,
            *(str(path) for outputs in self.outputs.values() for path in outputs.values()),
        ]


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
            if need.key not in section and not any(k in section for k in need.unless):
                section[need.key] = ctx.upstream(need.stages, need.output, self.name)
        if self.extra is not None:
            self.extra(section, ctx)
        ctx.settings[self.name] = section
        return section

    def outputs(self, stage_dir: Path, settings: dict) -> dict[str, str]:
        where = settings[self.output_key] if self.output_key else str(stage_dir)
        return {self.product: str(Path(where) / self.product_file) if self.product_file else where}


def _has_data(section: dict) -> bool:
    return any(k in section for k in ("dataset_name", "dataset_mixer", "dataset_mixture"))


def _sft_data(section: dict, ctx: PipelineContext) -> None:
    if not _has_data(section):
        data = ctx.upstream(("clean", "dialogue", "binarize"), "data", "sft")
        section["dataset_mixer"] = {data: 1.0}
        # clean writes the splits it read (one file: `train_sft` alone); dialogue's single file trains only.
        cleaned = ctx.outputs.get("clean", {}).get("data") == data
        splits = (ctx.settings["clean"].get("splits") or ["train_sft"]) if cleaned else []
        section["dataset_splits"] = list(splits) or ["train_sft", "test_sft"]
        # The wiring chose the old mixer form, not the recipe: no handbook script's packing applies.
        section.setdefault("packing", False)


# The alignment stages: each trains the sft stage's model (or its section's own model_name_or_path) on the
# binarized preference pairs as `zephyr NAME` does (kto on the feedback stage's rated completions when the
# recipe has that stage: each becomes a desirable or undesirable row); a pipeline has at most one.
ALIGNMENT_STAGES = ("dpo", "kto", "orpo", "cpo", "simpo")


def _pair_data(stage: str) -> Callable[[dict, PipelineContext], None]:
    def wire(section: dict, ctx: PipelineContext) -> None:
        if _has_data(section):
            return
        rated = ctx.outputs.get("feedback", {}).get("rated")
        if stage == "kto" and rated is not None:
            section["dataset_mixer"] = {rated: 1.0}
            section["dataset_splits"] = ["train"]  # one file of rated prompts: training rows only
            return
        section["dataset_mixer"] = {ctx.upstream(("binarize",), "data", stage): 1.0}
        section["dataset_splits"] = ["train_prefs", "test_prefs"]

    return wire


EVAL_BENCHMARKS = ("mt_bench", "alpaca", "prefs", "rules")


def _eval_sections(section: dict, ctx: PipelineContext) -> None:
    """Evaluate the last trained model; prefs compares it with the SFT model on the held-out pairs."""
    trained = next((ctx.outputs[s]["model"] for s in (*ALIGNMENT_STAGES, "sft") if s in ctx.outputs), None)
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
            if "sft" in ctx.outputs and any(s in ctx.outputs for s in ALIGNMENT_STAGES):
                settings.setdefault("ref_model", ctx.outputs["sft"]["model"])
        section[name] = settings


RESUME_TRAINING = {"resume_from_checkpoint": True}

STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec("dialogue", "output", "dialogues.jsonl", "data"),
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
            inputs=(Input("input", ("feedback",), "rated", unless=("votes",)),),
            reads=("feedback",),
        ),
        StageSpec(
            "clean",
            "output_dir",
            "data",
            "data",
            inputs=(Input("input", ("dialogue", "binarize"), "data"),),
            reads=("dialogue", "binarize"),
        ),
        StageSpec(
            "sft",
            "output_dir",
            "model",
            "model",
            reads=("dialogue", "binarize", "clean"),
            trains=True,
            resume_settings=RESUME_TRAINING,
            extra=_sft_data,
        ),
        *(
            StageSpec(
                name,
                "output_dir",
                "model",
                "model",
                inputs=(Input("model_name_or_path", ("sft",), "model"),),
                reads=("sft", "feedback", "binarize") if name == "kto" else ("sft", "binarize"),
                trains=True,
                resume_settings=RESUME_TRAINING,
                extra=_pair_data(name),
            )
            for name in ALIGNMENT_STAGES
        ),
        StageSpec(
            "eval", None, "", "results", reads=("sft", *ALIGNMENT_STAGES, "binarize"), extra=_eval_sections
        ),
        StageSpec(
            "report",
            "output_dir",
            "",
            "html",
            reads=("sft", *ALIGNMENT_STAGES, "eval"),
            extra=lambda section, ctx: section.setdefault("run_dir", str(ctx.run_dir)),
            product_file="index.html",
        ),
        StageSpec(
            "export",
            "output_dir",
            "model",
            "export",
            inputs=(Input("model", (*ALIGNMENT_STAGES, "sft"), "model"),),
            reads=("sft", *ALIGNMENT_STAGES),
        ),
    )
}
