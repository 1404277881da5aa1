"""The ``openai`` backend: chat completions from any OpenAI-compatible endpoint, on the official SDK.

OpenAI itself, vLLM, TGI, llama.cpp and ``zephyr serve`` all speak ``/v1/chat/completions``. The SDK's
client does the HTTP: pooled keep-alive connections shared by every calling thread, the bearer key,
timeouts, and typed errors (``APIStatusError`` with the reply, ``APITimeoutError``,
``APIConnectionError``). Retries are ours, not the SDK's (the client runs with ``max_retries=0``): the
SDK's backoff starts at a fixed 0.5 s capped at 8 s and it does not retry a reply it cannot read, while
a backend spec promises ``max_retries`` retries for every transient fault, starting ``backoff`` seconds
apart, doubling (with jitter) up to ``max_backoff``, and a server's Retry-After honoured up to that
cap. What counts as transient follows the SDK's own rule (408, 409, 429, 5xx, an ``x-should-retry``
header, timeouts, connection errors) plus 425 and unreadable replies; any other refusal (401, 404,
400, a judge endpoint without log-probs) fails at once with a hint at the likely fix.
"""

from __future__ import annotations

import email.utils
import logging
import math
import os
import random
import threading
import time
import urllib.parse
from concurrent.futures import Future, ThreadPoolExecutor

from zephyr.errors import ConfigError
from zephyr.generation.backends import DEFAULT_BASE_URL, DEFAULT_KEY_ENV, Backend, BackendSpec, batch_results
from zephyr.generation.params import MAX_TOP_LOGPROBS, BackendError, Generation, SamplingParams

log = logging.getLogger(__name__)

# Retried besides every 5xx: request timeout, conflict, too early, rate limit (the SDK's set, plus 425).
RETRY_STATUSES = frozenset({408, 409, 425, 429})


class _Refused(Exception):
    """A reply that is well formed but cannot serve the request: fail at once, do not retry."""


class _Transient(Exception):
    """A failed attempt worth retrying; ``retry_after`` is the server's requested wait in seconds."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class OpenAIBackend(Backend):
    """Chat completions from an OpenAI-compatible server: bounded concurrency, retries with backoff."""

    def __init__(self, spec: BackendSpec):
        import openai

        self.spec, self.name = spec, spec.model_id
        self.url = _checked_url(spec.base_url or DEFAULT_BASE_URL)
        key = _api_key(spec)
        self._client = openai.OpenAI(
            base_url=self.url,
            api_key=key or "unused",
            timeout=spec.timeout,
            max_retries=0,  # retried by _call, with the spec's backoff
            http_client=deadline_client(spec.timeout, spec.request_timeout),
        )
        # A server without keys gets no Authorization header at all (the SDK insists on a key otherwise).
        self._headers = None if key else {"Authorization": openai.Omit()}
        self._slots = threading.BoundedSemaphore(spec.concurrency)
        self._closed = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def generate(self, conversations, params: SamplingParams) -> list[list[Generation]]:
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

    def option_logprobs(self, conversations, options) -> list[dict[str, float]]:
        """One token at temperature 0 with the API's `top_logprobs` (at most 20); an option's log-prob
        sums the variants of its token that differ only in surrounding spaces (" A" and "A")."""
        out = []
        for i, messages in enumerate(conversations):
            request = {
                "model": self.spec.model,
                "messages": list(messages),
                "temperature": 0.0,
                "max_tokens": 1,
                "n": 1,
                "logprobs": True,
                "top_logprobs": MAX_TOP_LOGPROBS,
            }
            top = self._call(i, request, _read_top_logprobs)
            scores = {o: _logsumexp([lp for tok, lp in top if tok.strip() == o.strip()]) for o in options}
            if all(v == float("-inf") for v in scores.values()):
                raise BackendError(
                    f"{self.name}: none of the options {list(options)} is among the first reply "
                    f"token's {MAX_TOP_LOGPROBS} most likely tokens ({[t for t, _ in top][:8]}...)",
                    index=i,
                )
            out.append(scores)
        return out

    def close(self) -> None:
        self._closed.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    # ---- one request, with retries ------------------------------------------------------------------

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.spec.concurrency, thread_name_prefix=f"zephyr-{self.name}"
                )
            return self._pool

    def _generation(self, index: int, messages, params: SamplingParams, choice: int) -> Generation:
        request = {
            "model": self.spec.model,
            "messages": list(messages),
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": 1,
        }
        if params.max_tokens is not None:  # None: as long as the server allows
            request["max_tokens"] = params.max_tokens
        if params.stop:
            request["stop"] = list(params.stop)
        if params.seed is not None:
            request["seed"] = params.seed_of(choice)
        return self._call(index, request, _read_reply)

    def _call(self, index: int, request: dict, read):
        """``read(reply)`` of the first attempt that succeeds; BackendError once retries are spent."""
        last: _Transient | None = None
        for attempt in range(self.spec.max_retries + 1):
            if attempt:
                self._wait(self._delay(attempt, last), index)
            try:
                return self._attempt(index, request, read)
            except _Transient as exc:
                last = exc
                log.debug("%s: attempt %d for row %d failed: %s", self.name, attempt + 1, index, exc)
        attempts = self.spec.max_retries + 1
        raise BackendError(
            f"{self.name} at {self.url}: failed {attempts} time(s); last error: {last}",
            index=index,
            attempts=attempts,
            retryable=True,
        )

    def _attempt(self, index: int, request: dict, read):
        import openai

        if self._closed.is_set():
            raise BackendError("the backend was closed", index=index)
        try:
            with self._slots:
                reply = self._client.chat.completions.with_raw_response.create(
                    **request, extra_headers=self._headers
                )
        except openai.APITimeoutError as exc:
            raise _Transient(f"timed out ({_root_cause(exc)})") from None
        except openai.APIConnectionError as exc:  # refused, reset or dropped connections
            raise _Transient(f"connection failed ({_root_cause(exc)})") from None
        except openai.APIStatusError as exc:
            raise self._status_error(exc, index) from None
        except Exception:
            if self._closed.is_set():  # the client was closed under this request
                raise BackendError("the backend was closed", index=index) from None
            raise
        try:
            return read(reply)
        except _Refused as exc:
            raise BackendError(f"{self.name} at {self.url}: {exc}", index=index) from None
        except (ValueError, TypeError, AttributeError) as exc:
            raise _Transient(f"unreadable reply ({exc}): {_snippet(reply.content)}") from None

    def _status_error(self, exc, index: int) -> Exception:
        status, response = exc.status_code, exc.response
        should_retry = response.headers.get("x-should-retry")
        if should_retry == "true" or (
            should_retry != "false" and (status in RETRY_STATUSES or status >= 500)
        ):
            return _Transient(f"HTTP {status}: {_snippet(response.content)}", _retry_after(response.headers))
        detail = _error_message(response)
        hint = ""
        if status in (401, 403):
            env = self.spec.api_key_env or DEFAULT_KEY_ENV
            hint = f"; put the API key in ${env} (or name another variable with `api_key_env`)"
        elif status == 404:
            hint = f"; check `base_url` (it should end in /v1) and that the server serves `{self.spec.model}`"
        message = f"{self.name} at {self.url} refused the request (HTTP {status}): {detail}{hint}"
        return BackendError(message, index=index)

    def _delay(self, attempt: int, last: _Transient | None) -> float:
        """``backoff`` doubling per retry, with jitter, capped at ``max_backoff``; a longer Retry-After wins
        (up to the same cap)."""
        delay = min(self.spec.max_backoff, self.spec.backoff * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
        if last is not None and last.retry_after is not None:
            delay = max(delay, min(last.retry_after, self.spec.max_backoff))
        return delay

    def _wait(self, seconds: float, index: int) -> None:
        if self._closed.wait(seconds):
            raise BackendError("the backend was closed while waiting to retry", index=index)


# ---- helpers ----------------------------------------------------------------------------------------


def deadline_client(timeout: float, deadline: float):
    """An HTTP client whose every request ends by ``deadline`` seconds (to within one read ``timeout``).

    httpx's timeouts apply per socket operation: a judge that sends one byte every few seconds holds a
    row forever. The transport wraps each response's byte stream and fails it, as a read timeout (which
    the SDK reports as APITimeoutError, a retried failure), once the whole request has run too long.
    """
    import httpx2

    class DeadlineStream(httpx2.SyncByteStream):
        def __init__(self, inner, until: float, request):
            self.inner, self.until, self.request = inner, until, request

        def __iter__(self):
            for chunk in self.inner:
                if time.monotonic() > self.until:
                    raise httpx2.ReadTimeout(
                        f"the reply took longer than {deadline:g} s in all", request=self.request
                    )
                yield chunk

        def close(self) -> None:
            self.inner.close()

    class DeadlineTransport(httpx2.HTTPTransport):
        def handle_request(self, request):
            until = time.monotonic() + deadline
            response = super().handle_request(request)
            if time.monotonic() > until:
                response.close()
                raise httpx2.ReadTimeout(f"the reply took longer than {deadline:g} s in all", request=request)
            response.stream = DeadlineStream(response.stream, until, request)
            return response

    return httpx2.Client(transport=DeadlineTransport(), timeout=timeout)


def _checked_url(base_url: str) -> str:
    url = urllib.parse.urlsplit(base_url.rstrip("/"))
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(
            f"Backend `base_url` must be an http(s) URL such as http://127.0.0.1:8000/v1; got {base_url!r}",
            key="base_url",
        )
    return base_url.rstrip("/")


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


def _done(fn, *args) -> Future:
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
        future.set_exception(exc)
    return future


def _read_reply(reply) -> Generation:
    """A Generation from a raw /chat/completions reply; ValueError when it is not one."""
    completion = reply.parse()  # ValueError for a body that is not JSON
    choices = getattr(completion, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise ValueError("no `choices`")
    text = getattr(getattr(choices[0], "message", None), "content", None)
    if not isinstance(text, str):
        raise ValueError("no `choices[0].message.content` string")
    usage = getattr(completion, "usage", None)
    return Generation(
        text=text,
        finish_reason=str(getattr(choices[0], "finish_reason", None) or "stop"),
        prompt_tokens=int(getattr(usage, "prompt_tokens", None) or 0),
        completion_tokens=int(getattr(usage, "completion_tokens", None) or 0),
    )


def _read_top_logprobs(reply) -> list[tuple[str, float]]:
    """(token, log-prob) of the first reply token's alternatives; _Refused when the reply has none (a
    server that ignores the option: asking again will not help)."""
    generation = _read_reply(reply)  # ValueError (retried) for a reply that is not a chat completion at all
    try:
        first = reply.parse().choices[0].logprobs.content[0]
        top = getattr(first, "top_logprobs", None) or [first]
        return [(str(t.token), float(t.logprob)) for t in top]
    except (AttributeError, IndexError, TypeError, ValueError):
        raise _Refused(
            f"the server answered ({generation.text[:40]!r}) but sent no `logprobs` for its tokens; this "
            "judge needs an endpoint that supports `logprobs`/`top_logprobs`"
        ) from None


def _logsumexp(values: list[float]) -> float:
    if not values:
        return float("-inf")
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _root_cause(exc: BaseException) -> str:
    """The innermost cause of an SDK error ("ConnectionRefusedError: [Errno 111] Connection refused")."""
    for _ in range(16):  # transports chain by cause or by context; bounded against a hand-made cycle
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return f"{type(exc).__name__}: {exc}"


def _retry_after(headers) -> float | None:
    """The server's requested wait in seconds: ``retry-after-ms``, or ``Retry-After`` as seconds or a date."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return max(0.0, float(headers.get(name)) / scale)
        except (TypeError, ValueError):
            continue
    try:
        return max(
            0.0, email.utils.parsedate_to_datetime(headers.get("retry-after")).timestamp() - time.time()
        )
    except (TypeError, ValueError):
        return None


def _error_message(response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return _snippet(response.content)


def _snippet(data: bytes, limit: int = 200) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return repr(text[:limit] + ("..." if len(text) > limit else ""))
