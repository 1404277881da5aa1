"""`zephyr run --dry-run`: every stage's settings parsed exactly as its command will parse them, and the
local paths and model specs that no earlier stage produces checked offline, before anything loads."""

from __future__ import annotations

import functools
from pathlib import Path

from zephyr.config import parse_config
from zephyr.errors import ConfigError, ModelError
from zephyr.pipeline.keys import is_within


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

    settings = dict(settings)
    if not torch.cuda.is_available():
        # Check keys and values, not this machine's hardware: a GPU recipe dry-runs on a laptop too.
        for key in ("bf16", "fp16", "tf32"):
            settings.pop(key, None)
        settings["use_cpu"] = True
    parse_config(classes, None, settings)
    model = settings.get("model_name_or_path", "smollm2-135m-instruct")
    if not is_within(model, upstream_paths):
        check_model_spec(model)
    for name in settings.get("dataset_mixer") or {}:
        _check_path(name, upstream_paths, f"dataset `{name}`")
    if settings.get("dataset_name"):
        _check_path(settings["dataset_name"], upstream_paths, f"dataset `{settings['dataset_name']}`")


def training_classes(stage: str) -> list[type] | None:
    """The config classes a training stage's section is parsed into, or None for other stages."""
    from zephyr.data.config import DataArguments
    from zephyr.models import ModelArguments
    from zephyr.train import config

    trainer_config = {
        "sft": config.SFTConfig,
        "dpo": config.DPOConfig,
        "kto": config.KTOConfig,
        "orpo": config.ORPOConfig,
        "cpo": config.CPOConfig,
        "simpo": config.SimPOConfig,
    }.get(stage)
    return None if trainer_config is None else [ModelArguments, DataArguments, trainer_config]


def check_stage_keys(stage: str, section: dict) -> None:
    """An unknown key in a training stage's section, reported before wiring can complain about what the
    section lacks (a `dataset_name` typo must not read as "needs `data` from stage `binarize`")."""
    from zephyr.config import check_known_keys

    classes = training_classes(stage)
    if classes is not None:
        try:
            check_known_keys(classes, section)
        except ConfigError as exc:
            raise ConfigError(f"stage `{stage}`: {exc}") from None


def validate_sft(settings: dict, upstream_paths: list[str]) -> None:
    _validate_training(training_classes("sft"), settings, upstream_paths)


def validate_dpo(settings: dict, upstream_paths: list[str]) -> None:
    _validate_training(training_classes("dpo"), settings, upstream_paths)


def validate_training(stage: str, settings: dict, upstream_paths: list[str]) -> None:
    """Any training stage (the reference-free alignment stages use this one)."""
    _validate_training(training_classes(stage), settings, upstream_paths)


def _parse(classes, settings: dict) -> None:
    parse_config(classes, None, dict(settings))


def _check_path(value, produced: list[str], what: str) -> None:
    from zephyr.resources import resolve_resource

    if not isinstance(value, str) or not value or is_within(value, produced):
        return
    local = resolve_resource(value)
    if local.startswith((".", "/", "~")) or local.endswith((".jsonl", ".json", ".parquet")):
        if not Path(local).expanduser().exists():
            raise ConfigError(f"`{what}` not found: {value}")


def _check_backend(spec, produced: list[str]) -> None:
    model = spec.get("model") if isinstance(spec, dict) else spec
    if isinstance(spec, dict) and (spec.get("base_url") or spec.get("type") == "openai"):
        return  # an HTTP endpoint: not checkable offline
    if model and not is_within(model, produced):
        check_model_spec(model)


def validate_generate(settings: dict, produced: list[str]) -> None:
    from zephyr.distill.generate import GenerateConfig

    _parse([GenerateConfig], settings)
    _check_path(settings.get("prompts"), produced, "prompts")
    for teacher in settings.get("teachers") or []:
        _check_backend(teacher.get("backend") if isinstance(teacher, dict) else teacher, produced)


def validate_dialogue(settings: dict, produced: list[str]) -> None:
    from zephyr.distill.dialogue import DialogueConfig

    _parse([DialogueConfig], settings)
    _check_path(settings.get("seeds"), produced, "seeds")
    for sampler in [settings.get("simulator"), *(settings.get("teachers") or [])]:
        _check_backend(sampler.get("backend") if isinstance(sampler, dict) else sampler, produced)


def validate_feedback(settings: dict, produced: list[str]) -> None:
    from zephyr.distill.feedback import FeedbackConfig

    _parse([FeedbackConfig], settings)
    _check_path(settings.get("input"), produced, "input")
    _check_backend(settings.get("judge"), produced)


def validate_binarize(settings: dict, produced: list[str]) -> None:
    from zephyr.distill.binarize import BinarizeConfig

    _parse([BinarizeConfig], settings)
    _check_path(settings.get("input"), produced, "input")
    _check_path(settings.get("votes"), produced, "votes")


def validate_clean(settings: dict, produced: list[str]) -> None:
    from zephyr.distill.clean import CleanConfig

    _parse([CleanConfig], settings)
    _check_path(settings.get("input"), produced, "input")


def _eval_settings(name: str, settings: dict):
    from zephyr.evaluate.benchmarks import BENCHMARKS

    try:
        return parse_config([BENCHMARKS[name].settings], None, dict(settings))
    except ConfigError as exc:
        raise ConfigError(f"eval.{name}: {exc}") from None


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
            "prompts",
            "model_outputs",
        ):
            _check_path(section.get(key), produced, f"eval.{name}.{key}")
        if section.get("model"):
            _check_backend(section["model"], produced)


def validate_report(settings: dict, produced: list[str]) -> None:
    from zephyr.report.config import ReportConfig

    _parse([ReportConfig], settings)


def validate_export(settings: dict, produced: list[str]) -> None:
    from zephyr.export.config import ExportConfig

    _parse([ExportConfig], settings)
    model = settings.get("model")
    if isinstance(model, str) and model and not is_within(model, produced):
        check_model_spec(model)


VALIDATORS = {
    "dialogue": validate_dialogue,
    "generate": validate_generate,
    "feedback": validate_feedback,
    "binarize": validate_binarize,
    "clean": validate_clean,
    "sft": validate_sft,
    "dpo": validate_dpo,
    **{stage: functools.partial(validate_training, stage) for stage in ("kto", "orpo", "cpo", "simpo")},
    "eval": validate_eval,
    "report": validate_report,
    "export": validate_export,
}


def validate_stage(name: str, settings: dict, produced: list[str]) -> None:
    """Parse a stage's settings exactly as its command would, and check offline the local paths and model
    specs that earlier stages do not produce (``produced``)."""
    try:
        VALIDATORS[name](settings, produced)
    except ConfigError as exc:
        raise ConfigError(f"stage `{name}`: {exc}") from None
