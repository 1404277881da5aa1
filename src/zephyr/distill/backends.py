"""Generation backends: one interface over local transformers, OpenAI-compatible endpoints and vLLM.

Every stage that needs text from a model (teacher generation, AI feedback, evaluation) goes through
``Backend.generate(conversations, params)``: a list of chat conversations in, ``params.n``
generations per conversation out, in the same order. A row that still fails after the backend's
retries raises ``BackendError`` naming its index; the other rows' results ride along on the error, so
a caller that works row by row loses nothing.

- ``local``: transformers through the batching ``zephyr.serve.engine.Engine`` (left padding, continuous
  batching, stop at EOS or stop strings). Safe to call from many threads at once: that is how the
  engine sees enough requests to batch.
- ``openai``: any OpenAI-compatible ``/v1/chat/completions`` endpoint (OpenAI, vLLM, TGI, llama.cpp,
  ``zephyr serve``), with bounded concurrency, timeouts, and retries with exponential backoff on 429,
  5xx, timeouts, connection errors and unreadable replies.
- ``vllm``: vLLM's offline engine, when it is installed; concurrent calls are merged into one batch.

With ``n > 1`` every backend makes ``n`` single generations, choice ``j`` seeded with ``seed + j``,
so each generation has exact token counts and the backends agree on what a seed means.
"""

from __future__ import annotations

import dataclasses
import http.client
import importlib.util
import json
import logging
import math
import os
import queue
import random
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zephyr.errors import ConfigError, ZephyrError

log = logging.getLogger(__name__)

BACKEND_TYPES = ("local", "openai", "vllm")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
TOP_LOGPROBS = 20  # the most alternatives the OpenAI API returns per token
# HTTP statuses worth retrying: rate limits, request timeouts, and every server-side error.
RETRY_STATUSES = frozenset({408, 409, 425, 429})


@dataclass
class GenerationParams:
    """How to sample. ``temperature=0`` is greedy; ``seed`` makes sampling reproducible (choice ``j`` of
    ``n`` uses ``seed + j``); generation stops at EOS, at any of ``stop``, or after ``max_tokens``."""

    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    stop: tuple[str, ...] = ()
    seed: int | None = None
    n: int = 1

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(s for s in (self.stop or ()) if s)
        checks = [
            ("temperature", self.temperature >= 0, ">= 0 (0 means greedy)"),
            ("top_p", 0 < self.top_p <= 1, "in (0, 1]"),
            ("max_tokens", self.max_tokens >= 1, "at least 1"),
            ("n", self.n >= 1, "at least 1"),
        ]
        for name, ok, rule in checks:
            if not ok:
                raise ConfigError(f"`{name}` must be {rule}; got {getattr(self, name)!r}")

    def seed_of(self, choice: int) -> int | None:
        return None if self.seed is None else self.seed + choice


@dataclass
class Generation:
    """One generated reply and its token counts (``finish_reason``: "stop" or "length")."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


class BackendError(ZephyrError):
    """A generation failed for good (after retries where they apply).

    ``index`` is the failing conversation's position in the batch; after a batch call ``results``
    holds every row's generations (None where it failed) and ``failures`` maps index -> error.
    """

    def __init__(self, message: str, *, index: int | None = None, attempts: int = 1, retryable: bool = False):
        super().__init__(f"row {index}: {message}" if index is not None else message)
        self.reason, self.index, self.attempts, self.retryable = message, index, attempts, retryable
        self.results: list[list[Generation] | None] | None = None
        self.failures: dict[int, BackendError] = {}


def batch_results(results: list, failures: dict[int, BackendError]) -> list[list[Generation]]:
    """The batch's results, or the first failure carrying every row's outcome."""
    if not failures:
        return results
    first = failures[min(failures)]
    first.results, first.failures = results, failures
    if len(failures) > 1:
        log.warning("%d of %d rows failed; the first: %s", len(failures), len(results), first)
    raise first


class Backend:
    """The interface every backend implements; usable as a context manager (closes on exit)."""

    name: str = "backend"

    def generate(
        self, conversations: Sequence[Sequence[dict]], params: GenerationParams
    ) -> list[list[Generation]]:
        """``params.n`` generations for each conversation, in input order; raises BackendError for a
        row that failed (the other rows' results are on the error)."""
        raise NotImplementedError

    def option_logprobs(
        self, conversations: Sequence[Sequence[dict]], options: Sequence[str]
    ) -> list[dict[str, float]]:
        """For each conversation, the log-probability that the reply starts with each option (e.g. a judge's
        "A" or "B"), read from the first token's distribution: local models directly, OpenAI-compatible
        endpoints through `top_logprobs`."""
        raise BackendError(
            f"the {type(self).__name__} backend cannot score options by log-probability; "
            "use a local model for this judge, or text verdicts"
        )

    def close(self) -> None:
        """Release the model or connections; pending calls end with BackendError."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- specs ------------------------------------------------------------------------------------------


def _help(text: str, **kw) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class BackendSpec:
    """Where generations come from. A plain string spec is ``{"type": "local", "model": SPEC}``."""

    model: str = _help("Model spec (local, vllm) or the model name the endpoint serves (openai).")
    type: str | None = _help(
        "local, openai or vllm. Default: openai when `base_url` is set, else local.", default=None
    )
    name: str | None = _help(
        "Model id recorded in outputs. Default: the model spec's last path part.", default=None
    )
    base_url: str | None = _help(
        f"openai: the API root, ending in /v1. Default: {DEFAULT_BASE_URL}.", default=None
    )
    api_key_env: str | None = _help(
        f"openai: environment variable holding the API key. Default: {DEFAULT_KEY_ENV}, optional (local "
        "servers need none); when named explicitly it must be set.",
        default=None,
    )
    concurrency: int = _help("openai: most requests in flight at once.", default=8)
    timeout: float = _help(
        "openai: seconds to wait for the server at each step (connect, send, first byte).", default=60.0
    )
    max_retries: int = _help(
        "openai: retries after the first attempt (429, 5xx, timeouts, connection errors, garbage).", default=4
    )
    backoff: float = _help(
        "openai: first retry delay in seconds; doubles each retry (with jitter).", default=1.0
    )
    max_backoff: float = _help("openai: longest delay between retries, in seconds.", default=30.0)
    dtype: str | None = _help("local, vllm: weights dtype (auto, fp32, bf16, fp16).", default=None)
    chat_template: str | None = _help(
        "local, vllm: zephyr, chatml or Jinja source. Default: the model's own.", default=None
    )
    max_batch_size: int | None = _help("local: most sequences decoded together (default 32).", default=None)
    max_model_len: int | None = _help(
        "local, vllm: context length to allow (default: the model's).", default=None
    )
    device: str = _help("local: auto (CUDA when present), cpu or cuda[:N].", default="auto")
    threads: int | None = _help("local: CPU threads for torch (default: torch's choice).", default=None)

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise ConfigError(f"`model` must be a model spec or served model name; got {self.model!r}")
        self.type = self.type or ("openai" if self.base_url else "local")
        if self.type not in BACKEND_TYPES:
            raise ConfigError(f"`type` must be one of local, openai or vllm; got {self.type!r}")
        for key in ("concurrency", "timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"`{key}` must be positive; got {getattr(self, key)!r}")
        if self.max_retries < 0 or self.backoff < 0:
            raise ConfigError(
                f"`max_retries` and `backoff` must be >= 0; got {self.max_retries}, {self.backoff}"
            )

    @property
    def model_id(self) -> str:
        return self.name or Path(self.model.rstrip("/")).name or self.model

    def key(self) -> str:
        """Identity for sharing one loaded backend between teachers."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def identity(self) -> dict:
        """What decides the text a backend produces; connection and sizing settings (URL, timeouts,
        retries, concurrency, batch size, threads) do not, so a resumed run may change them."""
        return {
            "type": self.type,
            "model": self.model,
            "name": self.model_id,
            "dtype": self.dtype,
            "chat_template": self.chat_template,
        }


def parse_spec(spec: dict | str | BackendSpec) -> BackendSpec:
    """A BackendSpec from a model spec string or a mapping; unknown keys are an error naming the nearest key."""
    from zephyr.config import parse_config

    if isinstance(spec, BackendSpec):
        return spec
    if isinstance(spec, str):
        spec = {"model": spec}
    if not isinstance(spec, dict):
        raise ConfigError(
            f"A backend spec must be a model spec string or a mapping; got {type(spec).__name__}"
        )
    if "model" not in spec:
        raise ConfigError(f"A backend spec needs `model`; got keys {', '.join(spec) or 'none'}")
    try:
        (parsed,) = parse_config([BackendSpec], None, dict(spec))
    except ConfigError as exc:
        raise ConfigError(f"Backend spec {spec!r}: {exc}") from None
    return parsed


def make_backend(spec: dict | str | BackendSpec) -> Backend:
    """Open the backend a spec describes (loading the model for local and vllm)."""
    spec = parse_spec(spec)
    return {"local": LocalBackend, "openai": OpenAIBackend, "vllm": VLLMBackend}[spec.type](spec)


class BackendPool:
    """Backends opened on demand, one per distinct spec, so teachers on one model share its weights."""

    def __init__(self):
        self._open: dict[str, Backend] = {}

    def get(self, spec: dict | str | BackendSpec) -> Backend:
        spec = parse_spec(spec)
        if spec.key() not in self._open:
            self._open[spec.key()] = make_backend(spec)
        return self._open[spec.key()]

    def close(self) -> None:
        for backend in self._open.values():
            backend.close()
        self._open.clear()

    def __enter__(self) -> BackendPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---- local ------------------------------------------------------------------------------------------


class LocalBackend(Backend):
    """transformers on this machine, through the continuous-batching serve Engine."""

    def __init__(self, spec: BackendSpec):
        import torch

        from zephyr.serve.engine import Engine

        if spec.threads:
            torch.set_num_threads(spec.threads)
        self.name = spec.model_id
        self.engine = Engine.from_spec(
            spec.model,
            chat_template=spec.chat_template,
            dtype=spec.dtype or "auto",
            device=spec.device,
            max_batch_size=spec.max_batch_size or 32,
            max_model_len=spec.max_model_len,
        )
        self._encode_lock = threading.Lock()  # one tokenizer shared by every calling thread

    def generate(self, conversations, params: GenerationParams) -> list[list[Generation]]:
        handles, failures = {}, {}
        for i, conversation in enumerate(conversations):
            try:
                handles[i] = self._submit(conversation, params)
            except ZephyrError as exc:  # a conversation the template rejects, or one too long for the context
                failures[i] = BackendError(str(exc), index=i)
        results: list = [None] * len(conversations)
        for i, choices in handles.items():
            try:
                results[i] = [_local_generation(h.result()) for h in choices]
            except Exception as exc:  # the engine failed or was closed while this row was running
                failures[i] = BackendError(f"{type(exc).__name__}: {exc}", index=i)
        return batch_results(results, failures)

    def _submit(self, conversation, params: GenerationParams) -> list:
        from zephyr.serve.engine import SamplingParams

        with self._encode_lock:
            prompt = self.engine.encode_chat(conversation)
        room = self.engine.context_length - len(prompt)
        if room < 1:
            raise BackendError(
                f"the prompt has {len(prompt)} tokens; the context holds {self.engine.context_length}"
            )
        handles = []
        for j in range(params.n):
            sampling = SamplingParams(
                max_tokens=min(params.max_tokens, room),
                temperature=params.temperature,
                top_p=params.top_p,
                seed=params.seed_of(j),
                stop=params.stop,
            )
            handles.append(self.engine.submit(prompt, sampling))
        return handles

    def option_logprobs(self, conversations, options) -> list[dict[str, float]]:
        tokens = self._option_tokens(tuple(options))
        out = []
        for i, conversation in enumerate(conversations):
            try:
                with self._encode_lock:
                    prompt = self.engine.encode_chat(conversation)
                out.append(dict(zip(options, self.engine.next_token_logprobs(prompt, tokens), strict=True)))
            except ZephyrError as exc:
                raise BackendError(str(exc), index=i) from exc
        return out

    def _option_tokens(self, options: tuple[str, ...]) -> list[int]:
        """The first token of each option as the reply would start with it; the options must differ there."""
        with self._encode_lock:
            firsts = [self.engine.tokenizer.encode(o, add_special_tokens=False)[:1] for o in options]
        tokens = [f[0] for f in firsts if f]
        if len(tokens) != len(options) or len(set(tokens)) != len(tokens):
            raise BackendError(
                f"options {list(options)} do not start with distinct tokens of {self.name}'s tokenizer"
            )
        return tokens

    def close(self) -> None:
        self.engine.close()


def _local_generation(completion) -> Generation:
    choice = completion.choices[0]
    return Generation(
        choice.text, choice.finish_reason, completion.prompt_tokens, completion.completion_tokens
    )


# ---- OpenAI-compatible HTTP ---------------------------------------------------------------------------


class _Refused(Exception):
    """A reply that is well formed but cannot serve the request: fail at once, do not retry."""


class _Transient(Exception):
    """A failed attempt worth retrying; ``retry_after`` is the server's requested wait in seconds."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Connections:
    """Keep-alive HTTP(S) connections to one server, one per calling thread."""

    def __init__(self, base_url: str, timeout: float):
        url = urllib.parse.urlsplit(base_url.rstrip("/"))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(
                f"Backend `base_url` must be an http(s) URL such as http://127.0.0.1:8000/v1; got {base_url!r}"
            )
        self.scheme, self.host, self.port, self.prefix = url.scheme, url.hostname, url.port, url.path
        self.timeout = timeout
        self._local = threading.local()

    def post(self, path: str, body: bytes, headers: dict) -> tuple[int, http.client.HTTPMessage, bytes]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
            conn = self._local.conn = cls(self.host, self.port, timeout=self.timeout)
        try:
            conn.request("POST", self.prefix + path, body=body, headers=headers)
            response = conn.getresponse()
            return response.status, response.headers, response.read()
        except BaseException:
            conn.close()  # a connection left mid-exchange cannot be reused
            self._local.conn = None
            raise


class OpenAIBackend(Backend):
    """Chat completions from an OpenAI-compatible server: bounded concurrency, retries with backoff."""

    def __init__(self, spec: BackendSpec):
        self.spec, self.name = spec, spec.model_id
        self._http = _Connections(spec.base_url or DEFAULT_BASE_URL, spec.timeout)
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = _api_key(spec)
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._slots = threading.BoundedSemaphore(spec.concurrency)
        self._closed = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def generate(self, conversations, params: GenerationParams) -> list[list[Generation]]:
        tasks = [(i, j) for i in range(len(conversations)) for j in range(params.n)]
        if len(tasks) == 1:  # the common per-row call: no hand-off to another thread
            futures = {(0, 0): _done(self._generation, 0, conversations[0], params, 0)}
        else:
            pool = self._executor()
            futures = {
                (i, j): pool.submit(self._generation, i, conversations[i], params, j) for i, j in tasks
            }
        results: list = [[None] * params.n for _ in conversations]
        failures: dict[int, BackendError] = {}
        for (i, j), future in futures.items():
            try:
                results[i][j] = future.result()
            except BackendError as exc:
                failures.setdefault(i, exc)
        for i in failures:
            results[i] = None
        return batch_results(results, failures)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.spec.concurrency, thread_name_prefix=f"zephyr-{self.name}"
                )
            return self._pool

    def option_logprobs(self, conversations, options) -> list[dict[str, float]]:
        """One token at temperature 0 with the API's `top_logprobs` (at most 20); an option's log-prob
        sums the variants of its token that differ only in surrounding spaces (" A" and "A")."""
        out = []
        for i, messages in enumerate(conversations):
            body = {
                "model": self.spec.model,
                "messages": list(messages),
                "temperature": 0.0,
                "max_tokens": 1,
                "n": 1,
                "logprobs": True,
                "top_logprobs": TOP_LOGPROBS,
            }
            top = self._attempt_all(i, body, _parse_top_logprobs)
            scores = {o: _logsumexp([lp for tok, lp in top if tok.strip() == o.strip()]) for o in options}
            if all(v == float("-inf") for v in scores.values()):
                raise BackendError(
                    f"{self.name}: none of the options {list(options)} is among the first reply "
                    f"token's {TOP_LOGPROBS} most likely tokens ({[t for t, _ in top][:8]}...)",
                    index=i,
                )
            out.append(scores)
        return out

    def _generation(self, index: int, messages, params: GenerationParams, choice: int) -> Generation:
        return self._attempt_all(index, self._body(messages, params, choice), _parse_chat_reply)

    def _attempt_all(self, index: int, request: dict, parse):
        body = json.dumps(request).encode("utf-8")
        last: _Transient | None = None
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                self._wait(self._delay(attempt, last), index)
            try:
                return self._attempt(body, index, parse)
            except _Transient as exc:
                last = exc
                log.debug("%s: attempt %d for row %d failed: %s", self.name, attempt + 1, index, exc)
        attempts = self.spec.max_retries + 1
        raise BackendError(
            f"{self.name} at {self._url()}: failed {attempts} time(s); last error: {last}",
            index=index,
            attempts=attempts,
            retryable=True,
        )

    def _body(self, messages, params: GenerationParams, choice: int) -> dict:
        body = {
            "model": self.spec.model,
            "messages": list(messages),
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_tokens,
            "n": 1,
        }
        if params.stop:
            body["stop"] = list(params.stop)
        if params.seed is not None:
            body["seed"] = params.seed_of(choice)
        return body

    def _attempt(self, body: bytes, index: int, parse):
        if self._closed.is_set():
            raise BackendError("the backend was closed", index=index)
        try:
            with self._slots:
                status, headers, data = self._http.post("/chat/completions", body, self._headers)
        except (OSError, http.client.HTTPException) as exc:  # timeouts, refused or dropped connections
            kind = "timed out" if isinstance(exc, (socket.timeout, TimeoutError)) else "connection failed"
            raise _Transient(f"{kind} ({type(exc).__name__}: {exc})") from None
        if status == 200:
            try:
                return parse(data)
            except _Refused as exc:
                raise BackendError(f"{self.name} at {self._url()}: {exc}", index=index) from None
            except ValueError as exc:
                raise _Transient(f"unreadable reply ({exc}): {_snippet(data)}") from None
        if status in RETRY_STATUSES or status >= 500:
            raise _Transient(f"HTTP {status}: {_snippet(data)}", _retry_after(headers))
        raise BackendError(self._refusal(status, data), index=index)

    def _refusal(self, status: int, data: bytes) -> str:
        detail = _error_message(data)
        hint = ""
        if status in (401, 403):
            env = self.spec.api_key_env or DEFAULT_KEY_ENV
            hint = f"; put the API key in ${env} (or name another variable with `api_key_env`)"
        elif status == 404:
            hint = f"; check `base_url` (it should end in /v1) and that the server serves `{self.spec.model}`"
        return f"{self.name} at {self._url()} refused the request (HTTP {status}): {detail}{hint}"

    def _delay(self, attempt: int, last: _Transient | None) -> float:
        delay = min(self.spec.max_backoff, self.spec.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        if last is not None and last.retry_after is not None:
            delay = max(delay, min(last.retry_after, self.spec.max_backoff))
        return delay

    def _wait(self, seconds: float, index: int) -> None:
        if self._closed.wait(seconds):
            raise BackendError("the backend was closed while waiting to retry", index=index)

    def _url(self) -> str:
        return (self.spec.base_url or DEFAULT_BASE_URL).rstrip("/")

    def close(self) -> None:
        self._closed.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _done(fn, *args) -> Future:
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
        future.set_exception(exc)
    return future


def _api_key(spec: BackendSpec) -> str | None:
    if spec.api_key_env is None:
        return os.environ.get(DEFAULT_KEY_ENV) or None
    key = os.environ.get(spec.api_key_env)
    if not key:
        raise BackendError(
            f"Backend `api_key_env` names ${spec.api_key_env}, which is not set; "
            f"export {spec.api_key_env}=<key> or remove `api_key_env` for a server without keys"
        )
    return key


def _parse_chat_reply(data: bytes) -> Generation:
    """A Generation from a /chat/completions body; ValueError when it is not one."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not JSON") from None
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("no `choices`")
    message = choices[0].get("message")
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str):
        raise ValueError("no `choices[0].message.content` string")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    return Generation(
        text=text,
        finish_reason=str(choices[0].get("finish_reason") or "stop"),
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
    )


def _parse_top_logprobs(data: bytes) -> list[tuple[str, float]]:
    """(token, log-prob) of the first reply token's alternatives in a /chat/completions body with
    `logprobs`; ValueError when it has none (a server that ignores the option)."""
    reply = _parse_chat_reply(data)  # ValueError (retried) for a reply that is not a chat completion at all
    try:
        first = json.loads(data)["choices"][0]["logprobs"]["content"][0]
        top = first.get("top_logprobs") or [first]
        return [(str(t["token"]), float(t["logprob"])) for t in top]
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        # A well-formed reply without log-probs: asking again will not help.
        raise _Refused(
            f"the server answered ({reply.text[:40]!r}) but sent no `logprobs` for its tokens; this "
            "judge needs an endpoint that supports `logprobs`/`top_logprobs`"
        ) from None


def _logsumexp(values: list[float]) -> float:
    if not values:
        return float("-inf")
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _retry_after(headers) -> float | None:
    try:
        return max(0.0, float(headers.get("Retry-After")))
    except (TypeError, ValueError):
        return None


def _error_message(data: bytes) -> str:
    try:
        return str(json.loads(data)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return _snippet(data)


def _snippet(data: bytes, limit: int = 200) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return repr(text[:limit] + ("..." if len(text) > limit else ""))


# ---- vLLM offline -----------------------------------------------------------------------------------


class Coalescer:
    """Merge concurrent calls into one batch call, so many threads working row by row still feed an
    offline engine (which wants everything at once) large batches.

    ``run_batch(items)`` gets the items of every call waiting when the worker wakes, concatenated, and
    returns one result per item (or raises, failing the whole batch).
    """

    def __init__(self, run_batch, name: str = "coalescer"):
        self._run_batch = run_batch
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def __call__(self, items: list) -> list:
        future: Future = Future()
        self._queue.put((items, future))
        return future.result()

    def _loop(self) -> None:
        while (first := self._queue.get()) is not None:
            calls = [first]
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                calls.append(more)
            self._serve(calls)

    def _serve(self, calls: list) -> None:
        items = [item for call_items, _ in calls for item in call_items]
        try:
            results = self._run_batch(items)
        except BaseException as exc:  # noqa: BLE001 - every waiting caller gets the error
            for _, future in calls:
                future.set_exception(exc)
            return
        start = 0
        for call_items, future in calls:
            future.set_result(results[start : start + len(call_items)])
            start += len(call_items)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=60)


class VLLMBackend(Backend):
    """vLLM's offline ``LLM`` engine (needs vLLM and, in practice, a CUDA GPU)."""

    def __init__(self, spec: BackendSpec):
        if importlib.util.find_spec("vllm") is None:
            raise BackendError(
                "Backend `type: vllm` needs vLLM, which is not installed here. Install it with `pip install vllm` "
                "or `pip install 'zephyr[vllm]'` (Linux with a CUDA GPU), or use `type: local` (transformers), or `type: openai` with the "
                "`base_url` of a running `vllm serve`."
            )
        from vllm import LLM

        from zephyr.chat import resolve_template
        from zephyr.models import resolve_model

        self.name = spec.model_id
        self._template = resolve_template(spec.chat_template)
        self.llm = LLM(
            model=resolve_model(spec.model), dtype=spec.dtype or "auto", max_model_len=spec.max_model_len
        )
        self._batches = Coalescer(self._run_batch, name="zephyr-vllm")

    def generate(self, conversations, params: GenerationParams) -> list[list[Generation]]:
        items = [(list(c), params, j) for c in conversations for j in range(params.n)]
        try:
            flat = self._batches(items)
        except Exception as exc:  # vLLM fails a whole batch at once, so every row in it failed
            reason = f"vLLM failed: {type(exc).__name__}: {exc}"
            failures = {i: BackendError(reason, index=i) for i in range(len(conversations))}
            batch_results([None] * len(conversations), failures)  # raises the first, carrying the rest
        return [flat[i * params.n : (i + 1) * params.n] for i in range(len(conversations))]

    def _run_batch(self, items: list) -> list[Generation]:
        from vllm import SamplingParams

        sampling = [
            SamplingParams(
                n=1,
                temperature=p.temperature,
                top_p=p.top_p,
                max_tokens=p.max_tokens,
                stop=list(p.stop) or None,
                seed=p.seed_of(j),
            )
            for _, p, j in items
        ]
        outputs = self.llm.chat(
            [c for c, _, _ in items], sampling_params=sampling, use_tqdm=False, chat_template=self._template
        )
        return [
            Generation(
                o.outputs[0].text,
                o.outputs[0].finish_reason or "stop",
                len(o.prompt_token_ids or ()),
                len(o.outputs[0].token_ids),
            )
            for o in outputs
        ]

    def close(self) -> None:
        self._batches.close()
