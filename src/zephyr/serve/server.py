"""The OpenAI-compatible HTTP API and the chat page, on FastAPI.

Routes: ``GET /`` (chat page) and ``GET /health`` are public; everything under ``/v1`` sits behind
one router whose dependency checks the API key, so no route can forget it. Every error, whoever
raises it, goes through ``error_response`` and leaves as OpenAI's error envelope.

``ServerThread`` runs the app with uvicorn in a background thread on a free loopback port: the
terminal-free way to get a live endpoint in tests, benchmarks and other stages' local runs.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from zephyr.errors import ZephyrError
from zephyr.generation.engine import Completion, Engine, EngineClosed, EngineOverloaded, RequestHandle
from zephyr.generation.params import InvalidRequest
from zephyr.serve import protocol as api

log = logging.getLogger(__name__)


class Unauthorized(ZephyrError):
    """Missing or wrong API key."""


# Exception type -> (HTTP status, OpenAI error type, error code). The first match wins.
ERRORS: list[tuple[type[BaseException], int, str, str | None]] = [
    (RequestValidationError, 400, "invalid_request_error", None),
    (InvalidRequest, 400, "invalid_request_error", None),
    (Unauthorized, 401, "invalid_request_error", "invalid_api_key"),
    (EngineOverloaded, 503, "server_error", "overloaded"),
    (EngineClosed, 503, "server_error", "shutting_down"),
]


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    """A sentence and the offending parameter for pydantic's first complaint about a request body."""
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON", None
    loc = [p for p in first.get("loc", ()) if p != "body"]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
    got = (
        f" (got {first['input']!r})"
        if "input" in first and not isinstance(first["input"], dict | list)
        else ""
    )
    return (f"`{param}`: {first.get('msg')}{got}" if param else f"{first.get('msg')}{got}"), param


def error_response(exc: BaseException) -> JSONResponse:
    """The one place that turns an exception into an HTTP status and OpenAI's error envelope."""
    status, kind, code, param, message = 500, "server_error", None, None, "Internal server error"
    for exc_type, st, kd, cd in ERRORS:
        if isinstance(exc, exc_type):
            status, kind, code, message = st, kd, cd, str(exc)
            break
    else:
        if isinstance(exc, HTTPException):
            status, kind, message = exc.status_code, "invalid_request_error", str(exc.detail)
        else:
            log.error("Unhandled error", exc_info=exc)
    if isinstance(exc, RequestValidationError):
        message, param = _describe_validation(exc)
    elif isinstance(exc, InvalidRequest):
        param = exc.param
    body = api.ErrorResponse(error=api.ErrorInfo(message=message, type=kind, param=param, code=code))
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def api_key_checker(api_key: str | None):
    """A router dependency: with a key configured, require ``Authorization: Bearer <key>``."""

    async def check(request: Request) -> None:
        if not api_key:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), api_key.encode()):
            raise Unauthorized("Missing or incorrect API key: send `Authorization: Bearer <key>`")

    return check


def sse(payload: api.APIModel | str) -> str:
    data = payload if isinstance(payload, str) else payload.model_dump_json()
    return f"data: {data}\n\n"


async def _sse_guarded(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Once streaming has begun the status is sent; a late error travels as an error event instead."""
    try:
        async for event in events:
            yield event
    except Exception as exc:  # noqa: BLE001 - every failure must reach the client as an error event
        yield sse(error_response(exc).body.decode())
    yield sse("[DONE]")


async def _await_unless_gone(handle: RequestHandle, request: Request) -> Completion:
    """Wait for a whole reply, cancelling it if the client hangs up first (so its rows are freed)."""
    task = asyncio.ensure_future(handle.aresult())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if done:
                return task.result()
            if await request.is_disconnected():
                raise asyncio.CancelledError("client disconnected")
    finally:
        if not task.done():
            handle.cancel()
            task.cancel()


class Handlers:
    """The /v1 endpoints for one engine and one served model name."""

    def __init__(self, engine: Engine, model_name: str):
        self.engine, self.model_name = engine, model_name

    def models(self) -> api.ModelList:
        return api.ModelList(
            data=[api.ModelCard(id=self.model_name, max_model_len=self.engine.context_length)]
        )

    async def chat(self, body: api.ChatCompletionRequest, request: Request):
        prompt = self.engine.encode_chat(body.conversation())
        # A max_tokens beyond the context is a 400 naming it, as OpenAI answers (never silently clipped).
        loop = asyncio.get_running_loop()
        handle = self.engine.submit(prompt, body.sampling_params(), loop=loop, on_overflow="refuse")
        rid = api.new_id("chatcmpl")
        if body.stream:
            return _stream(self._chat_chunks(handle, rid, body.include_usage))
        result = await _await_unless_gone(handle, request)
        choices = [
            api.ChatChoice(
                index=c.index,
                message=api.AssistantMessage(content=c.text),
                finish_reason=c.finish_reason,
                logprobs=self._logprobs(c.logprobs),
            )
            for c in result.choices
        ]
        return api.ChatCompletion(id=rid, model=self.model_name, choices=choices, usage=_usage(result))

    def _logprobs(self, tokens) -> api.ChoiceLogprobs | None:
        """OpenAI's per-token log-prob entries; a token is shown as the text it decodes to."""
        if tokens is None:
            return None

        def text(token_id: int) -> str:
            return self.engine.tokenizer.decode([token_id], clean_up_tokenization_spaces=False)

        def entry(token_id: int, logprob: float) -> dict:
            t = text(token_id)
            return {"token": t, "logprob": logprob, "bytes": list(t.encode("utf-8"))}

        return api.ChoiceLogprobs(
            content=[
                api.TokenLogprobs(
                    **entry(t.token_id, t.logprob),
                    top_logprobs=[api.TopLogprob(**entry(i, lp)) for i, lp in t.top],
                )
                for t in tokens
            ]
        )

    async def _chat_chunks(self, handle: RequestHandle, rid: str, include_usage: bool) -> AsyncIterator[str]:
        def chunk(choices, usage=None):
            return sse(api.ChatCompletionChunk(id=rid, model=self.model_name, choices=choices, usage=usage))

        yield chunk(
            [
                api.ChunkChoice(index=r.index, delta=api.DeltaMessage(role="assistant", content=""))
                for r in handle.rows
            ]
        )
        async for d in handle:
            delta = api.DeltaMessage(content=d.text or None)
            yield chunk([api.ChunkChoice(index=d.index, delta=delta, finish_reason=d.finish_reason)])
        if include_usage:
            yield chunk([], usage=_usage(handle.completion()))

    async def completions(self, body: api.CompletionRequest, request: Request):
        prompts = [self.engine.encode_text(p) for p in body.prompts()]
        loop = asyncio.get_running_loop()
        handle = self.engine.submit_many(prompts, body.sampling_params(), loop=loop, on_overflow="refuse")
        rid = api.new_id("cmpl")
        if body.stream:
            return _stream(self._text_chunks(handle, rid, body.include_usage))
        result = await _await_unless_gone(handle, request)
        choices = [
            api.TextChoice(index=c.index, text=c.text, finish_reason=c.finish_reason) for c in result.choices
        ]
        return api.TextCompletion(id=rid, model=self.model_name, choices=choices, usage=_usage(result))

    async def _text_chunks(self, handle: RequestHandle, rid: str, include_usage: bool) -> AsyncIterator[str]:
        async for d in handle:
            choice = api.TextChoice(index=d.index, text=d.text, finish_reason=d.finish_reason)
            yield sse(api.TextCompletion(id=rid, model=self.model_name, choices=[choice]))
        if include_usage:
            yield sse(
                api.TextCompletion(
                    id=rid, model=self.model_name, choices=[], usage=_usage(handle.completion())
                )
            )


def _usage(result: Completion) -> api.Usage:
    return api.Usage.of(result.prompt_tokens, result.completion_tokens)


def _stream(events: AsyncIterator[str]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_sse_guarded(events), media_type="text/event-stream", headers=headers)


def create_app(engine: Engine, model_name: str, api_key: str | None = None) -> FastAPI:
    """The whole HTTP app: chat page, health check, and the key-protected /v1 API."""
    app = FastAPI(title="zephyr", summary="OpenAI-compatible chat server", docs_url=None, redoc_url=None)
    handlers = Handlers(engine, model_name)

    async def handle_error(request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    for exc_type in (RequestValidationError, HTTPException, ZephyrError, Exception):
        app.add_exception_handler(exc_type, handle_error)

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(api_key_checker(api_key))])
    v1.add_api_route("/models", handlers.models, methods=["GET"], response_model=api.ModelList)
    v1.add_api_route("/chat/completions", handlers.chat, methods=["POST"], response_model=None)
    v1.add_api_route("/completions", handlers.completions, methods=["POST"], response_model=None)
    app.include_router(v1)

    page = resources.files("zephyr.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": model_name, "active_rows": engine.active_rows}

    return app


class ServerThread:
    """Run an app with uvicorn in a daemon thread on ``host`` and a free port; ``url`` is its base URL.

    >>> # with ServerThread(create_app(engine, "tiny")) as server: OpenAI(base_url=server.url + "/v1", ...)
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0):
        import uvicorn

        self._socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self.host, self.port = host, self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> ServerThread:
        self._thread.start()
        for _ in range(int(timeout * 20)):
            if self._server.started:
                return self
            if not self._thread.is_alive():
                break
            threading.Event().wait(0.05)
        raise RuntimeError(f"The server on {self.url} did not start within {timeout:.0f} s")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
