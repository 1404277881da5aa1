"""`zephyr export MODEL -o DIR [--format gguf]` or `zephyr export RECIPE.yaml [--key=value ...]`."""

from __future__ import annotations

from zephyr.cli.common import describe, is_recipe_file
from zephyr.export.config import OUTTYPES, ExportConfig

DESCRIPTION = describe(
    [ExportConfig],
    "zephyr export runs/demo/dpo/model --format gguf --outtype q8_0 -o runs/demo/gguf",
    "A LoRA adapter is merged into its base first; any other model spec (a checkpoint, a run's stage dir) "
    "is saved as it is. --format gguf writes DIR/model-OUTTYPE.gguf with an Ollama Modelfile and a README "
    "beside it. The options below (`--output`, `--outtype`, ...) are the recipe keys' spellings.",
)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="The model to export (see `model`), or a YAML recipe of these keys")
    parser.add_argument("--output", "-o", default=None, help="Directory to write (the `output_dir` key)")
    parser.add_argument("--format", choices=("merged", "gguf"), default=None, help="merged (default) or gguf")
    parser.add_argument("--outtype", choices=OUTTYPES, default=None, help="GGUF tensor type (default f16)")
    parser.add_argument("--base", default=None, help="Base model of an adapter")
    parser.add_argument("--chat-template", default=None, help="zephyr, chatml or Jinja source to store")
    parser.add_argument("--dtype", default=None, help="merged only: auto, fp32, bf16 or fp16")
    parser.add_argument(
        "--overwrite", action="store_true", default=None, help="Replace a non-empty output dir"
    )
    parser.add_argument("--no-modelfile", action="store_true", help="gguf only: write no Ollama Modelfile")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None, help="merged only: also upload it")
    parser.add_argument("--private", action="store_true", default=None, help="Create the hub repo as private")


def settings_of(args, extra) -> ExportConfig:
    """The flags and `--key=value` overrides over a recipe file (when MODEL names one) as one config."""
    from zephyr.config import parse_config, parse_overrides

    is_recipe = is_recipe_file(args.model)
    given = {
        "output_dir": args.output,
        "format": args.format,
        "outtype": args.outtype,
        "base": args.base,
        "chat_template": args.chat_template,
        "dtype": args.dtype,
        "overwrite": args.overwrite,
        "modelfile": False if args.no_modelfile else None,
        "push_to_hub": args.push_to_hub,
        "private": args.private,
    }
    values = {k: v for k, v in given.items() if v is not None} | parse_overrides(extra)
    if not is_recipe:
        values.setdefault("model", args.model)
    (cfg,) = parse_config([ExportConfig], args.model if is_recipe else None, values)
    return cfg


def run(args, extra) -> int:
    from zephyr.errors import ConfigError

    cfg = settings_of(args, extra)
    if not cfg.model or not cfg.output_dir:
        raise ConfigError("`model` and `output_dir` (-o DIR) are required")
    if cfg.format == "gguf":
        return _run_gguf(cfg)
    from zephyr.export import export_model

    out = export_model(
        cfg.model,
        cfg.output_dir,
        base=cfg.base,
        chat_template=cfg.chat_template,
        dtype=cfg.dtype,
        overwrite=cfg.overwrite,
        push_to_hub=cfg.push_to_hub,
        private=cfg.private,
    )
    print(f"Merged checkpoint saved to {out}")
    return 0


def _run_gguf(cfg: ExportConfig) -> int:
    from zephyr.errors import ConfigError
    from zephyr.export import export_gguf

    if cfg.push_to_hub:
        raise ConfigError(
            "`push_to_hub` uploads merged checkpoints only; upload the GGUF dir with `hf upload`"
        )
    result = export_gguf(
        cfg.model,
        cfg.output_dir,
        outtype=cfg.outtype,
        base=cfg.base,
        chat_template=cfg.chat_template,
        overwrite=cfg.overwrite,
        modelfile=cfg.modelfile,
    )
    types = ", ".join(f"{n} {t}" for t, n in sorted(result.types.items()))
    print(f"GGUF saved to {result.gguf} ({types})")
    for line in result.fallbacks:
        print(f"  fallback: {line}")
    if result.modelfile is not None:
        print(f"Ollama: ollama create NAME -f {result.modelfile}")
    print(f"llama.cpp: llama-server -m {result.gguf}")
    return 0
