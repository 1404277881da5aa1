"""Merge a LoRA adapter into its base and save a plain checkpoint.

The result is what every serving stack expects: safetensors weights, config, generation config,
tokenizer and chat template in one directory, loadable by ``AutoModelForCausalLM.from_pretrained``
with no PEFT involved. A model that is not an adapter (a .gguf file, the embedded alias) is saved the
same way, which turns it into a normal checkpoint. ``--push-to-hub REPO`` uploads the directory
afterwards, from the main process only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from zephyr.errors import ConfigError, ModelError
from zephyr.io import write_dir_atomic

log = logging.getLogger(__name__)


def is_main_process() -> bool:
    """Rank 0 of a distributed launch, or a plain single process."""
    return int(os.environ.get("RANK", "0")) == 0


def export_model(
    model: str,
    output: str | os.PathLike,
    *,
    base: str | None = None,
    chat_template: str | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
    push_to_hub: str | None = None,
    private: bool = False,
) -> Path:
    """Merge (when ``model`` is a LoRA adapter) and save a standalone checkpoint into ``output``."""
    output = Path(output).expanduser()
    if not is_main_process():
        log.info("Not the main process: leaving the export to rank 0")
        return output
    check_output(output, overwrite)
    merged, tokenizer, adapter = load_for_export(model, base=base, chat_template=chat_template, dtype=dtype)
    _save_atomically(merged, tokenizer, output)
    log.info("Saved %s checkpoint to %s", "merged" if adapter else "plain", output)
    if push_to_hub:
        push_folder(output, push_to_hub, private=private)
    return output


def check_output(output: Path, overwrite: bool) -> None:
    """Refuse to replace a non-empty ``--output`` unless asked to (before any slow loading)."""
    if output.exists() and not output.is_dir():
        raise ConfigError(f"`--output` {output} exists and is a file; choose a directory path")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise ConfigError(f"`--output` {output} exists and is not empty; pass --overwrite to replace it")


def load_for_export(
    model: str,
    *,
    base: str | None = None,
    chat_template: str | None = None,
    dtype="auto",
    merge_dtype: str | None = None,
):
    """``(model, tokenizer, adapter_dir)``: the model ready to leave zephyr, a LoRA adapter merged into its
    base (``adapter_dir`` is None for a full model). ``model`` may also be a run's stage directory.
    ``merge_dtype``, when given, replaces ``dtype`` for a base that an adapter is merged into."""
    from zephyr.models import fit_embeddings_to_tokenizer, load_tokenizer

    model = stage_model(model)
    adapter, base_spec = _adapter_and_base(model, base)
    tokenizer = load_tokenizer(model if _has_tokenizer(adapter) else base_spec, chat_template)
    merged = _load_base(base_spec, merge_dtype if adapter is not None and merge_dtype else dtype)
    # An adapter trained after the tokenizer gained a pad token expects the grown embedding matrix.
    fit_embeddings_to_tokenizer(merged, tokenizer)
    if adapter is not None:
        merged = _merge(merged, adapter)
    return merged.eval(), tokenizer, adapter


def stage_model(spec: str) -> str:
    """A run's stage directory (``runs/demo/dpo``) stands for the model it trained (``dpo/model``)."""
    path = Path(spec).expanduser()
    markers = ("config.json", "adapter_config.json")
    inner = path / "model"
    if path.is_dir() and not any((path / m).is_file() for m in markers):
        if any((inner / m).is_file() for m in markers):
            log.info("%s is a stage directory; exporting its model %s", path, inner)
            return str(inner)
    return spec


def _adapter_and_base(model: str, base: str | None) -> tuple[Path | None, str]:
    """The adapter dir (None when ``model`` is a full model) and the spec of the model to load first."""
    from zephyr.models import resolve_model

    resolved = Path(resolve_model(model))
    config = resolved / "adapter_config.json"
    if not config.is_file():
        if base:
            raise ConfigError(f"`--base` is only for LoRA adapters, and {model} holds no adapter_config.json")
        return None, str(resolved)
    recorded = json.loads(config.read_text()).get("base_model_name_or_path")
    if not (base or recorded):
        raise ConfigError(f"{config} names no `base_model_name_or_path`; pass the base model with --base")
    return resolved, base or recorded


def _has_tokenizer(adapter: Path | None) -> bool:
    return adapter is not None and (adapter / "tokenizer_config.json").is_file()


def _load_base(spec: str, dtype: str):
    from zephyr.models import ModelArguments, load_model

    return load_model(spec, ModelArguments(torch_dtype=dtype))


def _merge(base_model, adapter: Path):
    """Fold the LoRA deltas into the base weights and drop every PEFT wrapper."""
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(base_model, str(adapter))
    except (RuntimeError, ValueError) as exc:  # shapes or target modules that do not match this base
        raise ModelError(f"The adapter in {adapter} does not fit its base model: {exc}") from exc
    return peft_model.merge_and_unload()


def _save_atomically(model, tokenizer, output: Path) -> None:
    """Write into a temporary sibling dir, then swap it in, so a crash never leaves half a checkpoint."""

    def build(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    write_dir_atomic(output, build)


def push_folder(folder: Path, repo: str, private: bool = False) -> None:
    """Upload ``folder`` to hub repo ``repo`` (created if missing); offline or failing, say so plainly."""
    from huggingface_hub import HfApi, constants

    later = f"The checkpoint is saved in {folder}; upload it later with: hf upload {repo} {folder}"
    if constants.HF_HUB_OFFLINE:
        raise ModelError(
            f"Cannot push to the hub repo `{repo}`: offline mode is on (HF_HUB_OFFLINE). {later}"
        )
    try:
        api = HfApi()
        api.create_repo(repo, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=repo, folder_path=str(folder), commit_message="Upload model exported by zephyr"
        )
    except Exception as exc:
        raise ModelError(
            f"Could not push to the hub repo `{repo}`: {type(exc).__name__}: {exc}. {later}"
        ) from exc
    log.info("Pushed %s to https://huggingface.co/%s", folder, repo)
