"""The OpenAI-compatible HTTP API and the chat page, on FastAPI.

Routes: ``GET /`` (chat page) and ``GET /health`` are public; everything under ``/v1`` (compare mode's
``/v1/compare`` routes too, see ``compare``) and the API
schema (``GET /openapi.json``; no /docs pages) sit behind routers whose one dependency checks the API
key, so no route can forget it. Every error, whoever raises it, goes through ``error_response`` and
leaves as OpenAI's error envelope. In front of it all, ``limits.RequestGuard`` checks the Host header,
the body's size and the time it takes to arrive.

Tokenizing a prompt and decoding log-prob tokens take CPU time that grows with the request: they run
in a worker thread, so one huge request never stalls the event loop (every other client, ``/health``).

``ServerThread`` runs the app with uvicorn in a background thread on a free loopback port: the
terminal-free way to get a live endpoint in tests, benchmarks and other stages' local runs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import socket
import threading
from collections.abc import AsyncIterator, Sequence
from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from zephyr.distill.votes import Reply
from zephyr.errors import ZephyrError
from zephyr.generation.engine import Completion, Engine, EngineClosed, EngineOverloaded, RequestHandle
from zephyr.generation.params import InvalidRequest
from zephyr.serve import protocol as api
from zephyr.serve.compare import Arena, CompareOff, ComparisonNotFound
from zephyr.serve.limits import (
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_MAX_REQUEST_BYTES,
    HostNotAllowed,
    RequestGuard,
    RequestTimedOut,
    RequestTooLarge,
    local_hosts,
)

log = logging.getLogger(__name__)


class Unauthorized(ZephyrError):
    """Missing or wrong API key."""


class ModelNotFound(InvalidRequest):
    """The request names a model this server does not serve."""


# Exception type -> (HTTP status, OpenAI error type, error code). The first match wins.
ERRORS: list[tuple[type[BaseException], int, str, str | None]] = [
    (RequestValidationError, 400, "invalid_request_error", None),
    (ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    (ComparisonNotFound, 404, "invalid_request_error", "comparison_not_found"),
    (CompareOff, 404, "invalid_request_error", "compare_off"),
    (InvalidRequest, 400, "invalid_request_error", None),
    (Unauthorized, 401, "invalid_request_error", "invalid_api_key"),
    (HostNotAllowed, 400, "invalid_request_error", "host_not_allowed"),
    (RequestTooLarge, 413, "invalid_request_error", "request_too_large"),
    (RequestTimedOut, 408, "invalid_request_error", "request_timeout"),
    (EngineOverloaded, 503, "server_error", "overloaded"),
    (EngineClosed, 503, "server_error", "shutting_down"),
]


def _shown(value, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters: a refused 4 MB prompt is not echoed back whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


def _describe_validation(exc: RequestValidationError) -> tuple[str, str | None]:
    """A sentence and the offending parameter for pydantic's most specific complaint about a body."""
    # A value that fits no member of a union gets one complaint per member; the deepest one says
    # what is wrong (``stop[1]`` is not valid Unicode) where the first may not ("not a string").
    first = max(exc.errors(), key=lambda e: len(e.get("loc", ())))
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON", None
    # pydantic names the member of a union that failed (``str``, ``function-after[_utf8(), str]``,
    # ``list[TextPart]``) among the field names: those are types, not parameters, so they are dropped.
    loc = [p for p in first.get("loc", ()) if p != "body" and (isinstance(p, int) or p.isidentifier())]
    loc = [p for p in loc if p not in ("str", "int", "float", "bool")]
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".") or None
    got = (
        f" (got {_shown(first['input'])})"
        if "input" in first and not isinstance(first["input"], dict | list)
        else ""
    )
    msg = str(first.get("msg", "")).removeprefix("Value error, ")  # our validators' own sentences
    return (f"`{param}`: {msg}{got}" if param else f"{msg}{got}"), param


def error_response(exc: BaseException) -> Response:
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
    # ASCII JSON: a message quoting what the client sent can be encoded whatever it holds.
    content = json.dumps(body.model_dump())
    return Response(content, status_code=status, headers=headers, media_type="application/json")


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


async def _sse_guarded(events: AsyncIterator[str], rid: str) -> AsyncIterator[str]:
    """Once streaming has begun the status is sent; a late error travels as an error event instead."""
    try:
        async for event in events:
            yield event
    except asyncio.CancelledError:  # the server stops the stream when the client hangs up
        log.info("Client disconnected during the stream of %s; generation cancelled", rid)
        raise
    except Exception as exc:  # noqa: BLE001 - every failure must reach the client as an error event
        yield sse(error_response(exc).body.decode())
    yield sse("[DONE]")


async def _await_unless_gone(handle: RequestHandle, request: Request) -> Completion | None:
    """Wait for a whole reply; None, with the request cancelled (its rows freed), if the client hangs
    up first."""
    task = asyncio.ensure_future(handle.aresult())
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=1.0)
            if done:
                return task.result()
            if await request.is_disconnected():
                return None
    finally:
        if not task.done():
            handle.cancel()
            task.cancel()


def _client_gone(request: Request, rid: str) -> Response:
    """A client that hung up is routine: one INFO line, and a 499 (nginx's "client closed request")
    that nobody reads but the access log."""
    client = f"{request.client.host}:{request.client.port}" if request.client else "?"
    log.info("Client %s disconnected before %s was ready; generation cancelled", client, rid)
    return Response(status_code=499)


class Handlers:
    """The /v1 endpoints for one engine and one served model name."""

    def __init__(
        self, engine: Engine, model_name: str, accept_any_model_name: bool = False, arena: Arena | None = None
    ):
        self.engine, self.model_name = engine, model_name
        self.accept_any_model_name = accept_any_model_name
        self.arena = arena

    def models(self) -> api.ModelList:
        return api.ModelList(
            data=[api.ModelCard(id=self.model_name, max_model_len=self.engine.context_length)]
        )

    def _check_model(self, model: str | None) -> None:
        """A wrong name is a client's mistake worth hearing about (it thinks it talks to another
        model), so it is a 404 as from OpenAI, unless the server was told to take any name."""
        if model is None or model == self.model_name or self.accept_any_model_name:
            return
        raise ModelNotFound(
            f"The model {_shown(model)} does not exist here; this server serves {self.model_name!r} "
            "(GET /v1/models)",
            param="model",
        )

    async def chat(self, body: api.ChatCompletionRequest, request: Request):
        self._check_model(body.model)
        prompt = await run_in_threadpool(self.engine.encode_chat, body.conversation())
        # A max_tokens beyond the context is a 400 naming it, as OpenAI answers (never silently clipped).
        loop = asyncio.get_running_loop()
        handle = self.engine.submit(prompt, body.sampling_params(), loop=loop, on_overflow="refuse")
        rid = api.new_id("chatcmpl")
        if body.stream:
            return _stream(self._chat_chunks(handle, rid, body.include_usage), rid)
        result = await _await_unless_gone(handle, request)
        if result is None:
            return _client_gone(request, rid)
        tokenizer = self.engine.tokenizer
        logprobs = await run_in_threadpool(
            lambda: [api.ChoiceLogprobs.of(c.logprobs, tokenizer) for c in result.choices]
        )
        choices = [
            api.ChatChoice(
                index=c.index,
                message=api.AssistantMessage(content=c.text),
                finish_reason=c.finish_reason,
                logprobs=lp,
            )
            for c, lp in zip(result.choices, logprobs, strict=True)
        ]
        return api.ChatCompletion(id=rid, model=self.model_name, choices=choices, usage=_usage(result))

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
        self._check_model(body.model)
        prompts = await run_in_threadpool(lambda: [self.engine.encode_text(p) for p in body.prompts()])
        loop = asyncio.get_running_loop()
        handle = self.engine.submit_many(prompts, body.sampling_params(), loop=loop, on_overflow="refuse")
        rid = api.new_id("cmpl")
        if body.stream:
            return _stream(self._text_chunks(handle, rid, body.include_usage), rid)
        result = await _await_unless_gone(handle, request)
        if result is None:
            return _client_gone(request, rid)
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

    # ---- compare mode ---------------------------------------------------------------------------------

    def _arena(self) -> Arena:
        if self.arena is None:
            raise CompareOff("Compare mode is off: start the server with --votes FILE (and --compare-model)")
        return self.arena

    async def compare_info(self) -> api.CompareInfo:
        return self.arena.info() if self.arena else api.CompareInfo(enabled=False)

    async def compare(self, body: api.CompareRequest, request: Request):
        """Two replies to the conversation, generated together, then stored for the vote in random order."""
        arena = self._arena()
        conversation = body.conversation()
        plan = arena.plan(body)
        loop = asyncio.get_running_loop()
        handles: list[RequestHandle] = []
        try:
            for contender, params in plan:
                prompt = await run_in_threadpool(contender.engine.encode_chat, conversation)
                handles.append(contender.engine.submit(prompt, params, loop=loop, on_overflow="refuse"))
            results = await asyncio.gather(*(_await_unless_gone(h, request) for h in handles))
        finally:
            for handle in handles:  # a refusal or a failure of one reply ends the other too
                handle.cancel()
        if any(r is None for r in results):
            return _client_gone(request, "a comparison")
        # Sample k is the k-th model's reply, or with one model its k-th choice (seed + k).
        replies = [
            _reply(contender.name, params, choice, sample=k if len(plan) == 2 else choice.index)
            for k, ((contender, params), result) in enumerate(zip(plan, results, strict=True))
            for choice in result.choices
        ]
        return arena.open(conversation, replies)

    async def vote(self, comparison_id: str, body: api.VoteRequest) -> api.VoteResult:
        arena = self._arena()
        return await run_in_threadpool(arena.vote, comparison_id, body.choice)  # the write is fsynced


def _reply(model: str, params, choice, sample: int) -> Reply:
    sampling = {
        "temperature": params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
        "seed": params.seed_of(choice.index),
    }
    return Reply(model, choice.text, choice.finish_reason, len(choice.token_ids), sample, sampling)


def _usage(result: Completion) -> api.Usage:
    return api.Usage.of(result.prompt_tokens, result.completion_tokens)


def _stream(events: AsyncIterator[str], rid: str) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(_sse_guarded(events, rid), media_type="text/event-stream", headers=headers)


def create_app(
    engine: Engine,
    model_name: str,
    api_key: str | None = None,
    *,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    body_timeout: float = DEFAULT_BODY_TIMEOUT,
    allowed_hosts: Sequence[str] = (),
    accept_any_model_name: bool = False,
    arena: Arena | None = None,
) -> FastAPI:
    """The whole HTTP app: chat page, health check, the key-protected /v1 API and its schema.

    ``arena`` turns compare mode on (``/v1/compare``: blind pairs of replies and their votes).

    ``max_request_bytes`` and ``body_timeout`` bound each request body (413, 408). Without an API key,
    only requests addressed to localhost, an IP address or a name in ``allowed_hosts`` (``"*"``: any)
    are answered, which shuts out DNS rebinding; with a key, the key guards the API instead.
    """
    # No /docs or /redoc pages, and the schema is served behind the key by a route of our own.
    app = FastAPI(
        title="zephyr",
        summary="OpenAI-compatible chat server",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    async def handle_error(request: Request, exc: Exception) -> Response:
        return error_response(exc)

    for exc_type in (RequestValidationError, HTTPException, ZephyrError, Exception):
        app.add_exception_handler(exc_type, handle_error)
    app.add_middleware(
        RequestGuard,
        render=error_response,
        max_bytes=max_request_bytes,
        body_timeout=body_timeout,
        allowed_hosts=None if api_key else local_hosts(allowed_hosts),
    )
    _add_routes(app, Handlers(engine, model_name, accept_any_model_name, arena), api_key)
    return app


def _add_routes(app: FastAPI, handlers: Handlers, api_key: str | None) -> None:
    auth = [Depends(api_key_checker(api_key))]  # the one key check, on each router that needs one
    v1 = APIRouter(prefix="/v1", dependencies=auth)
    v1.add_api_route("/models", handlers.models, methods=["GET"], response_model=api.ModelList)
    v1.add_api_route("/chat/completions", handlers.chat, methods=["POST"], response_model=None)
    v1.add_api_route("/completions", handlers.completions, methods=["POST"], response_model=None)
    v1.add_api_route("/compare", handlers.compare_info, methods=["GET"], response_model=api.CompareInfo)
    v1.add_api_route("/compare", handlers.compare, methods=["POST"], response_model=None)
    vote_path = "/compare/{comparison_id}/vote"
    v1.add_api_route(vote_path, handlers.vote, methods=["POST"], response_model=api.VoteResult)
    app.include_router(v1)

    schema = APIRouter(dependencies=auth)

    async def openapi() -> dict:
        return app.openapi()

    schema.add_api_route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)
    app.include_router(schema)

    page = resources.files("zephyr.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": handlers.model_name, "active_rows": handlers.engine.active_rows}


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
