"""The batching engine, the OpenAI-compatible server (driven by the official `openai` client), the
terminal chat and the `serve` command, all on the tiny random model over loopback only."""

from __future__ import annotations

import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
import torch

openai = pytest.importorskip(
    "openai", reason="the server tests drive the server with the official openai client"
)

from zephyr.generation.engine import Engine  # noqa: E402
from zephyr.generation.params import InvalidRequest, SamplingParams  # noqa: E402

# The tiny random model's greedy choice is the same token over and over; seeded sampling gives varied text
# that is still reproducible, since every row draws from its own generator.
SEEDED = SamplingParams(max_tokens=12, temperature=1.0, seed=11)
CONVERSATIONS = [
    [{"role": "user", "content": "Hello there"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour, and a long " * 5},
    ],
    [
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Because."},
        {"role": "user", "content": "Ok"},
    ],
]


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    with Engine.from_spec(str(tiny_model_dir), max_batch_size=8) as e:
        yield e


@pytest.fixture(scope="module")
def server(engine):
    from zephyr.serve.server import ServerThread, create_app

    with ServerThread(create_app(engine, "tiny")) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def health(server) -> dict:
    with urllib.request.urlopen(server.url + "/health", timeout=10) as r:
        return json.loads(r.read())


# ---- engine -----------------------------------------------------------------------------------------


def test_batched_generation_matches_one_at_a_time(engine):
    alone = [engine.generate([c], SEEDED)[0] for c in CONVERSATIONS]
    together = engine.generate(CONVERSATIONS, SEEDED)
    for a, b in zip(alone, together, strict=True):
        assert a.choices[0].token_ids == b.choices[0].token_ids
        assert a.completion_tokens == 12 or a.choices[0].finish_reason == "stop"
        assert a.prompt_tokens == b.prompt_tokens > 0


def test_request_joining_a_running_batch_gets_the_same_tokens(engine):
    long = SamplingParams(max_tokens=60, temperature=1.0, seed=11)
    expected = engine.generate([CONVERSATIONS[1]], SEEDED)[0].choices[0].token_ids
    first = engine.submit(engine.encode_chat(CONVERSATIONS[0]), long)
    assert wait_until(lambda: engine.active_rows == 1)
    time.sleep(0.05)  # let the first row decode a few steps, so the newcomer's cache is merged mid-flight
    second = engine.submit(engine.encode_chat(CONVERSATIONS[1]), SEEDED)
    assert second.result().choices[0].token_ids == expected
    assert (
        first.result().choices[0].token_ids
        == engine.generate([CONVERSATIONS[0]], long)[0].choices[0].token_ids
    )


def test_concurrent_requests_share_forward_passes(engine):
    calls = []
    hook = engine.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        params = SamplingParams(max_tokens=16, temperature=0)
        handles = [engine.submit(engine.encode_chat(CONVERSATIONS[i % 3]), params) for i in range(8)]
        results = [h.result() for h in handles]
    finally:
        hook.remove()
    generated = sum(r.completion_tokens for r in results)
    assert generated >= 8 * 8
    assert len(calls) <= generated / 3, f"{len(calls)} forward passes for {generated} tokens: not batched"


def test_generate_keeps_input_order_beyond_one_batch(engine):
    conversations = [[{"role": "user", "content": "hi " * (i + 1)}] for i in range(3 * engine.max_batch_size)]
    results = engine.generate(conversations, SamplingParams(max_tokens=2), progress=True)
    assert [r.prompt_tokens for r in results] == [len(engine.encode_chat(c)) for c in conversations]
    assert all(1 <= r.completion_tokens <= 2 for r in results)


def test_sampling_params_seed_n_and_stop(engine):
    prompt = engine.encode_chat(CONVERSATIONS[0])
    sampled = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=7, n=3)
    a, b = engine.submit(prompt, sampled).result(), engine.submit(prompt, sampled).result()
    assert [c.token_ids for c in a.choices] == [c.token_ids for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in a.choices}) > 1  # each choice has its own seed
    assert a.completion_tokens == sum(len(c.token_ids) for c in a.choices)

    text = (
        engine.submit(prompt, SamplingParams(max_tokens=20, temperature=1, seed=2)).result().choices[0].text
    )
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    cut = (
        engine.submit(prompt, SamplingParams(max_tokens=20, temperature=1, seed=2, stop=[stop]))
        .result()
        .choices[0]
    )
    assert cut.finish_reason == "stop" and cut.text == text[: text.index(stop)]


def test_streaming_pieces_add_up_and_stop_strings_never_leak(engine):
    prompt = engine.encode_chat(CONVERSATIONS[2])
    full = (
        engine.submit(prompt, SamplingParams(max_tokens=24, temperature=1, seed=5)).result().choices[0].text
    )
    stop = full[-6:-2]
    deltas = list(engine.submit(prompt, SamplingParams(max_tokens=24, temperature=1, seed=5, stop=[stop])))
    assert "".join(d.text for d in deltas) == full[: full.index(stop)]
    assert [d.finish_reason for d in deltas][-1] == "stop" and len(deltas) > 2


def test_cancelled_stream_frees_its_row(engine):
    handle = engine.submit(
        engine.encode_chat(CONVERSATIONS[0]), SamplingParams(max_tokens=1500, temperature=0)
    )
    for i, _ in enumerate(handle):
        if i == 2:
            break
    assert wait_until(lambda: engine.active_rows == 0, timeout=10)


def test_requests_that_do_not_fit_are_refused(engine):
    with pytest.raises(InvalidRequest, match="max_tokens") as info:
        engine.submit(engine.encode_chat(CONVERSATIONS[0]), SamplingParams(max_tokens=engine.context_length))
    assert info.value.param == "max_tokens"
    with pytest.raises(InvalidRequest, match="context"):
        engine.submit(list(range(5, 5 + engine.context_length)))
    with pytest.raises(InvalidRequest, match="temperature"):
        SamplingParams(temperature=-0.5)


def test_clip_policy_generates_up_to_the_end_of_the_context(engine):
    prompt = list(range(5, 5 + engine.context_length - 3))  # room for 3 tokens
    too_many = SamplingParams(max_tokens=engine.context_length, temperature=1.0, seed=1)
    done = engine.submit(prompt, too_many, on_overflow="clip").result()
    assert 1 <= done.completion_tokens <= 3 and done.choices[0].finish_reason in ("length", "stop")
    with pytest.raises(InvalidRequest, match="context"):  # a prompt with no room left is refused either way
        engine.submit(list(range(5, 5 + engine.context_length)), too_many, on_overflow="clip")


# ---- server through the openai client ---------------------------------------------------------------


def test_models_and_health(client, server):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert health(server)["status"] == "ok"


def test_chat_completion_matches_the_engine(client, engine):
    reply = client.chat.completions.create(
        model="tiny", messages=CONVERSATIONS[1], max_tokens=12, temperature=1.0, seed=11
    )
    expected = engine.generate([CONVERSATIONS[1]], SEEDED)[0]
    assert reply.object == "chat.completion" and reply.model == "tiny"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == expected.choices[0].text
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens == expected.prompt_tokens
    assert reply.usage.completion_tokens == expected.completion_tokens
    assert reply.usage.total_tokens == expected.prompt_tokens + expected.completion_tokens


def test_chat_streaming_sends_openai_chunks(client):
    kwargs = dict(model="tiny", messages=CONVERSATIONS[0], max_tokens=10, temperature=1.0, seed=4)
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    stream = client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_chat_n_seed_and_stop_through_the_api(client):
    kwargs = dict(model="tiny", messages=CONVERSATIONS[0], max_tokens=8, temperature=1.0, seed=3, n=2)
    a, b = client.chat.completions.create(**kwargs), client.chat.completions.create(**kwargs)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    same = dict(model="tiny", messages=CONVERSATIONS[0], max_tokens=16, temperature=1.0, seed=8)
    text = client.chat.completions.create(**same).choices[0].message.content
    stop = text[6:9]
    cut = client.chat.completions.create(**same, stop=[stop])
    assert cut.choices[0].message.content == text[: text.index(stop)]


def test_text_completions(client):
    reply = client.completions.create(model="tiny", prompt=["Once upon", "a time"], max_tokens=5, seed=1)
    assert reply.object == "text_completion"
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.usage.completion_tokens > 0
    streamed = client.completions.create(model="tiny", prompt="Once upon", max_tokens=5, seed=1, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == reply.choices[0].text


def test_concurrent_clients_all_succeed(client):
    results = [None] * 8

    def ask(i):
        results[i] = client.chat.completions.create(model="tiny", messages=CONVERSATIONS[i % 3], max_tokens=8)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(r is not None and r.usage.completion_tokens > 0 for r in results)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": []}, "messages"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "word " * 3000}]}, "messages"),
    ],
)
def test_bad_requests_get_an_openai_error(client, change, param):
    body = {"model": "tiny", "messages": CONVERSATIONS[0], "max_tokens": 4} | change
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**body)
    error = info.value.body
    assert info.value.status_code == 400
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def raw_post(server, path: str, body: bytes, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    status, payload = response.status, json.loads(response.read())
    conn.close()
    return status, payload


def test_malformed_json_and_unknown_routes(server):
    status, payload = raw_post(server, "/v1/chat/completions", b'{"messages": [')
    assert status == 400 and "JSON" in payload["error"]["message"]
    status, payload = raw_post(server, "/v1/nothing-here", b"{}")
    assert status == 404 and payload["error"]["type"] == "invalid_request_error"


def test_client_disconnect_mid_stream_frees_the_slot(server, engine):
    # Greedy: the tiny model then repeats one token and never ends early by sampling EOS.
    body = {
        "model": "tiny",
        "messages": CONVERSATIONS[0],
        "max_tokens": 1500,
        "stream": True,
        "temperature": 0,
    }
    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
    conn.request(
        "POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    response = conn.getresponse()
    assert response.status == 200
    response.fp.readline()  # the first event has arrived, so the request holds a row
    assert engine.active_rows == 1 or wait_until(lambda: engine.active_rows == 1, timeout=5)
    conn.sock.shutdown(2)
    conn.close()
    assert wait_until(lambda: engine.active_rows == 0, timeout=20), "the disconnected stream kept its row"


def test_api_key_guards_the_api_but_not_the_page(engine):
    from zephyr.serve.server import ServerThread, create_app

    with ServerThread(create_app(engine, "tiny", api_key="s3cret")) as s:
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            status, payload = raw_post(
                s, "/v1/chat/completions", json.dumps({"messages": []}).encode(), headers
            )
            assert status == 401 and payload["error"]["code"] == "invalid_api_key"
        bad = openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0, timeout=30)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=s.url + "/v1", api_key="s3cret", max_retries=0, timeout=30)
        assert good.chat.completions.create(model="tiny", messages=CONVERSATIONS[0], max_tokens=3).choices
        with urllib.request.urlopen(s.url + "/", timeout=10) as page:
            assert b"zephyr chat" in page.read()
        assert health(s)["status"] == "ok"


# ---- terminal chat and the CLI --------------------------------------------------------------------------


def test_terminal_chat_streams_resets_and_saves(engine, tmp_path):
    from zephyr.serve.terminal import ChatSession, chat_loop

    out = io.StringIO()
    too_long = "word " * 3000
    lines = iter(
        [
            "Hello",
            "/system Be brief.",
            "Hi again",
            "And more",
            too_long,
            f"/save {tmp_path / 'c.json'}",
            "/exit",
        ]
    )
    session = ChatSession(engine, SamplingParams(max_tokens=6, temperature=0), model_name="tiny", out=out)
    chat_loop(session, read=lambda prompt: next(lines))
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["model"] == "tiny"
    assert [m["role"] for m in saved["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert saved["messages"][2]["content"] in out.getvalue()
    assert "not sent" in out.getvalue()  # an over-long turn is refused without ending the session


def test_chat_command_reads_stdin(tiny_model_dir, tmp_path, monkeypatch, capsys):
    from zephyr.cli import main

    path = tmp_path / "conv.json"
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"Hello\n/save {path}\n"))
    assert (
        main(["chat", str(tiny_model_dir), "--max-tokens", "4", "--seed", "1", "--system", "Be kind."]) == 0
    )
    messages = json.loads(path.read_text())["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert "assistant> " in capsys.readouterr().out


def test_chat_command_answers_one_prompt(tiny_model_dir, capsys):
    from zephyr.cli import main

    assert main(["chat", str(tiny_model_dir), "--prompt", "Hello", "--max-tokens", "5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert out.strip() and "you> " not in out


def test_serve_command_with_api_key_from_the_environment(tiny_model_dir):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = os.environ | {"ZEPHYR_API_KEY": "from-env"}
    cmd = [sys.executable, "-m", "zephyr.cli", "serve", str(tiny_model_dir), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"

        def up():
            try:
                return urllib.request.urlopen(url + "/health", timeout=2).status == 200
            except OSError:
                return proc.poll() is not None  # stop waiting if it died

        assert wait_until(up, timeout=120) and proc.poll() is None, proc.stderr.read().decode()[-2000:]
        client = openai.OpenAI(base_url=url + "/v1", api_key="from-env", max_retries=0, timeout=30)
        assert client.models.list().data[0].id == tiny_model_dir.name
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0, timeout=30).models.list()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_chat_logprobs_are_the_models_own(client, engine):
    from zephyr.chat import encode_prompt

    kwargs = dict(max_tokens=6, temperature=1.0, seed=3)
    reply = client.chat.completions.create(
        model="tiny", messages=CONVERSATIONS[0], logprobs=True, top_logprobs=3, **kwargs
    )
    expected = engine.generate([CONVERSATIONS[0]], SamplingParams(top_logprobs=3, **kwargs))[0].choices[0]
    content = reply.choices[0].logprobs.content
    assert (
        len(content) == len(expected.token_ids) == len(expected.logprobs) > 0
    )  # one per token, EOS excluded
    for entry, mine in zip(content, expected.logprobs, strict=True):
        assert entry.logprob == pytest.approx(mine.logprob, abs=1e-5) and entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        tops = [t.logprob for t in entry.top_logprobs]
        assert tops == sorted(tops, reverse=True) and tops[0] >= entry.logprob
        assert entry.token == engine.tokenizer.decode([mine.token_id], clean_up_tokenization_spaces=False)
        assert entry.bytes == list(entry.token.encode())
    # The first token's log-prob is the model's own next-token distribution, before temperature.
    ids = torch.tensor([encode_prompt(engine.tokenizer, CONVERSATIONS[0])])
    with torch.no_grad():
        logits = engine.model(ids).logits[0, -1, : len(engine.tokenizer)]
    first = expected.logprobs[0]
    assert first.logprob == pytest.approx(
        torch.log_softmax(logits.float(), -1)[first.token_id].item(), abs=1e-4
    )
    greedy = client.chat.completions.create(
        model="tiny", messages=CONVERSATIONS[0], max_tokens=3, temperature=0, logprobs=True
    )
    assert all(e.top_logprobs == [] for e in greedy.choices[0].logprobs.content)
    plain = client.chat.completions.create(model="tiny", messages=CONVERSATIONS[0], max_tokens=3)
    assert plain.choices[0].logprobs is None


@pytest.mark.parametrize(
    "change",
    [{"top_logprobs": 2}, {"logprobs": True, "top_logprobs": 21}, {"logprobs": True, "stream": True}],
)
def test_bad_logprobs_requests_are_refused(server, change):
    body = {"model": "tiny", "messages": CONVERSATIONS[0], "max_tokens": 2} | change
    status, payload = raw_post(server, "/v1/chat/completions", json.dumps(body).encode())
    assert status == 400 and "logprobs" in payload["error"]["message"]
    status, payload = raw_post(
        server, "/v1/completions", json.dumps({"prompt": "hi", "logprobs": 2}).encode()
    )
    assert status == 400 and "chat/completions" in payload["error"]["message"]
