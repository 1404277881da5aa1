"""`zephyr export MODEL -o DIR`: leave zephyr with a checkpoint every serving stack loads, or a GGUF."""

from __future__ import annotations

DESCRIPTION = (
    "A LoRA adapter is merged into its base first; any other model spec (a checkpoint, a run's stage dir)\n"
    "is saved as it is. --format merged writes a plain transformers checkpoint; --format gguf writes\n"
    "DIR/model-OUTTYPE.gguf for llama.cpp/Ollama with an Ollama Modelfile and a README beside it.\n"
    "Example: zephyr export runs/dpo --output runs/zephyr-merged"
    "\n         zephyr export runs/dpo --base mistralai/Mistral-7B-v0.1 --output merged --push-to-hub me/zephyr"
    "\n         zephyr export runs/demo/dpo/model --format gguf --outtype q8_0 -o runs/demo/gguf"
)

OUTTYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")  # zephyr.export.gguf.OUTTYPES, kept here for --help speed


def add_arguments(parser) -> None:
    parser.add_argument("model", help="LoRA adapter dir, checkpoint dir, run stage dir or any model spec")
    parser.add_argument("--output", "-o", required=True, help="Directory to write")
    parser.add_argument(
        "--format",
        choices=("merged", "gguf"),
        default="merged",
        help="merged: a transformers checkpoint; gguf: a llama.cpp/Ollama file (default: merged)",
    )
    parser.add_argument(
        "--outtype",
        choices=OUTTYPES,
        default="f16",
        help="GGUF tensor type (default f16); a tensor whose rows q8_0/q4_0 blocks do not divide is stored "
        "as f16, and the export says which",
    )
    parser.add_argument(
        "--base",
        default=None,
        help="Base model spec (default: `base_model_name_or_path` in adapter_config.json)",
    )
    parser.add_argument(
        "--chat-template",
        default=None,
        help="zephyr, chatml or Jinja source to store (default: the tokenizer's own, else zephyr)",
    )
    parser.add_argument(
        "--dtype", default="auto", help="merged only: auto (keep the checkpoint's), fp32, bf16 or fp16"
    )
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing non-empty output dir")
    parser.add_argument("--no-modelfile", action="store_true", help="gguf only: write no Ollama Modelfile")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None, help="Also upload to this hub repo")
    parser.add_argument("--private", action="store_true", help="Create the hub repo as private")


def run(args, extra) -> int:
    if args.format == "gguf":
        return _run_gguf(args)
    from zephyr.export import export_model

    out = export_model(
        args.model,
        args.output,
        base=args.base,
        chat_template=args.chat_template,
        dtype=args.dtype,
        overwrite=args.overwrite,
        push_to_hub=args.push_to_hub,
        private=args.private,
    )
    print(f"Merged checkpoint saved to {out}")
    return 0


def _run_gguf(args) -> int:
    from zephyr.errors import ConfigError
    from zephyr.export import export_gguf

    if args.push_to_hub:
        raise ConfigError(
            "`--push-to-hub` uploads merged checkpoints only; upload the GGUF dir with `hf upload`"
        )
    result = export_gguf(
        args.model,
        args.output,
        outtype=args.outtype,
        base=args.base,
        chat_template=args.chat_template,
        overwrite=args.overwrite,
        modelfile=not args.no_modelfile,
    )
    types = ", ".join(f"{n} {t}" for t, n in sorted(result.types.items()))
    print(f"GGUF saved to {result.gguf} ({types})")
    for line in result.fallbacks:
        print(f"  fallback: {line}")
    if result.modelfile is not None:
        print(f"Ollama: ollama create NAME -f {result.modelfile}")
    print(f"llama.cpp: llama-server -m {result.gguf}")
    return 0
