"""`zephyr dialogue`: seeds, the simulator's prompts, turn structure and alternation, early stops, every
turn filter with its count, batching in rounds, resuming (a torn write, SIGKILL), shards that merge to the
unsharded result (for generate and feedback too), the hand-off to clean and sft, and the pipeline wiring."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from support.dialogues import scripted_backends
from zephyr.cli import main as zephyr_main
from zephyr.config import parse_config
from zephyr.data import load_mixer, load_rows, prompt_id_of
from zephyr.distill.dialogue import (
    DEFAULT_TURNS,
    DialogueConfig,
    Seed,
    dialogue,
    plan_dialogue,
    read_seeds,
    seed_from_row,
)
from zephyr.distill.shards import merge_shards, resolve_shard, shard_of
from zephyr.distill.simulator import END_SIGNAL, ends_dialogue, follow_up_prompt, transcript
from zephyr.distill.turns import check_turn
from zephyr.errors import ConfigError, DataError, ZephyrError
from zephyr.generation import backends as backends_module
from zephyr.io import RowLog, output_lock

TESTS = Path(__file__).resolve().parent


def write_lines(path: Path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def rows_of(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def by_id(path) -> dict[str, dict]:
    rows = rows_of(path)
    assert len({r["prompt_id"] for r in rows}) == len(rows), "a dialogue was written twice"
    return {r["prompt_id"]: r for r in rows}


def settings(seeds, out, **more) -> dict:
    return {
        "seeds": str(seeds),
        "output": str(out),
        "simulator": "sim",
        "teachers": ["t1", "t2"],
        "progress": False,
        **more,
    }


def config(seeds, out, **more) -> DialogueConfig:
    return parse_config([DialogueConfig], None, settings(seeds, out, **more))[0]


@pytest.fixture
def scripted(monkeypatch):
    """Scripted simulator (`sim`) and teachers for every backend the stages open."""
    make = scripted_backends()
    monkeypatch.setattr(backends_module, "make_backend", make)
    return make


def plain_seeds(tmp_path, n: int = 12) -> str:
    rows = []
    for i in range(n):
        sector = ("world", "writing", "materials")[i % 3]
        if sector == "materials":
            rows.append(
                {
                    "sector": sector,
                    "material": f"Passage number {i} about rivers.",
                    "instruction": "Explain it.",
                }
            )
        elif i % 2:
            rows.append({"sector": sector, "topic": f"topic {i}"})
        else:
            rows.append({"sector": sector, "question": f"Question number {i}?"})
    return write_lines(tmp_path / "seeds.jsonl", rows)


# ---- seeds and prompts ------------------------------------------------------------------------------


def test_seeds_come_in_every_format_and_bad_rows_are_reported(tmp_path):
    path = write_lines(
        tmp_path / "s.jsonl",
        [
            {"topic": "tides"},
            {"question": "Why is the sea salty?", "sector": "world", "id": 7},
            {"prompt": "Write a haiku about frost.", "sector": "writing"},
            {"instruction": "Summarise this.", "material": "A short passage."},
            {"text": "A C4-style passage with no instruction."},
            {
                "messages": [
                    {"role": "user", "content": "Hello there"},
                    {"role": "assistant", "content": "Hi"},
                ]
            },
            {"turns": ["MT-Bench style first turn", "second"]},
            "{not json",
            {"sector": "cooking", "topic": "soup"},
            {"topic": ""},
            {"foo": 1},
            {"topic": "tides"},  # a repeat: one dialogue per distinct seed
        ],
    )
    seeds, bad = read_seeds(path)
    assert [(s.sector, s.opening is None) for s in seeds] == [
        ("world", True),
        ("world", False),
        ("writing", False),
        ("materials", False),
        ("materials", True),
        ("world", False),
        ("world", False),
    ]
    assert seeds[1].key == prompt_id_of("Why is the sea salty?") and seeds[1].source_id == "7"
    assert seeds[3].opening == "Summarise this.\n\nA short passage."
    assert seeds[5].opening == "Hello there" and seeds[6].opening == "MT-Bench style first turn"
    assert [(e.line, e.field) for e in bad] == [(8, None), (9, "sector"), (10, "topic"), (11, None)]
    builtin, bad = read_seeds("zephyr:dialogue_seeds")
    assert not bad and len(builtin) >= 45
    kinds = collections.Counter((s.sector, s.opening is None) for s in builtin)
    assert all(kinds[(sector, fixed)] >= 3 for sector in DEFAULT_TURNS for fixed in (True, False))
    # Interleaved, so the first few seeds (the demo's) already cover every sector and kind.
    assert len({(s.sector, s.opening is None) for s in builtin[:6]}) == 6
    with pytest.raises(DataError, match="nothing to start a dialogue from"):
        seed_from_row({"sector": "world"}, {"source": "x", "line": 1}, "world")


def test_follow_up_prompt_is_a_transcript_with_the_rules():
    messages = [
        {"role": "user", "content": "What is a comet?"},
        {"role": "assistant", "content": "A comet is a ball of ice and dust."},
    ]
    (prompt,) = follow_up_prompt("world", messages, "briefly, in one or two sentences", 10_000)
    text = prompt["content"]
    assert prompt["role"] == "user"  # one user message: no swapped roles, no system prompt needed
    assert "User: What is a comet?\n\nAssistant: A comet is a ball of ice and dust." in text
    assert "briefly, in one or two sentences" in text and END_SIGNAL in text
    assert "Never answer the question yourself" in text
    long = [
        {"role": r, "content": f"{r} turn {i} " + "x" * 400} for i in range(10) for r in ("user", "assistant")
    ]
    cut = transcript(long, 2000)
    assert len(cut) <= 2200 and "earlier message(s) left out" in cut
    assert cut.startswith("User: user turn 0") and "assistant turn 9" in cut


@pytest.mark.parametrize(
    "reply,ends",
    [
        ("[END]", True),
        ("  [end] ", True),
        ("<END>", True),
        ("Thanks! [End of conversation]", True),
        ("END.", True),
    ],
)
def test_end_signal(reply, ends):
    assert ends_dialogue(reply) is ends


def test_end_signal_is_not_found_in_ordinary_text():
    assert not ends_dialogue("How does the story end?") and not ends_dialogue("The weekend [was] long")


BEFORE = [
    {"role": "user", "content": "What is rain?"},
    {"role": "assistant", "content": "Water falling from clouds."},
]


@pytest.mark.parametrize(
    "role,reply,text,fixes,stop",
    [
        ("user", "And snow?", "And snow?", [], None),
        ("user", "User: And snow?", "And snow?", ["role_prefix"], None),
        ("user", "### Human: **User:** And snow?", "And snow?", ["role_prefix", "role_prefix"], None),
        ("user", "<|user|>\nAnd snow?", "And snow?", ["role_prefix"], None),
        ("user", '"And snow?"', "And snow?", ["enclosing_quotes"], None),
        ("user", "And snow?\nAssistant: Snow is frozen rain.", "And snow?", ["role_part"], None),
        ("user", "[END]", None, [], "simulator_end"),
        ("user", "Assistant: Snow is frozen.", None, [], "simulator_as_assistant"),
        ("user", "Sure! Here is more about rain.", None, [], "simulator_as_assistant"),
        ("user", "As an AI language model, I can tell you more.", None, [], "simulator_as_assistant"),
        ("user", "   ", None, [], "empty_turn"),
        ("user", "User: ...", None, ["role_prefix"], "empty_turn"),
        ("user", "what is RAIN", None, [], "repeated_turn"),
        ("user", "Water falling from clouds!", None, [], "repeated_turn"),
        ("assistant", "Assistant: Snow is frozen.", "Snow is frozen.", ["role_prefix"], None),
        ("assistant", "Snow is frozen.\n\n### Human: and hail?", "Snow is frozen.", ["role_part"], None),
        ("assistant", "User: and hail?", None, [], "teacher_as_user"),
        ("assistant", "", None, [], "empty_turn"),
        ("assistant", "Water falling from clouds.", None, [], "repeated_turn"),
        ("assistant", "You asked about snow: it is frozen.", "You asked about snow: it is frozen.", [], None),
    ],
)
def test_turn_checks(role, reply, text, fixes, stop):
    messages = BEFORE if role == "user" else [*BEFORE, {"role": "user", "content": "And snow?"}]
    check = check_turn(role, reply, messages)
    assert (check.text, [f["filter"] for f in check.fixes], check.stop) == (text, fixes, stop)


# ---- structure --------------------------------------------------------------------------------------


def test_dialogues_alternate_follow_their_plan_and_record_who_wrote_each_turn(tmp_path, scripted):
    seeds = plain_seeds(tmp_path)
    out = tmp_path / "d.jsonl"
    cfg = config(seeds, out, concurrency=5)
    result = dialogue(cfg)
    assert (result.stage.written, result.stage.failed, result.stage.rejected, result.complete) == (
        12,
        0,
        0,
        True,
    )
    rows = rows_of(out)
    for row in rows:
        messages = row["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        assert len(messages) == 2 * len(row["exchanges"]) == 2 * row["planned_turns"]
        low, high = DEFAULT_TURNS[row["sector"]]
        assert low <= row["planned_turns"] <= high and row["ended"] == "planned"
        assert row["prompt"] == messages[0]["content"] and row["schema_version"] == 1
        assert set(row) >= {"prompt_id", "seed", "seed_id", "sector", "exchanges", "filtered"}
        first, *later = row["exchanges"]
        from_seed = "question" in row["seed"] or "instruction" in row["seed"]
        assert first["simulator"] == (None if from_seed else "sim@t1") and first["style"] is None
        assert all(e["simulator"] == "sim@t1" and e["style"] for e in later)
        assert len({e["teacher"] for e in row["exchanges"]}) == 1 and first["teacher"] in ("t1@t1", "t2@t1")
        assert first["teacher_model"] == first["teacher"].split("@")[0]
        # The teacher answered exactly the user turn before its reply.
        for user, answer in zip(messages[::2], messages[1::2], strict=True):
            assert user["content"][:40] in answer["content"]
    topic = next(r for r in rows if "topic" in r["seed"])
    assert topic["messages"][0]["content"] == f"Tell me something specific about {topic['seed']['topic']}?"
    assert topic["filtered"][0] == {
        "exchange": 0,
        "role": "user",
        "filter": "role_prefix",
        "removed": "User:",
    }
    material = next(r for r in rows if r["sector"] == "materials")
    assert material["messages"][0]["content"] == f"Explain it.\n\n{material['seed']['material']}"
    counts = collections.Counter(r["planned_turns"] for r in rows if r["sector"] == "world")
    assert len(counts) > 1  # drawn per dialogue, not fixed
    report = json.loads((tmp_path / "d.report.json").read_text())
    assert report["dialogues"] == 12 and report["exchanges"] == sum(len(r["exchanges"]) for r in rows)
    assert report["ended"] == {"planned": 12}
    # Every draw comes from the seed and the dialogue id alone.
    assert [plan_dialogue(cfg, r["prompt_id"], *_seed(cfg, r)).planned for r in rows] == [
        r["planned_turns"] for r in rows
    ]
    per_turn = config(seeds, tmp_path / "t.jsonl", teacher_draw="turn", turns={"world": 7})
    drawn = plan_dialogue(per_turn, "some-id", Seed("world", "A question?"), 0)
    assert drawn.planned == 7 and {t.name for t in drawn.teachers} == {"t1@t1", "t2@t1"}


def _seed(cfg, row):
    seeds, _ = read_seeds(cfg.seeds)
    return next(s for s in seeds if s.key == row["seed_id"]), row["seed_index"]


def test_several_dialogues_per_seed_get_their_own_ids_and_draws(tmp_path, scripted):
    seeds = write_lines(tmp_path / "s.jsonl", [{"topic": "owls"}])
    out = tmp_path / "d.jsonl"
    dialogue(config(seeds, out, dialogues_per_seed=3, turns={"world": [1, 7]}))
    rows = rows_of(out)
    base = read_seeds(seeds)[0][0].key
    assert sorted(r["prompt_id"] for r in rows) == sorted([base, f"{base}-1", f"{base}-2"])
    assert sorted(r["seed_index"] for r in rows) == [0, 1, 2] and {r["seed_id"] for r in rows} == {base}


def test_early_stop_and_every_filter_with_its_count(tmp_path, scripted):
    cues = [
        "[end-after-1]",
        "[prefix]",
        "[quote]",
        "[both]",
        "[as-assistant]",
        "[opener]",
        "[repeat]",
        "[answer-prefix]",
        "[answer-goes-on]",
        "[answer-as-user]",
        "[empty-answer]",
        "[first-empty]",
    ]
    seeds = write_lines(tmp_path / "s.jsonl", [{"question": f"Tell me about clouds {cue}"} for cue in cues])
    out = tmp_path / "d.jsonl"
    result = dialogue(config(seeds, out, turns={"world": 3}))
    rows = {r["seed"]["question"].split()[-1]: r for r in rows_of(out)}
    rejected = rows_of(tmp_path / "d.rejected.jsonl")
    assert result.stage.written == 10 and result.stage.rejected == 2 and len(rejected) == 2
    assert all(r["messages"] == [] for r in rejected)
    assert sorted(r["ended"] for r in rejected) == ["empty_turn", "teacher_as_user"]
    expect = {  # cue -> (how it ended, exchanges kept)
        "[end-after-1]": ("simulator_end", 1),
        "[prefix]": ("planned", 3),
        "[quote]": ("planned", 3),
        "[both]": ("planned", 3),
        "[as-assistant]": ("simulator_as_assistant", 1),
        "[opener]": ("simulator_as_assistant", 1),
        "[repeat]": ("repeated_turn", 1),
        "[answer-prefix]": ("planned", 3),
        "[answer-goes-on]": ("planned", 3),
        "[answer-as-user]": ("teacher_as_user", 0),
        "[empty-answer]": ("empty_turn", 1),
    }
    assert {cue: (r["ended"], len(r["exchanges"])) for cue, r in rows.items()} == {
        cue: v for cue, v in expect.items() if v[1]
    }
    assert "[answer-as-user]" not in rows and "[first-empty]" not in rows  # nothing left: rejected
    for row in rows.values():  # a cut dialogue still alternates and ends with the assistant
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * len(row["exchanges"])
    assert rows["[prefix]"]["messages"][2]["content"].startswith("Follow-up 1")
    assert rows["[quote]"]["messages"][2]["content"] == "Follow-up 1 about Tell me about clouds [quote]?"
    assert "Assistant:" not in rows["[both]"]["messages"][2]["content"]
    assert rows["[answer-prefix]"]["messages"][1]["content"].startswith("Answer 0 by")
    assert "User:" not in rows["[answer-goes-on]"]["messages"][1]["content"]
    report = json.loads((tmp_path / "d.report.json").read_text())
    fixed = {name: entry.get("fixed", 0) for name, entry in report["filters"].items()}
    stopped = {name: entry.get("stopped", 0) for name, entry in report["filters"].items()}
    assert fixed["role_prefix"] == 2 + 3 and fixed["enclosing_quotes"] == 2 and fixed["role_part"] == 2 + 3
    assert stopped["simulator_as_assistant"] == 2 and stopped["repeated_turn"] == 1
    assert stopped["teacher_as_user"] == 1 and stopped["empty_turn"] == 2
    assert report["ended"]["simulator_end"] == 1 and report["rejected"] == 2
    assert report["filters"]["role_prefix"]["examples"][0]["removed"] in ("### Human:", "**Assistant:**")
    assert "simulator_as_assistant: stopped 2" in result.summary()


# ---- rounds -----------------------------------------------------------------------------------------


def test_each_round_sends_every_open_dialogue_to_the_simulator_then_to_the_teachers(tmp_path, monkeypatch):
    """A barrier of size 4 in each phase: it only opens when all 4 open dialogues' requests are in flight
    together (one at a time, it would time out). The call log shows the phases never interleave."""
    timeout = 20
    barriers = {role: threading.Barrier(4, timeout=timeout) for role in ("sim", "teacher")}
    make = scripted_backends(barriers=barriers)
    monkeypatch.setattr(backends_module, "make_backend", make)
    seeds = write_lines(tmp_path / "s.jsonl", [{"topic": f"topic {i}"} for i in range(8)])
    out = tmp_path / "d.jsonl"
    result = dialogue(config(seeds, out, turns={"world": 2}, concurrency=4))
    assert result.stage.written == 8
    kinds = ["sim" if name == "sim" else "teacher" for name in make.log]
    # 2 waves of 4 dialogues x 2 exchanges: (4 user turns, then 4 answers) 4 times.
    assert kinds == (["sim"] * 4 + ["teacher"] * 4) * 4
    assert {name for name in make.log if name != "sim"} <= {"t1", "t2"}


def test_a_backend_that_gives_up_fails_only_its_dialogue_and_the_rerun_redoes_it(tmp_path, scripted):
    from zephyr.generation.params import BackendError

    seeds = plain_seeds(tmp_path, 6)
    out = tmp_path / "d.jsonl"
    teacher = scripted(backends_module.parse_spec("t1"))
    healthy = teacher.reply

    def flaky(conversation, params):
        if "Question number 0" in conversation[0]["content"]:
            raise BackendError("endpoint gave up", index=0, attempts=5)
        return healthy(conversation, params)

    teacher.reply = flaky
    first = dialogue(config(seeds, out, teachers=["t1"]))
    assert (first.stage.written, first.stage.failed, first.complete) == (5, 1, False)
    (event,) = rows_of(tmp_path / "d.failures.jsonl")
    assert event["kind"] == "row_failed" and event["attempts"] == 5 and "endpoint gave up" in event["error"]
    teacher.reply = healthy
    second = dialogue(config(seeds, out, teachers=["t1"]))
    assert (second.stage.resumed, second.stage.written, second.complete) == (5, 1, True)
    assert not (tmp_path / "d.failures.jsonl").exists() and len(by_id(out)) == 6


# ---- the hand-off to clean and sft ------------------------------------------------------------------


def test_output_loads_as_conversations_and_goes_through_clean_to_sft_data(tmp_path, scripted):
    out = tmp_path / "d.jsonl"
    dialogue(config(plain_seeds(tmp_path), out))
    loaded = load_rows(out, "conversation")
    assert loaded.skipped == 0 and len(loaded.dataset) == 12
    assert loaded.dataset[0]["messages"] == rows_of(out)[0]["messages"]
    recipe = tmp_path / "clean.yaml"
    recipe.write_text(yaml.safe_dump({"input": str(out), "output_dir": str(tmp_path / "clean")}))
    assert zephyr_main(["clean", str(recipe)]) == 0
    report = json.loads((tmp_path / "clean" / "clean_report.json").read_text())
    assert report["splits"]["train_sft"]["rows_in"] == 12 and report["splits"]["train_sft"]["unreadable"] == 0
    kept = report["splits"]["train_sft"]["rows_out"]
    assert kept >= 1
    data = load_mixer({str(tmp_path / "clean"): 1.0}, ["train_sft"], "conversation")
    assert len(data["train"]) == kept
    direct = load_mixer({str(out): 1.0}, ["train_sft", "test_sft"], "conversation")  # sft on the file itself
    assert len(direct["train"]) == 12 and "test" not in direct


def test_pipeline_wires_dialogue_into_clean_and_sft(tmp_path):
    from zephyr.pipeline.runner import load_plan, prepare, run_pipeline

    recipe = tmp_path / "p.yaml"
    training = {
        "model_name_or_path": "smollm2-135m-instruct",
        "max_steps": 1,
        "use_cpu": True,
        "report_to": "none",
    }
    body = {
        "run_dir": str(tmp_path / "run"),
        "dialogue": {"simulator": "smollm2-135m-instruct", "teachers": ["smollm2-135m-instruct"]},
        "clean": {},
        "sft": training,
    }
    recipe.write_text(yaml.safe_dump(body))
    wired = {s.spec.name: s for s in prepare(load_plan(recipe))}
    dialogues = str(tmp_path / "run" / "dialogue" / "dialogues.jsonl")
    assert wired["dialogue"].settings["output"] == dialogues and wired["clean"].settings["input"] == dialogues
    clean_dir = str(tmp_path / "run" / "clean" / "data")
    assert wired["sft"].settings["dataset_mixer"] == {clean_dir: 1.0}
    assert wired["sft"].settings["dataset_splits"] == ["train_sft"]  # all clean writes from one file
    body.pop("clean")
    recipe.write_text(yaml.safe_dump(body))
    wired = {s.spec.name: s for s in prepare(load_plan(recipe))}
    assert wired["sft"].settings["dataset_mixer"] == {dialogues: 1.0}
    summary = run_pipeline(recipe, dry_run=True)
    assert list(summary) == ["dialogue", "sft"] and summary["dialogue"]["state"] == "would run"


# ---- resuming ---------------------------------------------------------------------------------------


def test_a_torn_write_resumes_to_the_same_dialogues_and_settings_must_agree(tmp_path, scripted):
    seeds = plain_seeds(tmp_path)
    out = tmp_path / "d.jsonl"
    dialogue(config(seeds, out))
    full = by_id(out)
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:5]) + lines[5][:30])  # killed while writing the sixth
    again = dialogue(config(seeds, out))
    assert (again.stage.resumed, again.stage.written) == (5, 7)
    assert by_id(out) == full
    assert dialogue(config(seeds, out)).stage.written == 0
    with pytest.raises(ConfigError, match="`turns` changed"):
        dialogue(config(seeds, out, turns={"world": 1}))
    more = dialogue(config(seeds, out, concurrency=2, max_dialogues=20))  # run-size settings may change
    assert more.stage.resumed == 12
    with RowLog(out), pytest.raises(Exception, match="being written by another run"):
        dialogue(config(seeds, out))


def _start(args: list[str], log: Path, delay: str) -> subprocess.Popen:
    env = {**os.environ, "ZEPHYR_TEST_DELAY": delay, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(TESTS / "support" / "dialogues.py"), *args],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "wb"),
        env=env,
    )


def _wait_for_rows(out: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= count:
            return
        if proc.poll() is not None:
            pytest.fail(f"dialogue exited early with {proc.returncode}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"no {count} dialogues within {timeout} s")


def test_sigkill_at_any_point_loses_no_dialogue_and_duplicates_none(tmp_path, scripted):
    seeds = plain_seeds(tmp_path, 18)
    reference = tmp_path / "ref.jsonl"
    dialogue(config(seeds, reference, concurrency=3))
    out = tmp_path / "d.jsonl"
    recipe = tmp_path / "dialogue.yaml"
    recipe.write_text(yaml.safe_dump(settings(seeds, out, concurrency=3, progress=True)))
    args = ["dialogue", str(recipe)]
    for kill_after in (2, 9):  # early, then well into the run
        proc = _start(args, tmp_path / f"killed-{kill_after}.log", delay="0.1")
        _wait_for_rows(out, kill_after, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        done = rows_of(out)
        assert len(done) < 18, "the run finished before it could be killed; make it longer"
        assert len({r["prompt_id"] for r in done}) == len(done)
    proc = _start(args, tmp_path / "rerun.log", delay="0")
    assert proc.wait(120) == 0, (tmp_path / "rerun.log").read_text()[-2000:]
    assert by_id(out) == by_id(reference)  # every dialogue once, and the unfinished ones redone the same
    log = (tmp_path / "rerun.log").read_text(errors="replace")
    assert "resuming" in log and "18/18" in log and "turns/s" in log


# ---- shards -----------------------------------------------------------------------------------------


def test_shards_merge_to_exactly_the_unsharded_result(tmp_path, scripted, capsys):
    seeds = plain_seeds(tmp_path, 15)
    whole = tmp_path / "whole" / "d.jsonl"
    dialogue(config(seeds, whole))
    out = tmp_path / "sharded" / "d.jsonl"
    dialogue(config(seeds, out, shard="0/3"))
    with pytest.raises(ConfigError, match=r"shard\(s\) 1/3, 2/3 of 3 are missing"):
        merge_shards(out)
    for i in (1, 2):
        result = dialogue(config(seeds, out, shard=f"{i}/3"))
        assert result.stage.output.name == f"d.shard-{i}-of-3.jsonl"
    parts = [by_id(tmp_path / "sharded" / f"d.shard-{i}-of-3.jsonl") for i in range(3)]
    assert sum(map(len, parts)) == 15 and all(parts)
    for i, part in enumerate(parts):
        assert all(shard_of(key, 3) == i for key in part)
    assert zephyr_main(["merge-shards", str(out)]) == 0
    assert "3 dialogue shards -> 15 rows" in capsys.readouterr().out
    assert by_id(out) == by_id(whole)
    assert json.loads((tmp_path / "sharded" / "d.report.json").read_text())["dialogues"] == 15
    # The merged file is a finished unsharded output: rerunning the stage on it does nothing.
    assert dialogue(config(seeds, out)).stage.written == 0
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        merge_shards(out)
    assert merge_shards(out, overwrite=True).rows == 15


def test_merge_refuses_incomplete_mismatched_or_overlapping_shards(tmp_path, scripted):
    seeds = plain_seeds(tmp_path, 8)
    out = tmp_path / "d.jsonl"
    for i in range(2):
        dialogue(config(seeds, out, shard=f"{i}/2"))
    first = tmp_path / "d.shard-0-of-2.jsonl"
    manifest = tmp_path / "d.shard-0-of-2.shard.json"
    saved = manifest.read_text()
    manifest.write_text(json.dumps({**json.loads(saved), "complete": False}))
    with pytest.raises(ConfigError, match=r"Shard 0/2 .* is not complete .*--shard 0/2"):
        merge_shards(out)
    manifest.write_text(saved)
    lines = first.read_text().splitlines(keepends=True)
    first.write_text("".join(lines[:-1]))
    with pytest.raises(ConfigError, match="holds .* rows but its manifest says"):
        merge_shards(out)
    other = tmp_path / "d.shard-1-of-2.jsonl"
    first.write_text("".join(lines) + other.read_text().splitlines(keepends=True)[0])
    with pytest.raises(DataError, match="belongs to shard 1/2, not 0/2"):
        merge_shards(out)
    first.write_text("".join(lines + lines[:1]))
    with pytest.raises(DataError, match="repeats row"):
        merge_shards(out)
    first.write_text("".join(lines))
    settings_file = tmp_path / "d.shard-1-of-2.settings.json"
    changed = {**json.loads(settings_file.read_text()), "seed": 7}
    settings_file.write_text(json.dumps(changed))
    with pytest.raises(ConfigError, match="different settings .*`seed`"):
        merge_shards(out)
    changed["seed"] = 42
    settings_file.write_text(json.dumps(changed))
    (tmp_path / "d.shard-0-of-3.jsonl").write_text("")
    with pytest.raises(ConfigError, match="different splits are mixed"):
        merge_shards(out)
    (tmp_path / "d.shard-0-of-3.jsonl").unlink()
    with output_lock(other, "zephyr dialogue"), pytest.raises(ZephyrError, match="in use by zephyr dialogue"):
        merge_shards(out)
    assert merge_shards(out).rows == 8


def test_shard_comes_from_the_setting_or_the_launcher():
    assert resolve_shard("2/4", {}).index == 2 and resolve_shard(None, {}) is None
    assert str(resolve_shard(None, {"RANK": "1", "WORLD_SIZE": "3"})) == "1/3"
    assert resolve_shard(None, {"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert resolve_shard("0/1", {"RANK": "1", "WORLD_SIZE": "3"}) is None  # explicitly unsharded
    with pytest.raises(ConfigError, match="RANK must be a whole number below WORLD_SIZE"):
        resolve_shard(None, {"RANK": "5", "WORLD_SIZE": "3"})
    for bad in ("4/4", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(ConfigError, match="`shard` must be I/N"):
            resolve_shard(bad, {})
    assert collections.Counter(shard_of(f"key-{i}", 4) for i in range(2000)).most_common()[-1][1] > 400


def test_generate_and_feedback_shards_merge_to_the_unsharded_result(tmp_path, monkeypatch):
    from support.fakes import ScriptedBackend
    from zephyr.distill.feedback import FeedbackConfig, feedback
    from zephyr.distill.generate import GenerateConfig, generate
    from zephyr.distill.shards import find_shards

    def judge(conversation, params):
        return "Text 1: 4\nText 2: 2"

    made = {}

    def make(spec):
        if spec.model not in made:
            reply = (
                judge
                if spec.model == "judge"
                else (lambda c, p, m=spec.model: f"{m} says hi to {c[-1]['content']}")
            )
            made[spec.model] = ScriptedBackend(spec.model, reply)
        return made[spec.model]

    monkeypatch.setattr(backends_module, "make_backend", make)
    prompts = write_lines(tmp_path / "p.jsonl", [{"prompt": f"Prompt {i}"} for i in range(10)])
    gen = {"prompts": prompts, "teachers": ["a", "b"], "completions_per_prompt": 2, "progress": False}
    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    generate(parse_config([GenerateConfig], None, {**gen, "output": str(whole / "c.jsonl")})[0])
    for i in range(2):
        result = generate(
            parse_config(
                [GenerateConfig], None, {**gen, "output": str(sharded / "c.jsonl"), "shard": f"{i}/2"}
            )[0]
        )
        assert result.output.name == f"c.shard-{i}-of-2.jsonl"
    assert sorted(find_shards(sharded / "c.jsonl")) == [0, 1]
    merge_shards(sharded / "c.jsonl")
    assert by_id(sharded / "c.jsonl") == by_id(whole / "c.jsonl")
    rate = {"judge": "judge", "rationale": False, "aspects": ["helpfulness"], "progress": False}
    feedback(
        parse_config(
            [FeedbackConfig],
            None,
            {**rate, "input": str(whole / "c.jsonl"), "output": str(whole / "r.jsonl")},
        )[0]
    )
    for rank in ("0", "1"):  # the launcher's way
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "2")
        cfg = parse_config(
            [FeedbackConfig],
            None,
            {**rate, "input": str(sharded / "c.jsonl"), "output": str(sharded / "r.jsonl")},
        )[0]
        assert feedback(cfg).written > 0
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    merge_shards(sharded / "r.jsonl")
    assert by_id(sharded / "r.jsonl") == by_id(whole / "r.jsonl")


def test_dialogue_config_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="`output` and `simulator` are required"):
        parse_config([DialogueConfig], None, {"teachers": ["m"]})
    with pytest.raises(ConfigError, match="`teachers` must be a non-empty list"):
        parse_config([DialogueConfig], None, {"output": "o", "simulator": "m"})
    with pytest.raises(ConfigError, match="unknown sector"):
        config("s", "o", turns={"poetry": [1, 2]})
    with pytest.raises(ConfigError, match=r"`turns.world` must be \[lowest, highest\]"):
        config("s", "o", turns={"world": [4, 2]})
    with pytest.raises(ConfigError, match=r"`teachers\[1\]`.*did you mean `temperature`"):
        config("s", "o", teachers=["m", {"backend": "m", "temprature": 1}])
    with pytest.raises(ConfigError, match="unique"):
        config("s", "o", teachers=["m", "m"])
    with pytest.raises(ConfigError, match="`shard` must be I/N"):
        config("s", "o", shard="3/2")
    with pytest.raises(ConfigError, match="`concurrency` must be at least 1"):
        config("s", "o", concurrency=0)


# ---- the embedded model -----------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_model_as_simulator_and_teacher_makes_two_tiny_dialogues(tmp_path):
    seeds = write_lines(
        tmp_path / "s.jsonl",
        [
            {"sector": "world", "topic": "why leaves change colour in autumn"},
            {"question": "What is a rainbow?"},
        ],
    )
    model = {"model": "smollm2-135m-instruct", "dtype": "float32"}
    out = tmp_path / "d.jsonl"
    cfg = parse_config(
        [DialogueConfig],
        None,
        {
            "seeds": seeds,
            "output": str(out),
            "simulator": {"backend": model, "max_tokens": 32, "temperature": 0.7},
            "teachers": [{"backend": model, "max_tokens": 32, "temperature": 0.3}],
            "turns": {"world": 2},
            "progress": False,
        },
    )[0]
    result = dialogue(cfg)
    assert result.stage.written + result.stage.rejected == 2 and result.stage.failed == 0
    for row in rows_of(out):
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"] * len(row["exchanges"])
        assert all(m["content"].strip() for m in row["messages"])
        assert row["exchanges"][0]["teacher_model"] == "smollm2-135m-instruct"
    assert load_rows(out, "conversation").skipped == 0
