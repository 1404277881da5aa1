"""The stages `zephyr run` knows: how each is wired to the ones before it and checked offline."""

from __future__ import annotations

from pathlib import Path

from zephyr.errors import ConfigError, ModelError
from zephyr.pipeline import PipelineContext, StageSpec


def _model_output(stage_dir: Path, settings: dict) -> dict:
    return {"model": settings["output_dir"]}


def _has_data(section: dict) -> bool:
    return any(k in section for k in ("dataset_mixer", "dataset_mixture"))


def wire_sft(section: dict, ctx: PipelineContext) -> dict:
    section.setdefault("output_dir", str(ctx.stage_dir("sft") / "model"))
    if not _has_data(section):
        source = "clean" if "clean" in ctx.outputs else "binarize"
        data = ctx.upstream(source, "data", "sft")
        section["dataset_mixer"] = {data: 1.0}
        section["dataset_splits"] = ["train_sft", "test_sft"]
    return section


def wire_dpo(section: dict, ctx: PipelineContext) -> dict:
    section.setdefault("output_dir", str(ctx.stage_dir("dpo") / "model"))
    if "model_name_or_path" not in section:
        section["model_name_or_path"] = ctx.upstream("sft", "model", "dpo")
    if not _has_data(section):
        data = ctx.upstream("binarize", "data", "dpo")
        section["dataset_mixer"] = {data: 1.0}
        section["dataset_splits"] = ["train_prefs", "test_prefs"]
    return section


def _produced_upstream(path: str, ctx_outputs: list[str]) -> bool:
    return any(str(path).startswith(str(out)) for out in ctx_outputs)


def check_model_spec(spec: str) -> str:
    """Check a model spec as far as possible offline; returns a short description."""
    from zephyr.models import EMBEDDED_ALIAS, embedded_gguf_path, resolve_model

    if spec.lower() == EMBEDDED_ALIAS:
        embedded_gguf_path()  # raises with the pip command when the package is missing
        return "embedded model"
    path = Path(spec).expanduser()
    if path.exists() or spec.endswith(".gguf") or spec.startswith((".", "/", "~")):
        resolve_model(spec) if not spec.endswith(".gguf") else None
        if spec.endswith(".gguf") and not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return "local checkpoint"
    return "hub id (not checked offline)"


def _validate_training(classes, settings: dict, upstream_paths: list[str]) -> None:
    import torch

    from zephyr.config import parse_config

    settings = dict(settings)
    if not torch.cuda.is_available():
        # Check keys and values, not this machine's hardware: a GPU recipe dry-runs on a laptop too.
        for key in ("bf16", "fp16", "tf32"):
            settings.pop(key, None)
        settings["use_cpu"] = True
    parse_config(classes, None, settings)
    model = settings.get("model_name_or_path", "smollm2-135m-instruct")
    if not _produced_upstream(model, upstream_paths):
        check_model_spec(model)
    for name in settings.get("dataset_mixer") or {}:
        _check_path(name, upstream_paths, f"dataset `{name}`")


def validate_sft(settings: dict, upstream_paths: list[str]) -> None:
    from zephyr.config import DataArguments, ModelArguments, SFTConfig

    _validate_training([ModelArguments, DataArguments, SFTConfig], settings, upstream_paths)


def validate_dpo(settings: dict, upstream_paths: list[str]) -> None:
    from zephyr.config import DataArguments, DPOConfig, ModelArguments

    _validate_training([ModelArguments, DataArguments, DPOConfig], settings, upstream_paths)


# --- data stages ------------------------------------------------------------------------------------


def wire_generate(section: dict, ctx: PipelineContext) -> dict:
    section.setdefault("output", str(ctx.stage_dir("generate") / "completions.jsonl"))
    return section


def wire_feedback(section: dict, ctx: PipelineContext) -> dict:
    section.setdefault("input", ctx.upstream("generate", "completions", "feedback"))
    section.setdefault("output", str(ctx.stage_dir("feedback") / "rated.jsonl"))
    return section


def wire_binarize(section: dict, ctx: PipelineContext) -> dict:
    section.setdefault("input", ctx.upstream("feedback", "rated", "binarize"))
    section.setdefault("output_dir", str(ctx.stage_dir("binarize") / "data"))
    return section


def wire_clean(section: dict, ctx: PipelineContext) -> dict:
    section.setdefault("input", ctx.upstream("binarize", "data", "clean"))
    section.setdefault("output_dir", str(ctx.stage_dir("clean") / "data"))
    return section


def _parse(classes, settings: dict) -> None:
    from zephyr.config import parse_config

    parse_config(classes, None, dict(settings))


def _check_path(value, produced: list[str], what: str) -> None:
    from zephyr.resources import resolve_resource

    if not isinstance(value, str) or not value or _produced_upstream(value, produced):
        return
    local = resolve_resource(value)
    if local.startswith((".", "/", "~")) or local.endswith((".jsonl", ".json", ".parquet")):
        if not Path(local).expanduser().exists():
            raise ConfigError(f"`{what}` not found: {value}")


def _check_backend(spec, produced: list[str]) -> None:
    model = spec.get("model") if isinstance(spec, dict) else spec
    if isinstance(spec, dict) and (spec.get("base_url") or spec.get("type") == "openai"):
        return  # an HTTP endpoint: not checkable offline
    if model and not _produced_upstream(model, produced):
        check_model_spec(model)


def validate_generate(settings: dict, produced: list[str]) -> None:
    from zephyr.distill.generate import GenerateConfig

    _parse([GenerateConfig], settings)
    _check_path(settings.get("prompts"), produced, "prompts")
    for teacher in settings.get("teachers") or []:
        _check_backend(teacher.get("backend") if isinstance(teacher, dict) else teacher, produced)


def validate_feedback(settings: dict, produced: list[str]) -> None:
    from zephyr.distill.feedback import FeedbackConfig

    _parse([FeedbackConfig], settings)
    _check_path(settings.get("input"), produced, "input")
    _check_backend(settings.get("judge"), produced)


def validate_binarize(settings: dict, produced: list[str]) -> None:
    from zephyr.distill.binarize import BinarizeConfig

    _parse([BinarizeConfig], settings)
    _check_path(settings.get("input"), produced, "input")


def validate_clean(settings: dict, produced: list[str]) -> None:
    from zephyr.distill.clean import CleanConfig

    _parse([CleanConfig], settings)
    _check_path(settings.get("input"), produced, "input")


# --- evaluation and report -----------------------------------------------------------------------------

EVAL_BENCHMARKS = ("mt_bench", "alpaca", "prefs")


def wire_eval(section: dict, ctx: PipelineContext) -> dict:
    """Evaluate the last trained model; prefs compares it with the SFT model on the held-out pairs."""
    trained = next((ctx.outputs[s]["model"] for s in ("dpo", "sft") if s in ctx.outputs), None)
    out = ctx.stage_dir("eval")
    for name in section:
        if name not in EVAL_BENCHMARKS:
            raise ConfigError(
                f"Unknown eval benchmark `{name}`; expected some of {', '.join(EVAL_BENCHMARKS)}"
            )
    for name, settings in section.items():
        settings = dict(settings or {})
        settings.setdefault("output_dir", str(out / name))
        if trained is not None:
            settings.setdefault("model", trained)
        if name == "prefs":
            if "binarize" in ctx.outputs:
                settings.setdefault("data", ctx.outputs["binarize"]["data"])
            if "sft" in ctx.outputs and "dpo" in ctx.outputs:
                settings.setdefault("ref_model", ctx.outputs["sft"]["model"])
        section[name] = settings
    return section


def _eval_settings(name: str, settings: dict):
    from zephyr.evaluate.stages import AlpacaSettings, MTBenchSettings, PrefsSettings

    cls = {"mt_bench": MTBenchSettings, "alpaca": AlpacaSettings, "prefs": PrefsSettings}[name]
    import dataclasses
    import difflib

    names = [f.name for f in dataclasses.fields(cls)]
    for key in settings:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            raise ConfigError(
                f"Unknown key `{key}` in eval.{name}" + (f"; did you mean `{close[0]}`?" if close else "")
            )
    try:
        return cls(**settings)
    except TypeError as exc:
        raise ConfigError(f"eval.{name}: {exc}") from None


def run_eval(settings: dict) -> None:
    from zephyr.evaluate import stages as ev

    for name, section in settings.items():
        getattr(ev, name)(_eval_settings(name, section))


def validate_eval(settings: dict, produced: list[str]) -> None:
    for name, section in settings.items():
        _eval_settings(name, section)
        for key in (
            "questions",
            "reference_answers",
            "judge_prompts",
            "instructions",
            "reference_outputs",
            "data",
        ):
            _check_path(section.get(key), produced, f"eval.{name}.{key}")
        if section.get("model"):
            _check_backend(section["model"], produced)


def wire_report(section: dict, ctx: PipelineContext) -> dict:
    section.setdefault("run_dir", str(ctx.run_dir))
    section.setdefault("output", str(ctx.stage_dir("report")))
    return section


def run_report(settings: dict) -> None:
    from zephyr.report import report

    path = report(**settings)
    print(f"Report written to {path}")


def validate_report(settings: dict, produced: list[str]) -> None:
    import inspect

    from zephyr.report import report

    allowed = set(inspect.signature(report).parameters)
    for key in settings:
        if key not in allowed:
            raise ConfigError(f"Unknown key `{key}` in report; expected some of {', '.join(sorted(allowed))}")


RESUME_TRAINING = {"resume_from_checkpoint": True}

STAGES: dict[str, StageSpec] = {
    "generate": StageSpec("generate", ["generate"], wire_generate, lambda d, s: {"completions": s["output"]}),
    "feedback": StageSpec(
        "feedback", ["feedback"], wire_feedback, lambda d, s: {"rated": s["output"]}, reads=("generate",)
    ),
    "binarize": StageSpec(
        "binarize", ["binarize"], wire_binarize, lambda d, s: {"data": s["output_dir"]}, reads=("feedback",)
    ),
    "clean": StageSpec(
        "clean", ["clean"], wire_clean, lambda d, s: {"data": s["output_dir"]}, reads=("binarize",)
    ),
    "sft": StageSpec(
        "sft",
        ["sft"],
        wire_sft,
        _model_output,
        reads=("binarize", "clean"),
        trains=True,
        resume_keys=RESUME_TRAINING,
    ),
    "dpo": StageSpec(
        "dpo",
        ["dpo"],
        wire_dpo,
        _model_output,
        reads=("sft", "binarize"),
        trains=True,
        resume_keys=RESUME_TRAINING,
    ),
    "eval": StageSpec(
        "eval",
        [],
        wire_eval,
        lambda d, s: {"results": str(d)},
        reads=("sft", "dpo", "binarize"),
        entry=run_eval,
    ),
    "report": StageSpec(
        "report",
        [],
        wire_report,
        lambda d, s: {"html": str(Path(s["output"]) / "index.html")},
        reads=("sft", "dpo", "eval"),
        entry=run_report,
    ),
}

VALIDATORS = {
    "generate": validate_generate,
    "feedback": validate_feedback,
    "binarize": validate_binarize,
    "clean": validate_clean,
    "sft": validate_sft,
    "dpo": validate_dpo,
    "eval": validate_eval,
    "report": validate_report,
}


def main(argv: list[str] | None = None) -> int:
    """`python -m zephyr.stages STAGE RECIPE.yaml`: run a stage that has no subcommand of its own."""
    import sys

    import yaml

    from zephyr.cli import setup_logging

    name, recipe = (argv or sys.argv[1:])[:2]
    setup_logging()
    STAGES[name].entry(yaml.safe_load(Path(recipe).read_text()) or {})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
