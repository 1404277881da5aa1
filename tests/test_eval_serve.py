"""Evaluation through the real HTTP server: `zephyr serve` on 127.0.0.1 with a tiny model answers the questions
and judges them over the OpenAI-compatible API, as a GPT-4 judge would be reached.

A tiny random model cannot write a `[[rating]]`, so this also shows unrated judgments being counted, shown
and left out end to end.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from zephyr.cli import main

SERVED = "tiny-chat"


@pytest.fixture(scope="module")
def server_url(tiny_model_dir):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "zephyr.cli",
        "serve",
        str(tiny_model_dir),
        "--port",
        str(port),
        "--served-model-name",
        SERVED,
        "--max-batch-size",
        "16",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if urllib.request.urlopen(url + "/health", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        yield url + "/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_mt_bench_answers_and_judgments_over_http(server_url, tmp_path, capsys):
    out = tmp_path / "mt_bench"
    args = [
        "eval",
        "mt-bench",
        "--model",
        SERVED,
        "--model-base-url",
        server_url,
        "--judge",
        SERVED,
        "--judge-base-url",
        server_url,
        "--max-new-tokens",
        "12",
        "--judge-max-tokens",
        "8",
        "--output-dir",
        str(out),
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    answers = [json.loads(x) for x in (out / "model_answer" / f"{SERVED}.jsonl").read_text().splitlines()]
    assert len(answers) == 16 and all(len(a["choices"][0]["turns"]) == 2 for a in answers)
    judgments = [
        json.loads(x) for x in (out / "model_judgment" / f"{SERVED}_single.jsonl").read_text().splitlines()
    ]
    assert len(judgments) == 32 and {j["judge"][0] for j in judgments} == {SERVED}
    result = json.loads((out / f"results_{SERVED}_single.json").read_text())["models"][SERVED]
    assert result["n_valid"] + result["n_invalid"] == 32
    unrated = sum(j["score"] == -1 for j in judgments)
    assert result["n_invalid"] == unrated
    if unrated:
        assert f"{unrated} judgment(s) had no [[rating]] and were left out" in printed
