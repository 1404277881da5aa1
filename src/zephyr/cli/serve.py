"""`zephyr serve MODEL`: an OpenAI-compatible HTTP server with dynamic batching and a web chat page.

Also holds the model options that `zephyr chat` shares (``add_model_arguments``, ``build_engine``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from zephyr.errors import ConfigError

DESCRIPTION = (
    "Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health, GET /"
    " (and GET /openapi.json, behind the key)."
    "\nExample: zephyr serve smollm2-135m-instruct --port 8000"
    "\n         then point any OpenAI client at http://127.0.0.1:8000/v1"
    "\nThe API key: --api-key-file PATH or $ZEPHYR_API_KEY keep it out of `ps` (--api-key does not)."
)
API_KEY_ENV = "ZEPHYR_API_KEY"
# The same as zephyr.serve.limits's (a test checks): importing that package would load torch for --help.
DEFAULT_MAX_REQUEST_BYTES = 4 * 2**20
DEFAULT_BODY_TIMEOUT = 30.0

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
        help="Require `Authorization: Bearer KEY` on /v1 and /openapi.json (visible in `ps`: prefer "
        f"--api-key-file or ${API_KEY_ENV}; default: the file, else ${API_KEY_ENV} if set)",
    )
    parser.add_argument(
        "--api-key-file", default=None, metavar="PATH", help="Read the API key from this file (stripped)"
    )
    parser.add_argument(
        "--allowed-hosts",
        action="append",
        default=[],
        metavar="NAMES",
        help="Without an API key only requests to localhost, this machine's name, an IP address or "
        "--host are answered (against DNS rebinding); add comma-separated host names, or * for any",
    )
    parser.add_argument(
        "--accept-any-model-name",
        action="store_true",
        help="Answer whatever `model` a request names (default: 404 model_not_found, as OpenAI does)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        metavar="BYTES",
        help=f"Largest request body, else 413 unread (default: {DEFAULT_MAX_REQUEST_BYTES}, 4 MiB)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=DEFAULT_BODY_TIMEOUT,
        metavar="SECONDS",
        help=f"Time to send a whole request body, else 408 (default: {DEFAULT_BODY_TIMEOUT:g} s)",
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


def resolve_api_key(args) -> str | None:
    """--api-key, else the contents of --api-key-file, else $ZEPHYR_API_KEY (None: no key).

    A command line is readable by every user of the machine (`ps`); a file or the environment is not.
    """
    if args.api_key:
        return args.api_key
    if args.api_key_file:
        path = Path(args.api_key_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--api-key-file {path}: cannot read it ({exc})", key="api_key_file") from None
        if not key:
            raise ConfigError(f"--api-key-file {path} is empty; write the key in it", key="api_key_file")
        return key
    return os.environ.get(API_KEY_ENV) or None


def run(args, extra) -> int:
    import uvicorn

    from zephyr.serve.server import create_app

    api_key = resolve_api_key(args)  # before loading the model: a bad key file fails at once
    if args.max_request_bytes < 1 or args.body_timeout <= 0:
        raise ConfigError("--max-request-bytes and --body-timeout must be positive")
    engine = build_engine(args, default_max_tokens=args.default_max_tokens)
    name = args.served_model_name or served_name(args.model)
    hosts = [args.host, *(h.strip() for names in args.allowed_hosts for h in names.split(","))]
    app = create_app(
        engine,
        name,
        api_key=api_key,
        max_request_bytes=args.max_request_bytes,
        body_timeout=args.body_timeout,
        allowed_hosts=hosts,
        accept_any_model_name=args.accept_any_model_name,
    )
    log.info(
        "Serving %s on http://%s:%d (context %d tokens, batches of up to %d, API key %s)",
        name,
        args.host,
        args.port,
        engine.context_length,
        engine.max_batch_size,
        "required" if api_key else "off (Host header checked)",
    )
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=5)
    finally:
        engine.close()
    return 0
