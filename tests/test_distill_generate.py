"""`zephyr generate`: prompts, teacher/principle draws, resumable streaming output (including a run killed
with SIGKILL and one interrupted with Ctrl-C), and bad input and endpoint faults reported per row."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.http import FaultProxy, fast_retries
from support.processes import sigint_as_usual
from zephyr.cli import main as zephyr_main
from zephyr.config import parse_config
from zephyr.data import prompt_id_of
from zephyr.distill.generate import GenerateConfig, conversation_for, generate, plan_slots, read_prompts
from zephyr.distill.principles import PRINCIPLE_PROMPTS
from zephyr.errors import ConfigError, DataError, ZephyrError
from zephyr.io import RowLog


def write_lines(path: Path, rows) -> str:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return str(path)


def config(**values) -> GenerateConfig:
    values.setdefault("progress", False)
    return parse_config([GenerateConfig], None, values)[0]


def local_teachers(model_dir, max_tokens: int = 8) -> list[dict]:
    backend = {"model": str(model_dir), "threads": 1}
    return [
        {"backend": backend, "name": "hot", "temperature": 1.0, "max_tokens": max_tokens},
        {"backend": backend, "name": "warm", "temperature": 0.7, "max_tokens": max_tokens},
    ]


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


# ---- prompts ----------------------------------------------------------------------------------------


def test_read_prompts_reports_every_bad_line_and_keeps_the_rest(tmp_path):
    path = write_lines(
        tmp_path / "p.jsonl",
        [
            {"prompt": "First question?", "category": "stem", "prompt_id": "mine-1"},
            "{not json",
            {"prompt": ""},
            {
                "messages": [
                    {"role": "user", "content": "Second?"},
                    {"role": "assistant", "content": "dropped reply"},
                ]
            },
            {"foo": 1},
            {"instruction": "An AlpacaEval-style instruction", "dataset": "helpful_base"},
            {"prompt": "First question?"},  # the same prompt again
            {"turns": ["MT-Bench turn one", "turn two"], "question_id": 81, "category": "writing"},
        ],
    )
    rows, bad = read_prompts(path)
    assert [r["prompt"] for r in rows] == [
        "First question?",
        "Second?",
        "An AlpacaEval-style instruction",
        "MT-Bench turn one",
    ]
    assert [(e.line, e.field) for e in bad] == [(2, None), (3, "prompt"), (5, "prompt")]
    first = rows[0]
    assert (
        first["prompt_id"]
        == prompt_id_of("First question?")
        == prompt_id_of([{"role": "user", "content": "First question?"}])
    )
    assert first["extra"] == {"category": "stem", "source_prompt_id": "mine-1"}
    assert rows[1]["messages"] == [{"role": "user", "content": "Second?"}]
    assert rows[2]["extra"]["source"] == "helpful_base" and rows[3]["extra"]["question_id"] == 81
    assert read_prompts(path, limit=2)[0] == rows[:2]


def test_demo_prompts_cover_the_mt_bench_categories():
    rows, bad = read_prompts("zephyr:demo_prompts")
    assert not bad and len(rows) >= 100
    categories = collections.Counter(r["extra"]["category"] for r in rows)
    assert set(categories) == {
        "writing",
        "roleplay",
        "reasoning",
        "math",
        "coding",
        "extraction",
        "stem",
        "humanities",
    }
    assert min(categories.values()) >= 10


# ---- the teacher pool -------------------------------------------------------------------------------


def test_teachers_and_principles_are_drawn_reproducibly():
    teachers = [{"backend": f"model-{i}", "temperature": 0.5 + i / 10} for i in range(5)]
    cfg = config(prompts="p.jsonl", output="o.jsonl", teachers=teachers, completions_per_prompt=4, seed=1)
    plans = {pid: plan_slots(cfg, pid, None) for pid in (f"prompt-{i}" for i in range(300))}
    for pid, slots in plans.items():
        assert len({s.teacher.name for s in slots}) == 4  # distinct teachers while the pool allows
        assert [(s.teacher.name, s.principle, s.seed) for s in slots] == [
            (s.teacher.name, s.principle, s.seed) for s in plan_slots(cfg, pid, None)
        ]
        assert len({s.seed for s in slots}) == 4
        for s in slots:
            assert s.system_prompt in PRINCIPLE_PROMPTS[s.principle]
    principles = collections.Counter(s.principle for slots in plans.values() for s in slots)
    assert set(principles) == set(PRINCIPLE_PROMPTS)
    assert 0.33 < principles["helpfulness"] / 1200 < 0.47  # default weight 0.4
    other_seed = config(
        prompts="p.jsonl", output="o.jsonl", teachers=teachers, completions_per_prompt=4, seed=2
    )
    assert any(
        [s.teacher.name for s in plan_slots(other_seed, pid, None)] != [s.teacher.name for s in slots]
        for pid, slots in plans.items()
    )


def test_small_pools_repeat_teachers_evenly_and_weights_can_depend_on_category():
    cfg = config(
        prompts="p.jsonl",
        output="o.jsonl",
        completions_per_prompt=4,
        teachers=[
            {"backend": "m", "temperature": 0.3},
            {"backend": "m", "temperature": 0.9, "principles": {"none": 1}},
        ],
        principles={"honesty": 1},
        principles_by_category={"math": {"verbalized_calibration": 1}},
    )
    for pid in ("a", "b", "c"):
        slots = plan_slots(cfg, pid, "math")
        assert collections.Counter(s.teacher.name for s in slots) == {"m@t0.3": 2, "m@t0.9": 2}
        for s in slots:
            expected = "none" if s.teacher.name == "m@t0.9" else "verbalized_calibration"
            assert s.principle == expected
        assert {s.principle for s in plan_slots(cfg, pid, "writing") if s.teacher.name == "m@t0.3"} == {
            "honesty"
        }
    none_slot = next(s for s in slots if s.principle == "none")
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    assert conversation_for(none_slot, messages) == messages
    honest = plan_slots(cfg, "a", "writing")[0]
    merged = conversation_for(honest, messages) if honest.system_prompt else None
    if merged:
        assert merged[0]["content"].startswith(honest.system_prompt) and merged[0]["content"].endswith(
            "Be terse."
        )


def test_generate_config_errors_are_clear():
    with pytest.raises(ConfigError, match="`prompts` and `output` are required"):
        config(teachers=["m"])
    with pytest.raises(ConfigError, match="`teachers` is empty"):
        config(prompts="p", output="o")
    with pytest.raises(ConfigError, match=r"`teachers\[0\]`.*did you mean `temperature`"):
        config(prompts="p", output="o", teachers=[{"backend": "m", "temprature": 1}])
    with pytest.raises(ConfigError, match="unique"):
        config(prompts="p", output="o", teachers=["m", "m"])
    with pytest.raises(ConfigError, match="principle `kindness`, which has no system prompts"):
        config(prompts="p", output="o", teachers=["m"], principles={"kindness": 1})
    ok = config(
        prompts="p",
        output="o",
        teachers=["m"],
        principles={"kindness": 1},
        principle_prompts={"kindness": ["Be kind."]},
    )
    assert ok.catalogue["kindness"] == ["Be kind."]


# ---- running ----------------------------------------------------------------------------------------


def test_generate_writes_rows_and_resumes_a_torn_run_to_the_same_result(tmp_path, tiny_model_dir):
    prompts = write_lines(
        tmp_path / "p.jsonl", [{"prompt": f"Question {i}?", "category": "stem"} for i in range(6)]
    )
    out = tmp_path / "completions.jsonl"
    cfg = config(
        prompts=prompts, output=str(out), teachers=local_teachers(tiny_model_dir), completions_per_prompt=3
    )
    first = generate(cfg)
    assert (first.written, first.resumed, first.failed, first.complete) == (6, 0, 0, True)
    rows = rows_of(out)
    assert len(rows) == 6 and first.tokens == sum(
        c["completion_tokens"] for r in rows for c in r["completions"]
    )
    row = rows[0]
    assert (
        row["schema_version"] == 1
        and row["prompt_id"] == prompt_id_of(row["prompt"])
        and row["category"] == "stem"
    )
    assert len(row["completions"]) == 3
    for c in row["completions"]:
        assert set(c) == {
            "model",
            "teacher",
            "principle",
            "custom_system_prompt",
            "temperature",
            "response",
            "finish_reason",
            "prompt_tokens",
            "completion_tokens",
        }
        assert (
            c["model"] == tiny_model_dir.name and c["teacher"] in ("hot", "warm") and c["prompt_tokens"] > 0
        )
    # An interrupted run: two whole rows and half of a third on disk. The rerun cuts the torn line, redoes
    # the missing rows, and (every draw and seed coming from the prompt id) ends with the same dataset.
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:2]) + lines[2][:40])
    second = generate(cfg)
    assert (second.resumed, second.written) == (2, 4)
    again = rows_of(out)
    assert len(again) == 6 and {r["prompt_id"]: r for r in again} == {r["prompt_id"]: r for r in rows}
    assert generate(cfg).written == 0  # nothing left to do


def test_generate_refuses_to_resume_with_other_settings_or_a_second_writer(tmp_path, tiny_model_dir):
    prompts = write_lines(tmp_path / "p.jsonl", [{"prompt": f"Q{i}"} for i in range(2)])
    out = tmp_path / "c.jsonl"
    generate(
        config(
            prompts=prompts,
            output=str(out),
            teachers=local_teachers(tiny_model_dir, 3),
            completions_per_prompt=1,
        )
    )
    changed = local_teachers(tiny_model_dir, 3)
    changed[0]["temperature"] = 0.1
    with pytest.raises(ConfigError, match="`teachers` changed"):
        generate(config(prompts=prompts, output=str(out), teachers=changed, completions_per_prompt=1))
    more = config(
        prompts=prompts,
        output=str(out),
        teachers=local_teachers(tiny_model_dir, 3),
        completions_per_prompt=1,
        max_prompts=5,
        concurrency=3,
    )  # run-size settings may change
    assert generate(more).resumed == 2
    with RowLog(out), pytest.raises(ZephyrError, match="being written by another run"):
        RowLog(out)


def test_bad_lines_and_endpoint_faults_are_reported_per_row_and_lose_nothing(tmp_path, served):
    prompts = write_lines(
        tmp_path / "p.jsonl",
        [
            {"prompt": "good one"},
            "{not json",
            {"prompt": ""},
            {"prompt": "please fail 500"},
            {"messages": [{"role": "user", "content": "please hang"}]},
            {"prompt": "please garbage"},
            {"prompt": "flaky one"},
            {"instruction": "alpaca style"},
            {"foo": 1},
            {"prompt": "good two"},
        ],
    )
    faults = {"please fail 500": "500", "please hang": "hang", "please garbage": "garbage"}

    def plan(body, attempt):
        text = body["messages"][-1]["content"]
        if text == "flaky one" and attempt <= 2:
            return "503"
        return faults.get(text, "pass")

    out = tmp_path / "c.jsonl"
    recipe = tmp_path / "generate.yaml"
    with FaultProxy(served, plan, hang_seconds=1.5) as proxy:
        teachers = [
            {
                "backend": fast_retries(proxy.url, timeout=0.5),
                "name": f"t{t}",
                "temperature": t,
                "max_tokens": 4,
            }
            for t in (0.5, 1.0)
        ]
        recipe.write_text(
            json.dumps(
                {
                    "prompts": prompts,
                    "output": str(out),
                    "teachers": teachers,
                    "completions_per_prompt": 2,
                    "progress": False,
                }
            )
        )
        assert zephyr_main(["generate", str(recipe)]) == 3  # finished, but with rows left undone
        for text in faults:
            assert proxy.attempts[text] == 3  # the first try and two retries, then reported
    written = {r["prompt"] for r in rows_of(out)}
    assert written == {"good one", "flaky one", "alpaca style", "good two"}
    events = rows_of(tmp_path / "c.failures.jsonl")
    assert sorted(e["line"] for e in events if e["kind"] == "bad_input") == [2, 3, 9]
    failed = {e["prompt_id"]: e for e in events if e["kind"] == "row_failed"}
    assert set(failed) == {prompt_id_of(t) for t in faults}
    assert "HTTP 500" in failed[prompt_id_of("please fail 500")]["error"]
    assert "timed out" in failed[prompt_id_of("please hang")]["error"]
    assert "unreadable reply" in failed[prompt_id_of("please garbage")]["error"]
    assert all(e["attempts"] == 3 for e in failed.values())

    before = out.read_bytes()
    with FaultProxy(served) as healed:
        teachers = [{**t, "backend": fast_retries(healed.url, timeout=0.5)} for t in teachers]
        result = generate(
            config(prompts=prompts, output=str(out), teachers=teachers, completions_per_prompt=2)
        )
    # The endpoint moved to another port: connection settings may change on resume, the model may not.
    assert result.resumed == 4 and result.written == 3 and result.failed == 0 and result.bad_input == 3
    assert out.read_bytes().startswith(before)  # everything written before is still there, byte for byte
    assert collections.Counter(r["prompt"] for r in rows_of(out)) == {p: 1 for p in written | set(faults)}


# ---- interrupted for real ---------------------------------------------------------------------------


def _start(recipe: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "zephyr.cli", "generate", str(recipe), "--progress=true"],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
        env=env,
        preexec_fn=sigint_as_usual,
    )


def _wait_for_rows(out: Path, count: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"generate exited early with {proc.returncode}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no {count} rows within {timeout} s")


def test_generate_survives_ctrl_c_and_kill_9(tmp_path, tiny_model_dir):
    n = 24
    prompts = write_lines(
        tmp_path / "p.jsonl", [{"prompt": f"Tell me about topic number {i}."} for i in range(n)]
    )
    out = tmp_path / "c.jsonl"
    recipe = tmp_path / "generate.yaml"
    recipe.write_text(
        json.dumps(
            {
                "prompts": prompts,
                "output": str(out),
                "completions_per_prompt": 2,
                "teachers": local_teachers(tiny_model_dir, max_tokens=32),
                "concurrency": 2,
            }
        )
    )
    # Ctrl-C: the run stops at once with status 130, keeping the rows it finished.
    proc = _start(recipe, tmp_path / "run1.log")
    _wait_for_rows(out, 2, proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    assert b"rerun to resume" in (tmp_path / "run1.log").read_bytes()
    after_interrupt = len(rows_of(out))
    assert 2 <= after_interrupt < n
    # kill -9: no chance to clean up; possibly a torn last line.
    proc = _start(recipe, tmp_path / "run2.log")
    _wait_for_rows(out, after_interrupt + 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    killed_at = out.read_bytes().count(b"\n")
    assert killed_at < n, "the run finished before it could be killed; make it longer"
    # The rerun completes: every prompt exactly once.
    proc = _start(recipe, tmp_path / "run3.log")
    assert proc.wait(300) == 0
    counts = collections.Counter(r["prompt"] for r in rows_of(out))
    assert counts == {f"Tell me about topic number {i}.": 1 for i in range(n)}
    log = (tmp_path / "run3.log").read_text(errors="replace")
    assert "rows/s" in log and "tok/s" in log and f"{n}/{n}" in log  # the progress bar on stderr


def test_unreadable_prompts_file_is_a_clear_error(tmp_path):
    cfg = config(prompts=str(tmp_path / "missing.jsonl"), output=str(tmp_path / "o.jsonl"), teachers=["m"])
    with pytest.raises(DataError, match="no such file"):
        generate(cfg)
    bad = write_lines(tmp_path / "bad.jsonl", ["{", {"foo": 1}])
    with pytest.raises(DataError, match="holds no readable prompt"):
        generate(config(prompts=bad, output=str(tmp_path / "o.jsonl"), teachers=["m"]))
    with pytest.raises(DataError, match="line 1"):
        generate(config(prompts=bad, output=str(tmp_path / "o.jsonl"), teachers=["m"], on_error="raise"))
