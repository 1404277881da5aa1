"""`zephyr serve MODEL`: an OpenAI-compatible HTTP server with dynamic batching and a web chat page.

Also holds the model options that `zephyr chat` shares (``add_model_arguments``, ``build_engine``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

DESCRIPTION = (
    "Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /."
    "\nExample: zephyr serve smollm2-135m-instruct --port 8000"
    "\n         then point any OpenAI client at http://127.0.0.1:8000/v1"
)
API_KEY_ENV = "ZEPHYR_API_KEY"

log = logging.getLogger(__name__)


def add_model_arguments(parser) -> None:
    """Options for loading a model and sizing the engine (shared with `zephyr chat`)."""
    parser.add_argument(
        "model",
        help="Model spec: hub id, checkpoint or LoRA adapter dir, .gguf file, "
        "or smollm2-135m-instruct (the embedded default)",
    )
    parser.add_argument(
        "--chat-template",
        default=None,
        help="zephyr, chatml or Jinja source (default: the model's own, else zephyr)",
    )
    parser.add_argument("--dtype", default="auto", help="auto, fp32, bf16 or fp16 (default: auto)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:N]")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=32,
        help="Most sequences decoded together in one forward pass (default: 32)",
    )
    parser.add_argument(
        "--max-model-len",
        type=int,
        default=None,
        help="Context length to allow (default: the model's max_position_embeddings)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's choice; fewer helps on a busy machine)",
    )


def build_engine(args, **kwargs):
    import torch

    from zephyr.generation.engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    return Engine.from_spec(
        args.model,
        chat_template=args.chat_template,
        dtype=args.dtype,
        device=args.device,
        max_batch_size=args.max_batch_size,
        max_model_len=args.max_model_len,
        **kwargs,
    )


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="Port (default: 8000)")
    parser.add_argument(
        "--api-key",
        default=None,
        help=f"Require `Authorization: Bearer KEY` on /v1 (default: ${API_KEY_ENV} if set)",
    )
    parser.add_argument(
        "--served-model-name",
        default=None,
        help="Model name in /v1/models and replies (default: the model spec's last part)",
    )
    parser.add_argument(
        "--default-max-tokens",
        type=int,
        default=1024,
        help="Reply length cap when a request gives no max_tokens (default: 1024)",
    )


def served_name(spec: str) -> str:
    return Path(spec.rstrip("/")).name or spec


def run(args, extra) -> int:
    import uvicorn

    from zephyr.serve.server import create_app

    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    engine = build_engine(args, default_max_tokens=args.default_max_tokens)
    name = args.served_model_name or served_name(args.model)
    app = create_app(engine, name, api_key=api_key)
    log.info(
        "Serving %s on http://%s:%d (context %d tokens, batches of up to %d, API key %s)",
        name,
        args.host,
        args.port,
        engine.context_length,
        engine.max_batch_size,
        "required" if api_key else "off",
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        engine.close()
    return 0
