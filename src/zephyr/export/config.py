"""The settings of `zephyr export` as a recipe (what the pipeline's export stage writes for it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from zephyr.config import setting

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")  # zephyr.export.gguf's, here so --help loads no torch


@dataclass
class ExportConfig:
    """Which model to export, in which form, and where."""

    ALIASES: ClassVar[dict[str, str]] = {"output": "output_dir"}

    model: str = setting("LoRA adapter dir, checkpoint dir, run stage dir or any model spec.", "")
    output_dir: str = setting("Directory to write (it must not exist, or be empty, unless `overwrite`).", "")
    format: str = setting(
        "merged: a plain transformers checkpoint; gguf: one file for llama.cpp/Ollama with a Modelfile.",
        "merged",
        choices=("merged", "gguf"),
    )
    outtype: str = setting(
        "GGUF tensor type; a tensor whose rows the q8_0/q4_0 blocks do not divide is stored as f16.",
        "f16",
        choices=OUTTYPES,
    )
    base: str | None = setting("Base model of an adapter. Default: its adapter_config.json's.", None)
    chat_template: str | None = setting(
        "zephyr, chatml or Jinja source to store. Default: the model's.", None
    )
    dtype: str = setting("merged only: auto (keep the checkpoint's), fp32, bf16 or fp16.", "auto")
    overwrite: bool = setting("Replace an existing non-empty output dir.", False)
    modelfile: bool = setting("gguf only: write an Ollama Modelfile beside the file.", True)
    push_to_hub: str | None = setting("merged only: also upload to this hub repo.", None)
    private: bool = setting("Create the hub repo as private.", False)
