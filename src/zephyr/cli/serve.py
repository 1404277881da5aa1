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
    "\nCompare mode (blind A/B votes on the chat page, POST /v1/compare):"
    "\n         zephyr serve runs/demo/dpo/model --compare-model runs/demo/sft/model --votes votes.jsonl"
    "\n         (without --compare-model: two samples of one model); pairs for dpo from the votes:"
    "\n         zephyr binarize --votes votes.jsonl --output_dir runs/votes/data"
)
API_KEY_ENV = "ZEPHYR_API_KEY"
# The same as zephyr.serve.limits's (a test checks): importing that package would load torch for --help.
DEFAULT_MAX_REQUEST_BYTES = 4 * 2**20
DEFAULT_BODY_TIMEOUT = 30.0
# The same as zephyr.serve.compare's (a test checks).
DEFAULT_MAX_COMPARISONS = 256
DEFAULT_COMPARISON_TTL = 3600.0

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


def build_engine(args, spec: str | None = None, **kwargs):
    """The engine of ``spec`` (default: the model argument), with the model options of ``args``."""
    import torch

    from zephyr.generation.engine import Engine

    if args.threads:
        torch.set_num_threads(args.threads)
    return Engine.from_spec(
        spec or args.model,
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
    add_compare_arguments(parser)
    parser.add_argument(
        "--default-max-tokens",
        type=int,
        default=1024,
        help="Reply length cap when a request gives no max_tokens (default: 1024)",
    )


def add_compare_arguments(parser) -> None:
    group = parser.add_argument_group(
        "compare mode", "Blind A/B comparisons on the chat page; each vote is one line of the --votes file"
    )
    group.add_argument(
        "--votes",
        default=None,
        metavar="FILE",
        help="Turn compare mode on and append every vote to this JSONL file (kept across restarts)",
    )
    group.add_argument(
        "--compare-model",
        default=None,
        metavar="MODEL",
        help="A second model to compare with (loaded like MODEL, with the same --dtype, --device and "
        "--chat-template; the two share --threads). Default: two samples of MODEL, seeds s and s+1",
    )
    group.add_argument(
        "--compare-model-name",
        default=None,
        metavar="NAME",
        help="Its name in votes (default: its spec's last part)",
    )
    group.add_argument(
        "--max-comparisons",
        type=int,
        default=DEFAULT_MAX_COMPARISONS,
        metavar="N",
        help=f"Comparisons kept waiting for a vote; a new one drops the oldest (default: {DEFAULT_MAX_COMPARISONS})",
    )
    group.add_argument(
        "--comparison-ttl",
        type=float,
        default=DEFAULT_COMPARISON_TTL,
        metavar="SECONDS",
        help=f"How long a comparison waits for its vote (default: {DEFAULT_COMPARISON_TTL:g} s)",
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
    if args.compare_model and not args.votes:
        raise ConfigError("--compare-model needs --votes FILE: the file where the votes go")
    if args.votes and (args.max_comparisons < 1 or args.comparison_ttl <= 0):
        raise ConfigError("--max-comparisons and --comparison-ttl must be positive")
    name = args.served_model_name or served_name(args.model)
    compare_name = args.compare_model and (args.compare_model_name or served_name(args.compare_model))
    if compare_name == name:  # before loading anything
        raise ConfigError(
            f"Both models would be served as {name!r}, so votes could not tell them apart; name them with "
            "--served-model-name and --compare-model-name"
        )
    if args.votes and Path(args.votes).is_dir():
        raise ConfigError(
            f"--votes {args.votes} is a directory; give a file, e.g. {Path(args.votes) / 'votes.jsonl'}"
        )
    if args.compare_model:
        args.threads = _thread_share(args.threads, 2)
    engine = build_engine(args, default_max_tokens=args.default_max_tokens)
    arena, other = _arena(args, engine, name, compare_name)
    hosts = [args.host, *(h.strip() for names in args.allowed_hosts for h in names.split(","))]
    app = create_app(
        engine,
        name,
        api_key=api_key,
        max_request_bytes=args.max_request_bytes,
        body_timeout=args.body_timeout,
        allowed_hosts=hosts,
        accept_any_model_name=args.accept_any_model_name,
        arena=arena,
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
        if other is not None:
            other.close()
    return 0


def _thread_share(threads: int | None, models: int) -> int:
    """Torch threads per model when ``models`` engines decode at the same time in this process: an equal
    share of ``--threads`` (default: torch's choice), so together they do not oversubscribe the cores."""
    import torch

    return max(1, (threads or torch.get_num_threads()) // models)


def _arena(args, engine, name: str, compare_name: str | None):
    """Compare mode's state (None without --votes) and the second engine (None without --compare-model)."""
    if not args.votes:
        return None, None
    from zephyr.serve.compare import Arena, Contender

    other = None
    contenders = [Contender(name, engine)]
    if args.compare_model:
        other = build_engine(args, args.compare_model, default_max_tokens=args.default_max_tokens)
        contenders.append(Contender(compare_name, other))
    arena = Arena(args.votes, contenders, max_pending=args.max_comparisons, ttl=args.comparison_ttl)
    what = f"{name} against {compare_name}" if other else f"two samples of {name}"
    log.info("Compare mode: %s; votes go to %s", what, args.votes)
    return arena, other
