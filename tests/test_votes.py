"""Compare mode and its votes: the /v1/compare API on tiny random models (blind positions, one vote per
comparison, the API key, bounded pending comparisons, concurrent voters), votes -> preference pairs that
DPO tokenizes, and the tallies `zephyr report` shows (win rates, Wilson intervals, Bradley-Terry)."""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from support.http import call
from support.models import save_tiny_checkpoint
from zephyr.distill.votes import Reply, Vote, parse_vote, read_votes, vote_pairs
from zephyr.errors import ConfigError, DataError
from zephyr.evaluate.votes import bradley_terry, connected, tally_votes, wilson_interval
from zephyr.io import append_jsonl, read_jsonl

HELLO = [{"role": "user", "content": "Hello there"}]
MODELS = ("tiny-red", "tiny-blue")


@pytest.fixture(scope="module")
def engines(tiny_model_dir, tokenizer_dir, tmp_path_factory):
    from zephyr.generation.engine import Engine

    other = save_tiny_checkpoint(tmp_path_factory.mktemp("tiny-blue"), tokenizer_dir, seed=1)
    with Engine.from_spec(str(tiny_model_dir), max_batch_size=8) as red:
        with Engine.from_spec(str(other), max_batch_size=8) as blue:
            yield red, blue


def serve(engine, arena=None, **kwargs):
    from zephyr.serve.server import ServerThread, create_app

    return ServerThread(create_app(engine, MODELS[0], arena=arena, **kwargs))


def arena_of(path, *engines, **kwargs):
    from zephyr.serve.compare import Arena, Contender

    return Arena(path, [Contender(n, e) for n, e in zip(MODELS, engines, strict=False)], **kwargs)


@pytest.fixture
def two_models(engines, tmp_path):
    """A server comparing the two tiny models, its votes file, its arena."""
    arena = arena_of(tmp_path / "votes.jsonl", *engines, rng=random.Random(3))
    with serve(engines[0], arena) as server:
        yield server, tmp_path / "votes.jsonl", arena


def lines(path: Path) -> list[dict]:
    return [row for _, row in read_jsonl(path)] if path.exists() else []


def ask(server, messages=HELLO, key=None, **settings):
    body = {"messages": messages, "max_tokens": 6, "temperature": 1.0, **settings}
    return call(server.url, "POST", "/v1/compare", body, key)


def vote(server, comparison_id, choice, key=None):
    return call(server.url, "POST", f"/v1/compare/{comparison_id}/vote", {"choice": choice}, key)


# ---- the API -------------------------------------------------------------------------------------------


def test_a_comparison_hides_the_models_until_the_vote_is_stored(two_models):
    server, path, _ = two_models
    assert call(server.url, "GET", "/v1/compare")[1] == {
        "object": "compare.info",
        "enabled": True,
        "models": 2,
        "votes": 0,
    }
    status, shown, _ = ask(server)
    assert status == 200 and shown["object"] == "compare" and shown["id"].startswith("cmp-")
    assert [r["label"] for r in shown["replies"]] == ["a", "b"]
    assert set(shown) == {"id", "object", "created", "replies"}
    without_texts = json.dumps({**shown, "replies": [{**r, "content": ""} for r in shown["replies"]]})
    assert not any(m in without_texts for m in MODELS), without_texts  # no model id, no hint of one
    assert not lines(path)

    status, result, _ = vote(server, shown["id"], "b")
    assert status == 200 and result["choice"] == "b" and not result["replayed"]
    assert sorted(result["models"].values()) == sorted(MODELS)
    assert (
        result["chosen_model"] == result["models"]["b"] and result["rejected_model"] == result["models"]["a"]
    )

    (line,) = lines(path)
    assert line["schema_version"] == 1 and line["id"] == shown["id"] and line["choice"] == "b"
    assert line["conversation"] == HELLO and line["prompt"] == "Hello there"
    assert [line["replies"][k]["content"] for k in "ab"] == [r["content"] for r in shown["replies"]]
    assert (line["model_a"], line["model_b"]) == (result["models"]["a"], result["models"]["b"])
    assert line["swapped"] == (line["model_a"] == MODELS[1])
    assert line["chosen_model"] == result["chosen_model"] and line["timestamp"] >= line["created"] > 0
    sampling = {line["replies"][k]["model"]: line["replies"][k]["sampling"] for k in "ab"}
    assert sampling[MODELS[1]]["seed"] == sampling[MODELS[0]]["seed"] + 1
    assert sampling[MODELS[0]] | {"seed": 0} == {"temperature": 1.0, "top_p": 1.0, "max_tokens": 6, "seed": 0}
    assert call(server.url, "GET", "/v1/compare")[1]["votes"] == 1


def test_a_second_vote_returns_the_stored_one_and_writes_nothing(two_models):
    server, path, _ = two_models
    _, shown, _ = ask(server)
    first = vote(server, shown["id"], "a")[1]
    again = vote(server, shown["id"], "both_bad")[1]  # a retry, or a change of mind: the first vote stands
    assert again["replayed"] and {**again, "replayed": False} == first
    _, shown, _ = ask(server)
    results = [None] * 6

    def click(i):
        results[i] = vote(server, shown["id"], "tie")

    clicks = [threading.Thread(target=click, args=(i,)) for i in range(6)]  # a burst of double clicks
    for t in clicks:
        t.start()
    for t in clicks:
        t.join(timeout=60)
    assert [status for status, _, _ in results] == [200] * 6
    assert sum(not r[1]["replayed"] for r in results) == 1
    assert [row["choice"] for row in lines(path)] == ["a", "tie"]


def test_one_model_gives_two_seeded_samples(engines, tmp_path):
    from zephyr.generation.params import SamplingParams

    path = tmp_path / "votes.jsonl"
    with serve(engines[0], arena_of(path, engines[0])) as server:
        assert call(server.url, "GET", "/v1/compare")[1]["models"] == 1
        status, shown, _ = ask(server, seed=5, max_tokens=8)
        assert status == 200
        vote(server, shown["id"], "a")
        status, refused, _ = ask(server, temperature=0)
        assert status == 400 and refused["error"]["param"] == "temperature"
    (line,) = lines(path)
    replies = sorted(line["replies"].values(), key=lambda r: r["sample"])
    assert [r["sample"] for r in replies] == [0, 1] and {r["model"] for r in replies} == {MODELS[0]}
    assert [r["sampling"]["seed"] for r in replies] == [5, 6]
    expected = engines[0].generate([HELLO], SamplingParams(max_tokens=8, temperature=1.0, seed=5, n=2))[0]
    assert [r["content"] for r in replies] == [c.text for c in expected.choices]
    assert line["swapped"] == (line["replies"]["a"]["sample"] == 1)


def test_votes_need_the_api_key(engines, tmp_path):
    path = tmp_path / "votes.jsonl"
    with serve(engines[0], arena_of(path, *engines), api_key="s3cret") as server:
        assert call(server.url, "GET", "/v1/compare")[0] == 401
        status, error, _ = ask(server)
        assert status == 401 and error["error"]["code"] == "invalid_api_key"
        _, shown, _ = ask(server, key="s3cret")
        for key in (None, "wrong"):
            status, error, _ = vote(server, shown["id"], "a", key)
            assert status == 401
        assert not lines(path)
        assert vote(server, shown["id"], "a", "s3cret")[0] == 200
    assert len(lines(path)) == 1


def test_bad_requests_and_a_server_without_compare_mode(engines, two_models):
    server, path, _ = two_models
    for messages, problem in (
        ([], "messages"),
        ([*HELLO, {"role": "assistant", "content": "Hi"}], "end with the user turn"),
        ([*HELLO, *HELLO], "alternate"),
    ):
        status, error, _ = ask(server, messages)
        assert status == 400 and problem in json.dumps(error), error
    _, shown, _ = ask(server)
    status, error, _ = vote(server, shown["id"], "maybe")
    assert status == 400 and error["error"]["param"] == "choice"
    status, error, _ = vote(server, "cmp-nope", "a")
    assert status == 404 and error["error"]["code"] == "comparison_not_found"
    assert not lines(path)
    with serve(engines[0]) as plain:
        assert call(plain.url, "GET", "/v1/compare")[1]["enabled"] is False
        status, error, _ = ask(plain)
        assert (
            status == 404
            and error["error"]["code"] == "compare_off"
            and "--votes" in error["error"]["message"]
        )


# ---- the arena: positions, bounds, concurrency, restarts -------------------------------------------------


def replies(text_a="first reply", text_b="second reply") -> list[Reply]:
    return [Reply(MODELS[0], text_a, sample=0), Reply(MODELS[1], text_b, sample=1)]


def test_positions_are_a_fair_coin_per_comparison(tmp_path):
    arena = arena_of(tmp_path / "v.jsonl", None, None, rng=random.Random(0), max_pending=500)
    shown = [arena.open(HELLO, replies()) for _ in range(400)]
    first_as_a = sum(c.replies[0].content == "first reply" for c in shown)
    assert 160 < first_as_a < 240  # 200 +- 4 standard deviations
    votes = [arena.vote(c.id, "a") for c in shown[:20]]
    assert {v.models["a"] for v in votes} == set(MODELS)


def test_pending_comparisons_are_bounded_and_expire(tmp_path):
    from zephyr.serve.compare import ComparisonNotFound

    now = [0.0]
    arena = arena_of(tmp_path / "v.jsonl", None, None, max_pending=3, ttl=60, clock=lambda: now[0])
    made = [arena.open(HELLO, replies()) for _ in range(4)]
    assert arena.pending == 3
    with pytest.raises(ComparisonNotFound, match="dropped for newer ones"):
        arena.vote(made[0].id, "a")  # the oldest made way for the fourth
    arena.vote(made[1].id, "a")
    now[0] = 61.0
    with pytest.raises(ComparisonNotFound, match="expired"):
        arena.vote(made[2].id, "a")
    assert arena.pending == 0
    assert arena.vote(made[1].id, "b").replayed  # a stored vote outlives the pending list
    assert len(lines(tmp_path / "v.jsonl")) == 1


def test_concurrent_voters_write_exactly_one_whole_line_each(tmp_path):
    path = tmp_path / "votes.jsonl"
    arena = arena_of(path, None, None, max_pending=100)
    long_text = "word " * 20_000  # lines far beyond one write() call, so unlocked writers would interleave
    shown = [arena.open(HELLO, replies(f"{i} {long_text}", f"other {i}")) for i in range(24)]
    barrier = threading.Barrier(48)

    def voter(comparison, choice):
        barrier.wait()
        arena.vote(comparison.id, choice)

    threads = [threading.Thread(target=voter, args=(c, ch)) for c in shown for ch in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    votes, problems = read_votes(path)
    assert not problems and len(votes) == 24 == len({v.id for v in votes})
    assert path.read_bytes().count(b"\n") == 24


def test_locked_appends_from_many_threads_never_interleave(tmp_path):
    path = tmp_path / "lines.jsonl"
    record = {"text": "x" * 300_000}

    def writer(i):
        for j in range(5):
            append_jsonl(path, [{**record, "id": (i, j)}], lock=True)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    rows = [row for _, row in read_jsonl(path)]
    assert len(rows) == 40 and {tuple(r["id"]) for r in rows} == {(i, j) for i in range(8) for j in range(5)}


def test_the_votes_file_is_the_record_across_restarts(tmp_path):
    path = tmp_path / "votes.jsonl"
    first = arena_of(path, None, None)
    voted = first.open(HELLO, replies())
    first.vote(voted.id, "a")
    path.write_bytes(
        path.read_bytes() + b'{"schema_version": 1, "id": "cmp-torn", "conver'
    )  # a crash mid-line
    again = arena_of(path, None, None)
    assert again.info().votes == 1
    replay = again.vote(voted.id, "b")
    assert replay.replayed and replay.choice == "a"
    again.vote(again.open(HELLO, replies()).id, "tie")  # the next line cuts the torn one off
    assert [row["choice"] for row in lines(path)] == ["a", "tie"]


def test_arena_settings_are_checked(tmp_path):
    from zephyr.serve.compare import Arena, Contender

    with pytest.raises(ConfigError, match="apart"):
        Arena(tmp_path / "v.jsonl", [Contender("same", None), Contender("same", None)])
    with pytest.raises(ConfigError, match="directory"):
        arena_of(tmp_path, None)
    with pytest.raises(ConfigError, match="positive"):
        arena_of(tmp_path / "v.jsonl", None, max_pending=0)


# ---- the command line ---------------------------------------------------------------------------------


def test_cli_repeats_the_compare_defaults_and_checks_its_options(tmp_path):
    import argparse

    from zephyr.cli import serve as cli
    from zephyr.serve import compare

    assert cli.DEFAULT_MAX_COMPARISONS == compare.DEFAULT_MAX_COMPARISONS
    assert cli.DEFAULT_COMPARISON_TTL == compare.DEFAULT_COMPARISON_TTL
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    for argv, problem in (
        (["runs/a/model", "--compare-model", "runs/b/model"], "needs --votes"),
        (["runs/a/model", "--compare-model", "runs/b/model", "--votes", "v.jsonl"], "apart"),
        (["m", "--votes", str(tmp_path)], "directory"),
    ):
        with pytest.raises(ConfigError, match=problem):
            cli.run(parser.parse_args(argv), [])


def test_serve_command_compares_two_models(tiny_model_dir, tokenizer_dir, tmp_path):
    other = save_tiny_checkpoint(tmp_path / "blue", tokenizer_dir, seed=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    votes = tmp_path / "votes.jsonl"
    cmd = [sys.executable, "-m", "zephyr.cli", "serve", str(tiny_model_dir), "--port", str(port)]
    cmd += ["--compare-model", str(other), "--votes", str(votes), "--threads", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(url + "/health", timeout=2)
                break
            except OSError:
                time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        body = {"messages": HELLO, "max_tokens": 4}
        _, shown, _ = call(url, "POST", "/v1/compare", body)
        _, result, _ = call(url, "POST", f"/v1/compare/{shown['id']}/vote", {"choice": "a"})
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert sorted(result["models"].values()) == sorted([tiny_model_dir.name, "blue"])
    assert [row["choice"] for row in lines(votes)] == ["a"]


# ---- votes -> pairs -----------------------------------------------------------------------------------


def make_vote(i, choice, conversation=HELLO, a=None, b=None, models=MODELS) -> dict:
    return Vote(
        id=f"cmp-{i}",
        conversation=conversation,
        replies={
            "a": Reply(models[0], a if a is not None else f"reply {i} from A"),
            "b": Reply(models[1], b if b is not None else f"reply {i} from B"),
        },
        choice=choice,
        created=1.0,
        timestamp=2.0,
    ).to_json()


def votes_file(path: Path) -> Path:
    turn = [
        *HELLO,
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "user", "content": "More"},
    ]
    rows = [
        make_vote(1, "a"),
        make_vote(2, "b", conversation=turn),
        make_vote(3, "tie"),
        make_vote(4, "both_bad"),
        make_vote(5, "a", a="same", b="same"),
        make_vote(6, "b", b="  "),
        make_vote(1, "b"),  # the same comparison again (files joined by hand)
    ]
    append_jsonl(path, rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"schema_version": 9, "id": "x"}\n')
    return path


def test_votes_become_ultrafeedback_pairs_that_dpo_tokenizes(tmp_path, tokenizer):
    from zephyr.cli import main
    from zephyr.data import load_rows
    from zephyr.data.config import DataArguments
    from zephyr.data.mixture import load_datasets
    from zephyr.distill.binarize import load_report
    from zephyr.train.dpo_data import tokenize_preferences

    path = votes_file(tmp_path / "votes.jsonl")
    out = tmp_path / "prefs"
    assert (
        main(["binarize", "--votes", str(path), "--output_dir", str(out), "--test_size=0"]) == 3
    )  # a bad line
    report = load_report(out)
    assert report["pairs"] == 2 and report["rows_read"] == 7 and report["unreadable"]["lines"] == 1
    assert "newer zephyr" in report["unreadable"]["examples"][0]
    assert report["dropped"] == {
        "tie": 1,
        "both_bad": 1,
        "identical_replies": 1,
        "empty_reply": 1,
        "duplicate_vote": 1,
    }
    assert report["models"] == {
        MODELS[0]: {"chosen": 2, "rejected": 2},
        MODELS[1]: {"chosen": 2, "rejected": 2},
    }

    rows = [json.loads(x) for x in (out / "jsonl" / "train_prefs.jsonl").read_text().splitlines()]
    first, second = sorted(rows, key=lambda r: len(r["chosen"]))
    assert set(first) == {
        "prompt",
        "prompt_id",
        "chosen",
        "rejected",
        "messages",
        "score_chosen",
        "score_rejected",
    }
    assert first["prompt"] == "Hello there" and first["chosen"] == [
        *HELLO,
        {"role": "assistant", "content": "reply 1 from A"},
    ]
    assert first["rejected"][-1]["content"] == "reply 1 from B" and first["messages"] == first["chosen"]
    assert (first["score_chosen"], first["score_rejected"]) == (1.0, 0.0)
    assert (
        second["prompt"] == "More"
        and len(second["chosen"]) == 4
        and second["chosen"][-1]["content"] == "reply 2 from B"
    )
    assert first["prompt_id"] != second["prompt_id"]

    loaded = load_rows(str(out), "preference", split="train_prefs").dataset
    assert len(loaded) == 2
    tokens, skipped, _ = tokenize_preferences(loaded, tokenizer, 256, 128)
    assert len(tokens) == 2 and skipped == 0
    splits = load_datasets(
        DataArguments(dataset_mixer={str(out): 1.0}, dataset_splits=["train_prefs"]), "preference"
    )
    assert len(splits["train"]) == 2  # what `zephyr dpo` reads with this recipe's data keys


def test_vote_lines_are_checked_field_by_field():
    loc = {"source": "votes.jsonl", "line": 3}
    good = make_vote(1, "a")
    assert parse_vote(good, loc).chosen_model == MODELS[0]
    for change, field in (
        ({"choice": "maybe"}, "choice"),
        ({"conversation": [{"role": "assistant", "content": "x"}]}, "conversation[0].role"),
        ({"replies": {"a": {"model": "m", "content": 3}}}, "replies.a.content"),
        ({"schema_version": "1"}, "schema_version"),
    ):
        with pytest.raises(DataError) as info:
            parse_vote(good | change, loc)
        assert info.value.field == field and "line 3" in str(info.value)
    with pytest.raises(ConfigError, match="not both"):
        from zephyr.distill.binarize import BinarizeConfig

        BinarizeConfig(input="rated.jsonl", votes="votes.jsonl", output_dir="out")
    pairs, dropped = vote_pairs([parse_vote(make_vote(1, "tie"), loc)])
    assert pairs == [] and dropped["tie"] == 1


# ---- tallies -----------------------------------------------------------------------------------------


def tally_of(rows: list[dict]) -> dict:
    return tally_votes([parse_vote(r, {}) for r in rows])


def test_win_rates_count_ties_half_and_leave_out_both_bad_and_self_comparisons():
    rows = [make_vote(i, "a") for i in range(6)] + [make_vote(10 + i, "b") for i in range(2)]
    rows += [make_vote(20, "tie"), make_vote(21, "tie"), make_vote(30, "both_bad")]
    rows += [make_vote(40, "a", models=(MODELS[0], MODELS[0])), make_vote(1, "b")]  # a repeat counts once
    tally = tally_of(rows)
    assert (tally["votes"], tally["same_model"], tally["both_bad"], tally["tie"]) == (12, 1, 1, 2)
    red, blue = tally["models"][MODELS[0]], tally["models"][MODELS[1]]
    assert (red["wins"], red["losses"], red["ties"], red["both_bad"], red["comparisons"]) == (6, 2, 2, 1, 10)
    assert red["win_rate"] == pytest.approx(0.7) and blue["win_rate"] == pytest.approx(0.3)
    assert (red["ci_low"], red["ci_high"]) == pytest.approx(wilson_interval(7, 10))
    assert tally["bradley_terry"] is None  # two models: the win rate says it all


def test_wilson_interval_known_values():
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_bradley_terry_recovers_known_strengths():
    truth = {"a": 1.0, "b": 2.0, "c": 4.0, "d": 8.0}
    wins = {
        (i, j): 50 * truth[i] / (truth[i] + truth[j]) for i in truth for j in truth if i != j
    }  # expected wins of 50 games per pair: the MLE is the truth exactly
    fitted = bradley_terry(wins)
    scale = fitted["a"] / truth["a"]
    for m, p in truth.items():
        assert fitted[m] == pytest.approx(p * scale, rel=1e-6)
    assert math_geomean(fitted.values()) == pytest.approx(1.0)
    shrunk = bradley_terry(wins, prior_ties=1.0)
    assert 1 < shrunk["d"] / shrunk["c"] < 2  # pulled towards equal, order kept


def math_geomean(values) -> float:
    import math

    values = list(values)
    return math.exp(sum(map(math.log, values)) / len(values))


def test_bradley_terry_in_the_tally_for_three_models():
    models = ("red", "blue", "green")
    rows, i = [], 0
    for (a, b), a_wins, b_wins in (
        (("red", "blue"), 8, 2),
        (("blue", "green"), 7, 3),
        (("red", "green"), 9, 0),
    ):
        for choice, count in (("a", a_wins), ("b", b_wins)):
            for _ in range(count):
                rows.append(make_vote(i, choice, models=(a, b)))
                i += 1
    bt = tally_of(rows)["bradley_terry"]
    assert bt["connected"] and set(bt["models"]) == set(models)
    ratings = {m: bt["models"][m]["rating"] for m in models}
    assert ratings["red"] > ratings["blue"] > ratings["green"]  # green never beat red, and stays finite
    assert all(r is not None for r in ratings.values())
    assert not connected({("a", "b"): 1.0, ("c", "d"): 1.0})


def test_report_shows_the_vote_tallies(tmp_path):
    from zephyr.cli import main

    rows = [make_vote(i, "a" if i % 3 else "b", models=("red", "blue")) for i in range(9)]
    rows += [make_vote(100 + i, "a", models=("blue", "green")) for i in range(4)]
    append_jsonl(tmp_path / "votes.jsonl", rows)
    (tmp_path / "run").mkdir()
    assert main(["report", str(tmp_path / "run"), f"--votes={tmp_path / 'votes.jsonl'}"]) == 0
    text = (tmp_path / "run" / "report" / "index.html").read_text()
    assert "<h2>Human votes</h2>" in text and 'id="chart-votes-win-rates"' in text
    assert "Bradley-Terry rating" in text and "13 votes" in text
    assert (tmp_path / "run" / "report" / "votes_win_rates.png").stat().st_size > 1000
    assert main(["report", str(tmp_path / "run")]) == 0
    assert "Human votes" not in (tmp_path / "run" / "report" / "index.html").read_text()
