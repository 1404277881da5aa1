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
        data = ctx.upstream("binarize", "data", "sft")
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
    from zephyr.config import parse_config

    parse_config(classes, None, dict(settings))
    model = settings.get("model_name_or_path", "smollm2-135m-instruct")
    if not _produced_upstream(model, upstream_paths):
        check_model_spec(model)
    mixer = settings.get("dataset_mixer") or {}
    for name in mixer:
        if _produced_upstream(name, upstream_paths):
            continue
        from zephyr.resources import resolve_resource

        local = resolve_resource(name)
        if local.startswith((".", "/", "~")) or local.endswith((".jsonl", ".json", ".parquet")):
            if not Path(local).expanduser().exists():
                raise ConfigError(f"dataset `{name}` not found")


def validate_sft(settings: dict, upstream_paths: list[str]) -> None:
    from zephyr.config import DataArguments, ModelArguments, SFTConfig

    _validate_training([ModelArguments, DataArguments, SFTConfig], settings, upstream_paths)


def validate_dpo(settings: dict, upstream_paths: list[str]) -> None:
    from zephyr.config import DataArguments, DPOConfig, ModelArguments

    _validate_training([ModelArguments, DataArguments, DPOConfig], settings, upstream_paths)


RESUME_TRAINING = {"resume_from_checkpoint": True}

STAGES: dict[str, StageSpec] = {
    "sft": StageSpec("sft", ["sft"], wire_sft, _model_output, reads=("binarize",), trains=True,
                     resume_keys=RESUME_TRAINING),
    "dpo": StageSpec("dpo", ["dpo"], wire_dpo, _model_output, reads=("sft", "binarize"), trains=True,
                     resume_keys=RESUME_TRAINING),
}  # fmt: skip

VALIDATORS = {"sft": validate_sft, "dpo": validate_dpo}
