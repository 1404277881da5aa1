"""`zephyr serve` against hostile or broken clients: every one gets a 4xx OpenAI-style body or a bounded
wait, never a 500, never a stalled /health. All on the tiny random model over loopback."""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from zephyr.cli import serve as cli
from zephyr.errors import ConfigError
from zephyr.generation.params import SamplingParams
from zephyr.generation.stops import scan_stops
from zephyr.serve import limits
from zephyr.serve.server import ServerThread, create_app

openai = pytest.importorskip("openai", reason="some cases drive the server with the official openai client")

CHAT, TEXT = "/v1/chat/completions", "/v1/completions"
HELLO = [{"role": "user", "content": "Hello there"}]
ENVELOPE = {"message", "type", "param", "code"}
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def server(serve_engine):
    """The default limits, but a short body deadline so that the slow-body cases run fast."""
    with ServerThread(create_app(serve_engine, "tiny", body_timeout=BODY_TIMEOUT)) as s:
        yield s


@pytest.fixture(scope="module")
def small_server(serve_engine):
    """2000 bytes at most: uvicorn reads a body past that whole, so the client reads the 413, not a reset."""
    with ServerThread(create_app(serve_engine, "tiny", max_request_bytes=2000)) as s:
        yield s


def call(server, method: str, path: str, body=None, headers=None, timeout=30.0):
    """(status, JSON payload or None) of one request over a fresh connection."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
    data = body if isinstance(body, bytes | None) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    conn.putrequest(method, path, skip_host="Host" in headers)  # a Host given here replaces the real one
    for key, value in headers.items():
        conn.putheader(key, value)
    if data is not None:
        conn.putheader("Content-Length", str(len(data)))
    conn.endheaders(data)
    response = conn.getresponse()
    raw = response.read()
    conn.close()
    return response.status, (json.loads(raw) if raw.startswith(b"{") else None)


def head(path: str, *lines: str) -> bytes:
    """The head of a POST, to send raw (with bytes of the body the client may never finish)."""
    return "\r\n".join([f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *lines, "", ""]).encode()


def raw_exchange(server, data: bytes, timeout: float) -> tuple[int, dict]:
    """Send raw bytes (a request the client will not finish) and read the one response."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as sock:
        sock.sendall(data)
        response = http.client.HTTPResponse(sock)
        try:
            response.begin()
        except TimeoutError:
            pytest.fail(f"no answer within {timeout} s: the server holds the connection")
        return response.status, json.loads(response.read())


def assert_openai_error(status: int, payload, expected: int, code: str | None = None) -> dict:
    assert status == expected, payload
    assert set(payload) == {"error"} and set(payload["error"]) == ENVELOPE, payload
    assert payload["error"]["message"] and payload["error"]["type"] == "invalid_request_error"
    assert code is None or payload["error"]["code"] == code
    return payload["error"]


def health_seconds(server) -> float:
    start = time.monotonic()
    status, payload = call(server, "GET", "/health", timeout=30)
    assert status == 200 and payload["status"] == "ok"
    return time.monotonic() - start


# ---- 1. one huge request must not stall the server ------------------------------------------------


def test_health_answers_while_a_big_prompt_is_tokenized(server, serve_engine, monkeypatch):
    started, real = threading.Event(), serve_engine.encode_chat

    def slow_encode(messages):  # a tokenizer taking seconds, as a 10 MB prompt did
        started.set()
        time.sleep(2.5)
        return real(messages)

    monkeypatch.setattr(serve_engine, "encode_chat", slow_encode)
    big = {"model": "tiny", "messages": [{"role": "user", "content": "word " * 200_000}], "max_tokens": 2}
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(call, server, "POST", CHAT, big)
        assert started.wait(10), "the big request never reached tokenization"
        assert health_seconds(server) < 1.0, "/health waited for another request's tokenization"
    assert "context" in assert_openai_error(*reply.result(), 400)["message"]  # 1 MB: over the context


def test_a_declared_oversized_body_is_refused_before_it_is_sent(server):
    start = time.monotonic()  # not one byte of the 50 MB follows the head
    status, payload = raw_exchange(server, head(CHAT, "Content-Length: 50000000"), timeout=5)
    error = assert_openai_error(status, payload, 413, "request_too_large")
    assert "--max-request-bytes" in error["message"] and time.monotonic() - start < 3


def test_a_chunked_body_is_counted_as_it_arrives(small_server):
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    chunks = b"".join(
        b"%x\r\n%s\r\n" % (len(body[i : i + 500]), body[i : i + 500]) for i in range(0, len(body), 500)
    )
    data = head(CHAT, "Content-Type: application/json", "Transfer-Encoding: chunked") + chunks + b"0\r\n\r\n"
    status, payload = raw_exchange(small_server, data, timeout=10)
    assert_openai_error(status, payload, 413, "request_too_large")
    ok = {"model": "tiny", "messages": HELLO, "max_tokens": 2}  # under the limit: served as usual
    assert call(small_server, "POST", CHAT, ok)[0] == 200


# ---- 2. long stop strings -------------------------------------------------------------------------


@pytest.mark.parametrize("stop", ["s" * 401, ["a" * 101, "b" * 101, "c" * 101, "d" * 101]])
def test_stop_strings_are_bounded_in_total_length(server, stop):
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 2, "stop": stop}
    status, payload = call(server, "POST", CHAT, body)
    error = assert_openai_error(status, payload, 400)
    assert error["param"] == "stop" and "`stop`" in error["message"] and "400" in error["message"]
    assert len(error["message"]) < 300  # the refused string is not echoed back whole


def test_a_long_stop_string_does_not_slow_generation(serve_engine):
    # The engine itself takes any stop (the HTTP cap is the server's): its per-token work is bounded.
    prompt = serve_engine.encode_chat(HELLO)
    params = SamplingParams(max_tokens=8, temperature=0, stop=["ab" * 100_000])
    start = time.monotonic()
    done = serve_engine.submit(prompt, params).result()
    assert done.completion_tokens >= 1 and time.monotonic() - start < 3.0


def test_incremental_stop_scan_matches_a_full_scan():
    def full(text, stops):  # the obvious quadratic reference
        hits = [i for s in stops if (i := text.find(s)) >= 0]
        if hits:
            return min(hits), 0
        return None, max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)

    rng = random.Random(0)
    for _ in range(300):
        stops = ["".join(rng.choices("ab", k=rng.randint(1, 6))) for _ in range(rng.randint(1, 4))]
        text, scanned = "", 0
        while len(text) < 60:
            text += "".join(rng.choices("abc", k=rng.randint(1, 4)))
            got = scan_stops(text, stops, scanned)
            assert got == full(text, stops), (text, stops, scanned)
            if got[0] is not None:
                break
            scanned = len(text)


# ---- 3. validation failures are 400s, never 500s --------------------------------------------------


BAD_VALUES = [
    (CHAT, {"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
    (
        CHAT,
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "\udfff"}]}]},
        "messages[0].content[0].text",
    ),
    (CHAT, {"stop": ["ok", "\ud800"]}, "stop[1]"),
    (CHAT, {"model": "\ud800"}, "model"),
    *((CHAT, {"seed": seed}, "seed") for seed in (2**63, -(2**63) - 1, 10**40)),
    *((CHAT, {"n": n}, "n") for n in (-1, 0, 10**20)),
    *((CHAT, {"max_tokens": n}, "max_tokens") for n in (-5, 10**20)),
    (CHAT, {"max_completion_tokens": 10**20, "max_tokens": None}, "max_completion_tokens"),
    *((CHAT, {"logprobs": True, "top_logprobs": k}, "top_logprobs") for k in (-1, 10**20)),
    (TEXT, {"prompt": "\ud800"}, "prompt"),
    (TEXT, {"prompt": ["fine", "bad \udc80"]}, "prompt[1]"),
    (TEXT, {"prompt": "hi", "seed": 2**64}, "seed"),
]


@pytest.mark.parametrize(("path", "change", "param"), BAD_VALUES)
def test_bad_values_are_400s_in_the_openai_envelope(server, path, change, param):
    base = {"model": "tiny", "max_tokens": 2} | ({"messages": HELLO} if path == CHAT else {"prompt": "hi"})
    body = json.dumps(base | change).encode()  # ensure_ascii: a lone surrogate travels as \ud800
    status, payload = call(server, "POST", path, body)
    assert assert_openai_error(status, payload, 400)["param"] == param


def test_the_largest_seed_still_samples(server):
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 2, "seed": 2**63 - 1, "n": 3}
    status, payload = call(server, "POST", CHAT, body)
    assert status == 200 and len(payload["choices"]) == 3


@pytest.mark.parametrize(
    "body", [b"[]", b'"text"', b"null", b"[" * 100_000, b'{"messages": [{"role": "user", "content": 5}]}']
)
def test_malformed_bodies_are_400s(server, body):
    status, payload = call(server, "POST", CHAT, body)
    assert_openai_error(status, payload, 400)


# ---- 4. an unknown model name ---------------------------------------------------------------------


def test_an_unknown_model_is_a_404_model_not_found_unless_any_name_is_accepted(server, serve_engine):
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=2)
    assert info.value.body["code"] == "model_not_found" and info.value.body["param"] == "model"
    assert "'tiny'" in info.value.body["message"]
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4o", prompt="hi", max_tokens=2)
    assert call(server, "POST", CHAT, {"messages": HELLO, "max_tokens": 2})[0] == 200  # none: the served one
    with ServerThread(create_app(serve_engine, "tiny", accept_any_model_name=True)) as s:  # the opt-out
        client = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=30)
        reply = client.chat.completions.create(model="gpt-4o", messages=HELLO, max_tokens=2)
        assert reply.model == "tiny"  # the reply says which model really answered


# ---- 5. slow and short bodies ---------------------------------------------------------------------


def test_a_body_shorter_than_its_content_length_times_out(server):
    start = time.monotonic()
    data = head(CHAT, "Content-Length: 1000") + b'{"model": '
    status, payload = raw_exchange(server, data, timeout=BODY_TIMEOUT + 5)
    assert_openai_error(status, payload, 408, "request_timeout")
    assert time.monotonic() - start < BODY_TIMEOUT + 3
    assert health_seconds(server) < 1.0


def test_a_dripped_body_times_out_too(server):
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(head(TEXT, "Content-Length: 100"))

        def drip():  # one byte every 0.3 s: never idle for long, never done
            for _ in range(10):
                time.sleep(0.3)
                try:
                    sock.sendall(b" ")
                except OSError:
                    return

        start = time.monotonic()  # drip from a thread while this one reads the answer as soon as it comes
        threading.Thread(target=drip, daemon=True).start()
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 408 and time.monotonic() - start < BODY_TIMEOUT + 2


# ---- 6. the API schema and 7. the Host header -----------------------------------------------------


def test_the_api_schema_needs_the_key(serve_engine):
    with ServerThread(create_app(serve_engine, "tiny", api_key="s3cret")) as s:
        assert_openai_error(*call(s, "GET", "/openapi.json"), 401, "invalid_api_key")
        status, schema = call(s, "GET", "/openapi.json", headers={"Authorization": "Bearer s3cret"})
        assert status == 200 and CHAT in schema["paths"]
        for page in ("/docs", "/redoc"):
            assert call(s, "GET", page)[0] == 404
        assert call(s, "GET", "/health", headers={"Host": "rebound.example"})[0] == 200  # the key guards


@pytest.fixture(scope="module")
def keyless_server(serve_engine):
    with ServerThread(create_app(serve_engine, "tiny", allowed_hosts=["chat.lan"])) as s:
        yield s


REFUSED_HOSTS = ["rebound.example", "rebound.example:8000", "127.0.0.1.rebound.example"]
# IP literals cannot be rebound; chat.lan is named with allowed_hosts above.
ALLOWED_HOSTS = [
    "localhost:8000",
    "LOCALHOST.",
    "chat.localhost",
    "127.0.0.1:9",
    "[::1]:8000",
    "10.1.2.3",
    "chat.lan:8000",
]


@pytest.mark.parametrize(
    ("host", "allowed"), [(h, False) for h in REFUSED_HOSTS] + [(h, True) for h in ALLOWED_HOSTS]
)
def test_a_keyless_server_answers_only_its_own_host_names(keyless_server, host, allowed):
    for path in ("/health", "/", "/v1/models"):
        status, payload = call(keyless_server, "GET", path, headers={"Host": host})
        if allowed:
            assert status == 200
        else:
            assert_openai_error(status, payload, 400, "host_not_allowed")


# ---- 8. the API key out of `ps` ------------------------------------------------------------------


def test_the_api_key_comes_from_a_file_the_flag_or_the_environment(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    (tmp_path / "key").write_text("  from-file\n")
    (tmp_path / "empty").write_text("\n")
    monkeypatch.setenv("ZEPHYR_API_KEY", "from-env")

    def key(*argv):
        return cli.resolve_api_key(parser.parse_args(["m", *argv]))

    assert key("--api-key-file", str(tmp_path / "key")) == "from-file"  # the file beats the environment
    assert key("--api-key", "flag", "--api-key-file", str(tmp_path / "key")) == "flag"
    assert key() == "from-env"
    monkeypatch.delenv("ZEPHYR_API_KEY")
    assert key() is None
    for name, problem in (("empty", "empty"), ("missing", "cannot read")):
        with pytest.raises(ConfigError, match=problem):
            key("--api-key-file", str(tmp_path / name))
    args = parser.parse_args(["m"])  # the CLI repeats the server's defaults (importing it loads torch)
    assert args.max_request_bytes == limits.DEFAULT_MAX_REQUEST_BYTES
    assert args.body_timeout == limits.DEFAULT_BODY_TIMEOUT


# ---- 9. disconnects -------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_disconnect_is_one_info_line(serve_engine, caplog, stream):
    def gone() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "disconnected" in r.getMessage()]

    s = ServerThread(create_app(serve_engine, "tiny"))
    uvicorn_log = logging.getLogger("uvicorn.error")  # it does not propagate to the root logger
    uvicorn_log.addHandler(caplog.handler)  # after uvicorn's logging set-up, which replaces handlers
    caplog.set_level(logging.INFO, logger="zephyr.serve")
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 1500, "temperature": 0, "stream": stream}
    try:
        with s:
            conn = http.client.HTTPConnection(s.host, s.port, timeout=30)
            conn.request("POST", CHAT, body=json.dumps(body), headers={"Content-Type": "application/json"})
            deadline = time.monotonic() + 10
            while serve_engine.active_rows == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert serve_engine.active_rows == 1
            conn.sock.shutdown(socket.SHUT_RDWR)
            conn.close()
            deadline = time.monotonic() + 20
            while (serve_engine.active_rows or not gone()) and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        uvicorn_log.removeHandler(caplog.handler)
    assert serve_engine.active_rows == 0, "the disconnected request kept its row"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    (line,) = gone()
    assert line.levelno == logging.INFO and not line.exc_info


# ---- all at once ----------------------------------------------------------------------------------


def test_a_burst_of_hostile_requests_never_stalls_health(server):
    bad = [
        {"messages": [{"role": "user", "content": "\ud800"}]},
        {"messages": HELLO, "seed": 2**70},
        {"messages": HELLO, "stop": "z" * 5000},
        {"messages": HELLO, "model": "nope"},
        {"messages": [{"role": "user", "content": "word " * 100_000}]},
    ]
    with ThreadPoolExecutor(3) as pool:
        replies = [pool.submit(call, server, "POST", CHAT, json.dumps(body).encode()) for body in bad * 9]
        slowest = max(health_seconds(server) for _ in range(10))
    assert sorted({r.result()[0] for r in replies}) == [400, 404] and slowest < 1.0
