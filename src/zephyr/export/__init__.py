"""Leaving zephyr: a trained model in the forms deployment tools load.

- ``merged``: a plain checkpoint (a LoRA adapter merged into its base), for any transformers stack;
- ``gguf``: one GGUF file for llama.cpp, Ollama and LM Studio, with an Ollama ``Modelfile`` beside it.

Both take any model zephyr trains or serves: a LoRA adapter, a full checkpoint, a run's stage directory.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from zephyr.export.merge import export_model, push_folder

log = logging.getLogger(__name__)

FORMATS = ("merged", "gguf")

__all__ = ["FORMATS", "GGUFExport", "export_gguf", "export_model", "push_folder"]


@dataclass
class GGUFExport:
    """What ``export_gguf`` wrote (paths inside ``output``) and which tensors left the requested type."""

    output: Path
    gguf: Path
    modelfile: Path | None
    types: dict[str, int] = field(default_factory=dict)
    fallbacks: list[str] = field(default_factory=list)


def export_gguf(
    model: str,
    output: str | os.PathLike,
    *,
    outtype: str = "f16",
    base: str | None = None,
    chat_template: str | None = None,
    overwrite: bool = False,
    modelfile: bool = True,
) -> GGUFExport:
    """Export ``model`` (merged first when it is a LoRA adapter) as ``output/model-OUTTYPE.gguf``, with an
    Ollama ``Modelfile`` and a README saying how to run it. ``output`` appears whole or not at all."""
    from zephyr.export.gguf import check_architecture, check_outtype, write_gguf
    from zephyr.export.merge import check_output, is_main_process, load_for_export
    from zephyr.export.modelfile import modelfile_text
    from zephyr.io import write_atomic, write_dir_atomic

    output = Path(output).expanduser()
    name = f"model-{outtype}.gguf"
    result = GGUFExport(output, output / name, output / "Modelfile" if modelfile else None)
    if not is_main_process():
        log.info("Not the main process: leaving the export to rank 0")
        return result
    check_outtype(outtype)
    check_output(output, overwrite)
    # A full model stays in its stored dtype (a 7B bf16 checkpoint takes 14 GB, not 28) and each tensor
    # goes to f32 on its own as it is written, exactly. A LoRA merge runs in f32, so W + BA is not rounded
    # to the base's dtype before the export rounds it again.
    loaded, tokenizer, _ = load_for_export(
        model, base=base, chat_template=chat_template, dtype="auto", merge_dtype="fp32"
    )
    check_architecture(loaded)
    # The Modelfile is decided before any writing, so an untranslatable template costs nothing.
    context = loaded.config.max_position_embeddings
    modelfile_body = modelfile_text(name, tokenizer, context) if modelfile else None
    title = _title(model)

    def build(staging: Path) -> None:
        summary = write_gguf(loaded, tokenizer, staging / name, outtype, name=title)
        result.types, result.fallbacks = summary.types, summary.fallbacks
        if modelfile_body is not None:
            write_atomic(staging / "Modelfile", modelfile_body)
        write_atomic(staging / "README.md", _readme(title, model, outtype, output, result))

    write_dir_atomic(output, build)
    log.info("Wrote %s (%s)", result.gguf, ", ".join(f"{n} {t}" for t, n in result.types.items()))
    return result


def _readme(title: str, source: str, outtype: str, output: Path, result: GGUFExport) -> str:
    name = result.gguf.name
    lines = [
        f"# {title} as GGUF",
        "",
        f"Exported by `zephyr export {source} --format gguf --outtype {outtype}`. Tensor types: "
        + ", ".join(f"{n} {t}" for t, n in sorted(result.types.items()))
        + ".",
        "",
    ]
    if result.fallbacks:
        lines += ["Tensors stored in another type than requested:", ""]
        lines += [f"- {line}" for line in result.fallbacks] + [""]
    lines += ["Run it:", ""]
    if result.modelfile is not None:
        lines.append(f"    ollama create {_slug(title)} -f {output / 'Modelfile'}")
    lines.append(f"    llama-server -m {output / name}")
    return "\n".join(lines) + "\n"


def _title(model: str) -> str:
    """A name for the model: its directory's, or the run stage's for a stage's ``model`` dir."""
    path = Path(model.rstrip("/"))
    if path.name == "model" and path.parent.name:
        return path.parent.name
    return path.name or "model"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name.lower()).strip("-.") or "model"
