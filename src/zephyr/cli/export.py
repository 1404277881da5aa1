"""`zephyr export MODEL -o DIR`: leave zephyr with a checkpoint every serving stack loads."""

from __future__ import annotations

DESCRIPTION = (
    "A LoRA adapter is merged into its base first; any other model spec is saved as a plain checkpoint.\n"
    "Example: zephyr export runs/dpo --output runs/zephyr-merged"
    "\n         zephyr export runs/dpo --base mistralai/Mistral-7B-v0.1 --output merged --push-to-hub me/zephyr"
)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="LoRA adapter dir (or any model spec, saved as a plain checkpoint)")
    parser.add_argument("--output", "-o", required=True, help="Directory for the merged checkpoint")
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
    parser.add_argument("--dtype", default="auto", help="auto (keep the checkpoint's), fp32, bf16 or fp16")
    parser.add_argument("--overwrite", action="store_true", help="Replace an existing non-empty output dir")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None, help="Also upload to this hub repo")
    parser.add_argument("--private", action="store_true", help="Create the hub repo as private")


def run(args, extra) -> int:
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
