"""Generation backends: local transformers, and the OpenAI-compatible client against a real `zephyr serve`
on 127.0.0.1 serving the tiny model. Faults (500, 429, timeouts, garbage, dropped connections) come from
``FaultProxy``, which sits in front of the real server and passes through whatever it does not break."""

from __future__ import annotations

import importlib.util
import json
import math
import socket
import threading
import time
import urllib.request

import pytest
import torch

from support.http import FaultProxy, fast_retries
from zephyr.errors import ConfigError
from zephyr.generation.backends import Backend, BackendPool, make_backend, parse_spec
from zephyr.generation.openai import OpenAIBackend
from zephyr.generation.params import BackendError, SamplingParams
from zephyr.generation.vllm import Coalescer

SEEDED = SamplingParams(temperature=1.0, max_tokens=10, seed=7)
CONVERSATIONS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour " * 6}],
    [
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Because."},
        {"role": "user", "content": "Ok"},
    ],
]


# ---- fixtures (`serve_engine` and `served` come from conftest) ------------------------------------


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    with make_backend({"model": str(tiny_model_dir), "max_batch_size": 16}) as backend:
        yield backend


# ---- specs and parameters ---------------------------------------------------------------------------


def test_generation_params_are_checked():
    assert SamplingParams(stop="###").stop == ("###",)
    assert SamplingParams(seed=5).seed_of(2) == 7 and SamplingParams().seed_of(1) is None
    for bad in ({"temperature": -1}, {"top_p": 0}, {"max_tokens": 0}, {"n": 0}):
        with pytest.raises(ConfigError, match=f"`{next(iter(bad))}`"):
            SamplingParams(**bad)


def test_backend_specs_parse_with_clear_errors():
    spec = parse_spec("smollm2-135m-instruct")
    assert (spec.type, spec.model, spec.model_id) == (
        "local",
        "smollm2-135m-instruct",
        "smollm2-135m-instruct",
    )
    assert parse_spec({"model": "m", "base_url": "http://127.0.0.1:1/v1"}).type == "openai"
    assert parse_spec({"model": "/ckpts/run-3/", "name": "mine"}).model_id == "mine"
    assert parse_spec({"model": "/ckpts/run-3/"}).model_id == "run-3"
    with pytest.raises(ConfigError, match="did you mean `concurrency`"):
        parse_spec({"model": "m", "concurency": 3})
    with pytest.raises(ConfigError, match="local, openai or vllm"):
        parse_spec({"model": "m", "type": "tgi"})
    with pytest.raises(ConfigError, match="needs `model`"):
        parse_spec({"type": "openai"})
    with pytest.raises(ConfigError, match="`timeout` must be positive"):
        parse_spec({"model": "m", "timeout": 0})
    with pytest.raises(ConfigError, match="http"):
        OpenAIBackend(parse_spec({"model": "m", "base_url": "127.0.0.1:8000"}))


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_says_how_to_get_it():
    with pytest.raises(BackendError, match="pip install vllm") as info:
        make_backend({"type": "vllm", "model": "smollm2-135m-instruct"})
    assert "type: openai" in str(info.value)


# ---- local ------------------------------------------------------------------------------------------


def test_local_backend_batches_reproducibly(local):
    batched = local.generate(CONVERSATIONS, SamplingParams(temperature=1.0, max_tokens=10, seed=7, n=2))
    assert [len(g) for g in batched] == [2, 2, 2]
    alone = [local.generate([c], SEEDED)[0][0] for c in CONVERSATIONS]
    for row, single in zip(batched, alone, strict=True):
        assert row[0] == single  # choice 0 of n=2 uses the same seed as a lone request
        assert row[0].text != row[1].text  # choice 1 uses seed + 1
        assert single.finish_reason in ("stop", "length") and single.prompt_tokens > 0
        assert single.completion_tokens == 10 or single.finish_reason == "stop"


def test_local_backend_stops_at_stop_strings(local):
    params = SamplingParams(temperature=1.0, max_tokens=24, seed=3)
    full = local.generate([CONVERSATIONS[0]], params)[0][0]
    assert full.finish_reason == "length" and len(full.text) > 12
    stop = full.text[8:12]
    cut = local.generate(
        [CONVERSATIONS[0]], SamplingParams(temperature=1.0, max_tokens=24, seed=3, stop=(stop,))
    )[0][0]
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]


def test_local_backend_fails_only_the_row_that_does_not_fit(local):
    huge = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(BackendError, match="context holds") as info:
        local.generate([CONVERSATIONS[0], huge], SEEDED)
    err = info.value
    assert err.index == 1 and list(err.failures) == [1]
    assert err.results[0][0].text and err.results[1] is None


# ---- OpenAI-compatible, against zephyr serve --------------------------------------------------------


def test_openai_backend_against_zephyr_serve_matches_local(served, local):
    with make_backend({"type": "openai", "model": "tiny", "base_url": served}) as remote:
        params = SamplingParams(temperature=1.0, max_tokens=10, seed=7, n=2)
        assert remote.generate(CONVERSATIONS, params) == local.generate(CONVERSATIONS, params)
        greedy = SamplingParams(temperature=0.0, max_tokens=6)
        assert remote.generate(CONVERSATIONS[:1], greedy) == local.generate(CONVERSATIONS[:1], greedy)


def test_openai_backend_api_key_from_named_env_var(serve_engine, monkeypatch):
    from zephyr.serve.server import ServerThread, create_app

    with ServerThread(create_app(serve_engine, "tiny", api_key="sekrit")) as server:
        url = server.url + "/v1"
        monkeypatch.setenv("TEST_ZEPHYR_KEY", "sekrit")
        with make_backend(
            {"type": "openai", "model": "tiny", "base_url": url, "api_key_env": "TEST_ZEPHYR_KEY"}
        ) as b:
            out = b.generate(CONVERSATIONS[:1], SamplingParams(temperature=0.0, max_tokens=3))
            assert out[0][0].completion_tokens > 0
        monkeypatch.setenv("TEST_ZEPHYR_KEY", "wrong")
        with make_backend(fast_retries(url, api_key_env="TEST_ZEPHYR_KEY")) as b:
            with pytest.raises(BackendError, match=r"HTTP 401.*\$TEST_ZEPHYR_KEY") as info:
                b.generate(CONVERSATIONS[:1], SamplingParams(temperature=0.0, max_tokens=3))
            assert info.value.attempts == 1 and not info.value.retryable  # a refusal is not retried
        monkeypatch.delenv("TEST_ZEPHYR_KEY")
        with pytest.raises(BackendError, match="TEST_ZEPHYR_KEY, which is not set"):
            make_backend(fast_retries(url, api_key_env="TEST_ZEPHYR_KEY"))


@pytest.mark.parametrize("fault", ["500", "503", "429", "garbage", "truncated", "drop", "hang"])
def test_openai_backend_retries_transient_faults_then_succeeds(served, fault):
    plan = lambda body, attempt: fault if attempt <= 2 else "pass"  # noqa: E731
    with FaultProxy(served, plan, hang_seconds=2.0) as proxy:
        with make_backend(fast_retries(proxy.url)) as backend:
            out = backend.generate(CONVERSATIONS[:1], SamplingParams(temperature=0.0, max_tokens=4))
    assert out[0][0].completion_tokens > 0
    assert proxy.attempts["Hello there"] == 3


@pytest.mark.parametrize(
    "fault,reason",
    [
        ("500", "HTTP 500"),
        ("garbage", "unreadable reply"),
        ("hang", "timed out"),
        ("drop", "connection failed"),
    ],
)
def test_openai_backend_gives_up_after_max_retries(served, fault, reason):
    with FaultProxy(served, lambda body, attempt: fault, hang_seconds=2.0) as proxy:
        with make_backend(fast_retries(proxy.url, max_retries=1)) as backend:
            with pytest.raises(BackendError, match=reason) as info:
                backend.generate(CONVERSATIONS[:1], SamplingParams(temperature=0.0, max_tokens=4))
    assert info.value.attempts == 2 and info.value.retryable and info.value.index == 0
    assert proxy.attempts["Hello there"] == 2


def test_a_trickling_reply_is_bounded_by_the_whole_request_deadline(served):
    """A judge that sends a byte every 0.1 s never trips the per-read `timeout`; `request_timeout` ends the
    attempt (the full trickle would take about 8 s)."""
    with FaultProxy(served, lambda body, attempt: "trickle") as proxy:
        spec = fast_retries(proxy.url, max_retries=0, timeout=1.0, request_timeout=1.0)
        with make_backend(spec) as backend:
            started = time.monotonic()
            with pytest.raises(BackendError, match="timed out.*longer than 1 s in all"):
                backend.generate(CONVERSATIONS[:1], SamplingParams(temperature=0.0, max_tokens=4))
            assert time.monotonic() - started < 4.0


def test_openai_backend_does_not_retry_a_bad_request(served):
    with (
        FaultProxy(served, lambda body, attempt: "400") as proxy,
        make_backend(fast_retries(proxy.url)) as backend,
    ):
        with pytest.raises(BackendError, match="HTTP 400.*bad request: no"):
            backend.generate(CONVERSATIONS[:1], SamplingParams(temperature=0.0, max_tokens=4))
    assert proxy.attempts["Hello there"] == 1


def test_openai_backend_reports_the_failing_row_and_keeps_the_others(served):
    plan = lambda body, attempt: "500" if body["messages"][-1]["content"] == "Why?" else "pass"  # noqa: E731
    conversations = [CONVERSATIONS[0], [{"role": "user", "content": "Why?"}], CONVERSATIONS[1]]
    with FaultProxy(served, plan) as proxy, make_backend(fast_retries(proxy.url)) as backend:
        with pytest.raises(BackendError) as info:
            backend.generate(conversations, SamplingParams(temperature=0.0, max_tokens=4))
    err = info.value
    assert err.index == 1 and str(err).startswith("row 1:")
    assert (
        err.results[1] is None
        and err.results[0][0].text is not None
        and err.results[2][0].completion_tokens > 0
    )


def test_openai_backend_bounds_concurrency(served):
    conversations = [[{"role": "user", "content": f"question {i}"}] for i in range(6)]
    with (
        FaultProxy(served, delay=0.3) as proxy,
        make_backend(fast_retries(proxy.url, concurrency=2, timeout=30)) as b,
    ):
        out = b.generate(conversations, SamplingParams(temperature=0.0, max_tokens=2))
    assert len(out) == 6 and proxy.max_in_flight == 2


def test_connection_refused_is_retried_then_reported():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once the socket is closed
    with make_backend(fast_retries(f"http://127.0.0.1:{port}/v1", max_retries=2)) as backend:
        started = time.monotonic()
        with pytest.raises(BackendError, match="connection failed.*Refused") as info:
            backend.generate(CONVERSATIONS[:1], SamplingParams(temperature=0.0, max_tokens=4))
    assert info.value.attempts == 3 and time.monotonic() - started < 5


# ---- sharing and batching ---------------------------------------------------------------------------


def test_backend_pool_shares_one_backend_per_spec(served):
    with BackendPool() as pool:
        a = pool.get({"type": "openai", "model": "tiny", "base_url": served})
        b = pool.get({"model": "tiny", "base_url": served})  # the same spec once defaults are filled in
        c = pool.get({"type": "openai", "model": "tiny", "base_url": served, "timeout": 5})
    assert a is b and a is not c and isinstance(a, Backend)


def test_coalescer_merges_concurrent_calls_into_one_batch():
    release, sizes = threading.Event(), []

    def run_batch(items):
        sizes.append(len(items))
        if len(sizes) == 1:
            release.wait(5)  # hold the first batch until the other callers are queued
        return [x * 10 for x in items]

    coalesce = Coalescer(run_batch)
    results = {}
    threads = [
        threading.Thread(target=lambda i=i: results.__setitem__(i, coalesce([i, i + 100]))) for i in range(6)
    ]
    threads[0].start()
    time.sleep(0.2)
    for t in threads[1:]:
        t.start()
    time.sleep(0.3)
    release.set()
    for t in threads:
        t.join(5)
    coalesce.close()
    assert results == {i: [i * 10, (i + 100) * 10] for i in range(6)}
    assert sizes == [2, 10]


# ---- option log-probabilities (judges that answer with one letter) ------------------------------------


def test_local_option_logprobs_equal_a_plain_forward_pass(local, served):
    from transformers import AutoModelForCausalLM

    from zephyr.chat import encode_prompt

    conversations = [
        [{"role": "user", "content": "Is A or B better?"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Pick one: A or B."}],
    ]
    got = local.option_logprobs(conversations, ("A", "B"))
    tokenizer = local.engine.tokenizer
    model = AutoModelForCausalLM.from_pretrained(local.engine.model.name_or_path).eval()
    for conversation, scores in zip(conversations, got, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([encode_prompt(tokenizer, conversation)])).logits[
                0, -1, : len(tokenizer)
            ]
        expected = torch.log_softmax(logits.float(), -1)
        for option in ("A", "B"):
            token = tokenizer.encode(option, add_special_tokens=False)[0]
            assert scores[option] == pytest.approx(expected[token].item(), abs=1e-4)
    assert got[0] != got[1]  # the conversation matters
    with pytest.raises(BackendError, match="distinct tokens"):
        local.option_logprobs(conversations, ("A", "A"))
    # Through `zephyr serve` (top_logprobs) the same numbers come back, for options among the top tokens.
    client_body = {
        "model": "tiny",
        "messages": conversations[0],
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 20,
    }
    request = urllib.request.Request(
        served + "/chat/completions",
        data=json.dumps(client_body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as r:
        tops = [t["token"] for t in json.load(r)["choices"][0]["logprobs"]["content"][0]["top_logprobs"]]
    options = tuple(
        t
        for t in tops
        if t.strip()
        and [x.strip() for x in tops].count(t.strip()) == 1
        and tokenizer.encode(t, add_special_tokens=False)
        == tokenizer.encode(t.strip(), add_special_tokens=False)
        and len(tokenizer.encode(t, add_special_tokens=False)) == 1
    )[:2]
    assert len(options) == 2, tops
    with make_backend(fast_retries(served)) as remote:
        remote_scores = remote.option_logprobs(conversations[:1], options)[0]
    local_scores = local.option_logprobs(conversations[:1], options)[0]
    assert remote_scores == pytest.approx(local_scores, abs=1e-4)


def test_remote_judge_without_logprobs_is_refused_at_once(served):
    no_logprobs = json.dumps(
        {
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "A"},
                    "finish_reason": "length",
                    "logprobs": None,
                }
            ]
        }
    ).encode()
    with FaultProxy(served, lambda body, attempt: (200, no_logprobs)) as proxy:
        with make_backend(fast_retries(proxy.url)) as remote:
            with pytest.raises(BackendError, match="sent no `logprobs`") as info:
                remote.option_logprobs([[{"role": "user", "content": "x"}]], ("A", "B"))
    assert info.value.attempts == 1 and sum(proxy.attempts.values()) == 1


def _logprobs_reply(top: list[tuple[str, float]]) -> bytes:
    """A /chat/completions body as OpenAI sends it with logprobs=true, top_logprobs=N."""
    entries = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top]
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": top[0][0]},
        "finish_reason": "length",
        "logprobs": {"content": [dict(entries[0], top_logprobs=entries)]},
    }
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "choices": [choice],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1},
        }
    ).encode()


def test_remote_option_logprobs_read_top_logprobs_and_retry(served):
    requests = []
    replies = {
        "first": _logprobs_reply(
            [("A", math.log(0.5)), (" A", math.log(0.2)), ("B", math.log(0.1)), ("The", -3.0)]
        ),
        "second": _logprobs_reply([("Sure", -0.1), ("I", -2.5)]),
    }

    def plan(body, attempt):
        requests.append(body)
        key = body["messages"][-1]["content"]
        return "503" if attempt == 1 else (200, replies[key])

    with FaultProxy(served, plan) as proxy, make_backend(fast_retries(proxy.url)) as remote:
        (scores,) = remote.option_logprobs([[{"role": "user", "content": "first"}]], ("A", "B"))
        assert scores["A"] == pytest.approx(math.log(0.7))  # "A" and " A" are the same answer
        assert scores["B"] == pytest.approx(math.log(0.1))
        with pytest.raises(BackendError, match="none of the options"):
            remote.option_logprobs([[{"role": "user", "content": "second"}]], ("A", "B"))
    assert all(
        r["logprobs"] is True and r["top_logprobs"] == 20 and r["max_tokens"] == 1 and r["temperature"] == 0
        for r in requests
    )
    assert len(requests) == 4  # each question once after a 503
