"""Fake-server helpers: ``FaultProxy``, an HTTP proxy on 127.0.0.1 that injects faults (500, 429,
timeouts, garbage, dropped connections) in front of a real server, ``fast_retries``, an openai
backend spec with short timeouts and backoff so fault tests run quickly, and ``call``, one JSON request
to a server (for routes no OpenAI client knows, such as /v1/compare)."""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time
import urllib.error
import urllib.request


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 that forwards to ``upstream`` unless ``plan`` says to fail.

    ``plan(body, attempt)`` gets the request JSON and how many times a request with that body has been
    seen (1 for the first) and returns "pass", "500", "503", "429", "400", "hang", "garbage", "truncated"
    "drop" or "trickle". ``attempts[key]`` counts requests per last user message; ``max_in_flight`` is the most
    requests it held at once.
    """

    def __init__(self, upstream: str, plan=None, hang_seconds: float = 3.0, delay: float = 0.0):
        self.upstream, self.plan, self.hang, self.delay = (
            upstream,
            plan or (lambda body, attempt: "pass"),
            hang_seconds,
            delay,
        )
        self.attempts: dict[str, int] = {}
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.handle(self, body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, handler, body: bytes) -> None:
        request = json.loads(body)
        key = request["messages"][-1]["content"]
        with self.lock:
            self.attempts[key] = self.attempts.get(key, 0) + 1
            attempt = self.attempts[key]
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            time.sleep(self.delay)
            self.act(handler, self.plan(request, attempt), body)
        finally:
            with self.lock:
                self.in_flight -= 1

    def act(self, handler, action, body: bytes) -> None:
        if isinstance(action, tuple):  # (status, payload): a canned reply
            return self.reply(handler, *action, {})
        if action == "pass":
            return self.forward(handler, body)
        if action == "hang":
            time.sleep(self.hang)
            return handler.close_connection or None
        if action == "trickle":  # a valid reply, one byte every 0.1 s: never a read timeout, never done
            payload = json.dumps(
                {"choices": [{"message": {"content": "slow"}, "finish_reason": "stop"}], "usage": {}}
            ).encode()
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            handler.end_headers()
            for byte in payload:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
                time.sleep(0.1)
            return None
        if action == "drop":
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return None
        status, payload, headers = {
            "500": (500, b'{"error": {"message": "boom"}}', {}),
            "503": (503, b"<html>overloaded</html>", {}),
            "429": (429, b'{"error": {"message": "slow down"}}', {"Retry-After": "0"}),
            "400": (400, b'{"error": {"message": "bad request: no"}}', {}),
            "garbage": (200, b"<html>this is not JSON</html>", {}),
            "truncated": (200, b'{"choices": [{"message": {"content": null}}]}', {}),
        }[action]
        self.reply(handler, status, payload, headers)

    def forward(self, handler, body: bytes) -> None:
        headers = {"Content-Type": "application/json"}
        if auth := handler.headers.get("Authorization"):
            headers["Authorization"] = auth
        request = urllib.request.Request(self.upstream + "/chat/completions", data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as r:
                self.reply(handler, r.status, r.read(), {})
        except urllib.error.HTTPError as exc:
            self.reply(handler, exc.code, exc.read(), {})

    @staticmethod
    def reply(handler, status: int, payload: bytes, headers: dict) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(payload)))
        for k, v in headers.items():
            handler.send_header(k, v)
        handler.end_headers()
        handler.wfile.write(payload)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def fast_retries(url: str, **kw) -> dict:
    """An openai backend spec with short timeouts and backoff, for fault tests."""
    return {
        "type": "openai",
        "model": "tiny",
        "base_url": url,
        "timeout": 1.0,
        "max_retries": 2,
        "backoff": 0.01,
        "max_backoff": 0.05,
        "concurrency": 4,
        **kw,
    }


def call(url: str, method: str, path: str, body=None, key: str | None = None) -> tuple[int, dict, str]:
    """One JSON request to ``url + path``: (status, parsed reply, raw reply text), errors included."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=120) as r:
            status, raw = r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read().decode()
    return status, json.loads(raw), raw
