"""MT-Bench: FastChat's scoring arithmetic, file shapes, answering rules, judging, resume and bad input."""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

import pytest

from support.data import shared_file
from support.fakes import ScriptedBackend, use_backends
from zephyr.cli import main
from zephyr.errors import ConfigError, DataError
from zephyr.evaluate import benchmarks
from zephyr.evaluate import mt_bench as mtb
from zephyr.evaluate import mt_bench_matches as matches
from zephyr.evaluate import settings as ev_settings
from zephyr.evaluate.judges import (
    DEFAULT_PROMPTS,
    FASTCHAT_NAMES,
    load_judge_prompts,
    parse_rating,
    parse_verdict,
)
from zephyr.evaluate.scoring import summarize_pairwise, summarize_single
from zephyr.generation.jobs import RunInterrupted


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- FastChat's show_result, as an oracle ------------------------------------------------------------


def fastchat_single(path: Path) -> dict:
    """What FastChat's display_result_single prints: per-turn means and the pooled average per model."""
    import pandas as pd

    df = pd.read_json(path, lines=True)[["model", "score", "turn"]]
    df = df[df["score"] != -1]
    out = {}
    for model, rows in df.groupby("model"):
        out[model] = {
            "turn1": rows[rows["turn"] == 1]["score"].mean(),
            "turn2": rows[rows["turn"] == 2]["score"].mean(),
            "average": rows["score"].mean(),
        }
    return out


def fastchat_pairwise(path: Path, baseline: str | None) -> dict:
    """What FastChat's display_result_pairwise computes: win/loss/tie and win_rate_adjusted per model."""
    import pandas as pd

    df = pd.read_json(path, lines=True)
    df = df[(df["g1_winner"] != "error") & (df["g2_winner"] != "error")]
    rows = []
    for _, r in df.iterrows():
        if baseline is not None and baseline not in (r["model_1"], r["model_2"]):
            continue
        if r["g1_winner"] == "tie" or r["g1_winner"] != r["g2_winner"]:
            rows += [
                {"model": r["model_1"], "win": 0, "loss": 0, "tie": 1},
                {"model": r["model_2"], "win": 0, "loss": 0, "tie": 1},
            ]
        else:
            winner, loser = (
                (r["model_1"], r["model_2"]) if r["g1_winner"] == "model_1" else (r["model_2"], r["model_1"])
            )
            rows += [
                {"model": winner, "win": 1, "loss": 0, "tie": 0},
                {"model": loser, "win": 0, "loss": 1, "tie": 0},
            ]
    table = pd.DataFrame(rows).groupby("model").sum()
    if baseline is not None:
        table = table[table.index != baseline]
    total = table["win"] + table["loss"] + table["tie"]
    table["win_rate_adjusted"] = (table["win"] + 0.5 * table["tie"]) / total
    return table.to_dict("index")


def judgment(model, qid, turn, score, judge=("gpt-4", "single-v1")):
    return {
        "question_id": qid,
        "model": model,
        "judge": list(judge),
        "user_prompt": "...",
        "judgment": "...",
        "score": score,
        "turn": turn,
        "tstamp": 0.0,
    }


HAND_BUILT = [
    judgment("alpha", 81, 1, 8),
    judgment("alpha", 82, 1, 6),
    judgment("alpha", 83, 1, -1),
    judgment("alpha", 84, 1, 10),
    judgment("alpha", 81, 2, 4),
    judgment("alpha", 82, 2, -1),
    judgment("alpha", 83, 2, 5.5),
    judgment("alpha", 84, 2, -1),
    judgment("beta", 81, 1, 3),
    judgment("beta", 82, 1, 9),
    judgment("beta", 81, 2, 7),
    judgment("beta", 82, 2, -1),
]


def test_single_scores_follow_fastchat_show_result(tmp_path):
    path = write_jsonl(tmp_path / "model_judgment" / "gpt-4_single.jsonl", HAND_BUILT)
    write_jsonl(
        tmp_path / "question.jsonl",
        [
            {"question_id": q, "category": c, "turns": ["a", "b"]}
            for q, c in ((81, "writing"), (82, "math"), (83, "math"), (84, "coding"))
        ],
    )
    oracle = fastchat_single(path)
    result = matches.score_judgments(str(path), None, None)["models"]
    for model, expected in oracle.items():
        assert result[model]["turns"]["1"] == pytest.approx(expected["turn1"])
        assert result[model]["turns"]["2"] == pytest.approx(expected["turn2"])
        assert result[model]["score"] == pytest.approx(expected["average"])
    # By hand: the MT-Bench score pools every valid row; it is not the mean of the turn means.
    alpha = result["alpha"]
    assert alpha["score"] == pytest.approx((8 + 6 + 10 + 4 + 5.5) / 5)
    assert (alpha["turns"]["1"] + alpha["turns"]["2"]) / 2 != pytest.approx(alpha["score"])
    assert alpha["n_valid"] == 5 and alpha["n_invalid"] == 3
    assert {(x["question_id"], x["turn"]) for x in alpha["invalid"]} == {(83, 1), (82, 2), (84, 2)}
    # Categories come from the question file beside model_judgment/.
    assert alpha["categories"] == {"writing": 6.0, "math": pytest.approx((6 + 5.5) / 2), "coding": 10.0}


def test_judgments_command_prints_scores_and_the_unrated_rows(tmp_path, capsys):
    path = write_jsonl(tmp_path / "gpt-4_single.jsonl", HAND_BUILT)
    assert main(["eval", "mt-bench", "--judgments", str(path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"alpha\s+8\.00\s+4\.75\s+6\.70\s+5\s+3", out), out
    assert "4 judgment(s) had no [[rating]] and were left out" in out
    assert "alpha q83 turn 1" in out and "beta q82 turn 2" in out


def test_pairwise_scores_follow_fastchat(tmp_path):
    def pair(m1, m2, g1, g2, qid=81, turn=1):
        return {
            "question_id": qid,
            "model_1": m1,
            "model_2": m2,
            "g1_winner": g1,
            "g2_winner": g2,
            "judge": ["gpt-4", "pair-v2"],
            "turn": turn,
        }

    rows = [
        pair("alpha", "base", "model_1", "model_1"),  # consistent win
        pair("alpha", "base", "model_1", "model_2", qid=82),  # positions disagree: tie
        pair("alpha", "base", "tie", "tie", qid=83),  # tie
        pair("alpha", "base", "model_2", "model_2", qid=84),  # consistent loss
        pair("alpha", "base", "error", "model_1", qid=85),  # unreadable: dropped
        pair("beta", "base", "model_1", "model_1"),
        pair("beta", "gamma", "model_1", "model_1"),  # no baseline involved: ignored with a baseline
    ]
    path = write_jsonl(tmp_path / "gpt-4_pair.jsonl", rows)
    for baseline in ("base", None):
        oracle = fastchat_pairwise(path, baseline)
        ours = summarize_pairwise(rows, baseline)
        assert set(ours) == set(oracle)
        for model, expected in oracle.items():
            got = ours[model]
            assert (got.win, got.loss, got.tie) == (expected["win"], expected["loss"], expected["tie"])
            assert got.win_rate_adjusted == pytest.approx(expected["win_rate_adjusted"])
    assert summarize_pairwise(rows, "base")["alpha"].win_rate_adjusted == pytest.approx((1 + 0.5 * 2) / 4)


@pytest.mark.parametrize(
    ("text", "score"),
    [
        ("The answer is fine. Rating: [[7]]", 7),
        ("Rating: [[8.5]]", 8.5),
        ("I would give it [6] overall.", 6),  # the single-bracket fallback
        ("First [3], but my final rating is [[9]]", 9),  # double brackets win wherever they are
        ("Rating: [[9]] ... and later [[2]]", 9),  # the first match counts
        ("Rating: 8/10", -1),
        ("Verdict: [[A]]", -1),
        ("", -1),
    ],
)
def test_rating_parsing_matches_fastchat(text, score):
    assert parse_rating(text) == score
    assert type(parse_rating(text)) is type(score)


@pytest.mark.parametrize("text", ["Rating: [[42]]", "Rating: [[0]]", "Rating: [[-3]]", "Rating: [[10.5]]"])
def test_ratings_outside_the_1_to_10_scale_are_unreadable(text):
    assert parse_rating(text) == -1


def test_out_of_scale_scores_in_a_judgment_file_are_left_out():
    """A judgment file written elsewhere with `[[42]]` scored 42 must not make "MT-Bench 42.00"."""
    rows = [
        {"question_id": 1, "model": "m", "score": 42, "turn": 1},
        {"question_id": 2, "model": "m", "score": 8, "turn": 1},
        {"question_id": 3, "model": "m", "score": 6, "turn": 1},
    ]
    summary = summarize_single(rows)["m"]
    assert summary.score == pytest.approx(7.0)
    assert summary.n_valid == 2 and summary.invalid == [(1, 1)]


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("A is better. [[A]]", "A"),
        ("[[B]]", "B"),
        ("They are equal: [[C]]", "tie"),
        ("Not [[B]] but [[A]]", "A"),  # FastChat tests [[A]] first, anywhere in the reply
        ("A is better", "error"),
    ],
)
def test_verdict_parsing_matches_fastchat(text, verdict):
    assert parse_verdict(text) == verdict


def test_two_score_verdicts():
    assert parse_verdict("Scores: [[8, 6]]", "[[rating_a,rating_b]]") == "A"
    assert parse_verdict("[7.0,7.05]", "[[rating_a,rating_b]]") == "tie"
    assert parse_verdict("no scores", "[[rating_a,rating_b]]") == "error"


# --- files ------------------------------------------------------------------------------------------


def test_builtin_questions_two_per_category_with_references():
    questions = mtb.load_questions(ev_settings.BUILTIN_QUESTIONS)
    assert len(questions) == 16 and all(len(q.turns) == 2 for q in questions)
    counts = {c: sum(q.category == c for q in questions) for c in mtb.CATEGORY_ORDER}
    assert counts == dict.fromkeys(mtb.CATEGORY_ORDER, 2)
    references = mtb.load_answers(ev_settings.BUILTIN_REFERENCES)
    mtb.require_references(questions, references, "built-in")
    assert set(references) == {q.question_id for q in questions if q.needs_reference}


def test_real_mt_bench_files_load_and_fill_every_prompt():
    questions = mtb.load_questions(shared_file("mt_bench/question.jsonl"))
    references = mtb.load_answers(shared_file("mt_bench/reference_answer_gpt-4.jsonl"))
    prompts = load_judge_prompts(shared_file("mt_bench/judge_prompts.jsonl"))
    assert len(questions) == 80 and [q.question_id for q in questions] == list(range(81, 161))
    mtb.require_references(questions, references, "gpt-4 references")
    answers = {"m": {q.question_id: mtb.answer_record(q.question_id, "m", [["x", "y"]]) for q in questions}}
    single = matches.single_tasks(questions, answers, prompts, references, "gpt-4")
    assert len(single) == 160
    used = {t.key[3] for t in single}
    assert used == {"single-v1", "single-v1-multi-turn", "single-math-v1", "single-math-v1-multi-turn"}
    math_turn2 = next(t for t in single if t.key[0] == 111 and t.key[4] == 2)
    user = math_turn2.conversations[0][-1]["content"]
    assert answer_text(references[111], 1) in user and "### Reference answer:" in user
    pairs = matches.pair_tasks(questions, [("m", "m")], answers, prompts, references, "gpt-4")
    assert {t.key[4] for t in pairs} == {
        "pair-v2",
        "pair-v2-multi-turn",
        "pair-math-v1",
        "pair-math-v1-multi-turn",
    }


def answer_text(record: dict, turn_index: int) -> str:
    return record["choices"][0]["turns"][turn_index]


def test_default_prompts_cover_every_job_and_fill_cleanly():
    prompts = load_judge_prompts(None)
    assert len(DEFAULT_PROMPTS) == len(FASTCHAT_NAMES)
    questions = mtb.load_questions(ev_settings.BUILTIN_QUESTIONS)
    refs = mtb.load_answers(ev_settings.BUILTIN_REFERENCES)
    answers = {
        "m": {q.question_id: mtb.answer_record(q.question_id, "m", [["ANS1", "ANS2"]]) for q in questions}
    }
    for task in matches.single_tasks(questions, answers, prompts, refs, "j"):
        text = task.conversations[0][-1]["content"]
        assert "{" not in text.replace("{}", "") or "```" in text
        assert ("ANS2" in text) == (task.key[4] == 2)
    for task in matches.pair_tasks(questions, [("m", "m")], answers, prompts, refs, "j"):
        assert len(task.conversations) == 2


@pytest.mark.parametrize(
    ("line", "field", "reason"),
    [
        ('{"category": "math", "turns": ["a"]}', "question_id", "integer or a non-empty string"),
        ('{"question_id": 1, "turns": ["a"]}', "category", "non-empty string"),
        ('{"question_id": 1, "category": "math", "turns": "a"}', "turns", "non-empty list"),
        ('{"question_id": 1, "category": "math", "turns": ["a", ""]}', "turns[1]", "non-empty string"),
        ('{"question_id": 1, "category": "math", "turns": ["a"]', None, "malformed JSON"),
    ],
)
def test_question_file_errors_name_file_line_and_field(tmp_path, line, field, reason):
    path = tmp_path / "questions.jsonl"
    path.write_text('{"question_id": 0, "category": "writing", "turns": ["ok"]}\n\n' + line + "\n")
    with pytest.raises(DataError) as err:
        mtb.load_questions(path)
    message = str(err.value)
    assert str(path) in message and "line 3" in message and reason in message
    if field:
        assert f"field `{field}`" in message


def test_duplicate_question_ids_are_an_error(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question_id": 5, "category": "math", "turns": ["a"]}] * 2)
    with pytest.raises(
        DataError, match=r"line 2, field `question_id`: duplicate question_id 5 \(first on line 1\)"
    ):
        mtb.load_questions(path)


def test_missing_reference_answers_list_the_questions(tmp_path, capsys):
    questions = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {"question_id": 1, "category": "writing", "turns": ["a", "b"]},
            {"question_id": 2, "category": "math", "turns": ["a", "b"]},
            {"question_id": 3, "category": "coding", "turns": ["a", "b"]},
            {"question_id": 4, "category": "reasoning", "turns": ["a", "b"]},
        ],
    )
    refs = write_jsonl(tmp_path / "ref.jsonl", [mtb.answer_record(3, "gpt-4", [["r1", "r2"]])])
    with pytest.raises(
        ConfigError, match=r"no reference answer for question\(s\) 2, 4\. .*--reference-answers"
    ):
        benchmarks.mt_bench(
            ev_settings.MTBenchSettings(
                model="m",
                questions=str(questions),
                reference_answers=str(refs),
                output_dir=str(tmp_path / "out"),
            )
        )
    code = main(
        [
            "eval",
            "mt-bench",
            "--model",
            "m",
            "--questions",
            str(questions),
            "--output-dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2
    assert "no reference answer for question(s) 2, 3, 4" in capsys.readouterr().err


# --- answering ---------------------------------------------------------------------------------------


def echo_model(conversation, params):
    """Answers name the turn and echo the temperature, so tests can see what the model was asked."""
    turn = sum(m["role"] == "user" for m in conversation)
    return f"  answer {turn} to [{conversation[-1]['content'][:20]}] at t={params.temperature}  "


def test_answers_follow_fastchat_rules_and_format(tmp_path):
    model = ScriptedBackend("tiny-model", echo_model)
    questions = mtb.load_questions(ev_settings.BUILTIN_QUESTIONS)
    answer_file = tmp_path / "model_answer" / "tiny-model.jsonl"
    mtb.generate_answers(model, questions, "tiny-model", answer_file, max_new_tokens=64)

    by_question = {}
    for conversation, params in model.calls:
        by_question.setdefault(conversation[0]["content"], []).append((conversation, params))
    for q in questions:
        calls = by_question[q.turns[0]]
        assert len(calls) == 2
        (first, p1), (second, p2) = sorted(calls, key=lambda c: len(c[0]))
        expected_t = {"writing": 0.7, "roleplay": 0.7, "stem": 0.1, "humanities": 0.1}.get(q.category, 0.0)
        assert p1.temperature == p2.temperature == expected_t
        assert p1.max_tokens == 64 and p1.n == 1
        # Turn 2 is asked after the model's own (stripped) turn-1 answer.
        assert [m["role"] for m in second] == ["user", "assistant", "user"]
        assert second[1]["content"] == echo_model(first, p1).strip()
        assert second[2]["content"] == q.turns[1]

    lines = [json.loads(x) for x in answer_file.read_text().splitlines()]
    assert [r["question_id"] for r in lines] == sorted(q.question_id for q in questions)
    for record in lines:
        assert set(record) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
        assert record["model_id"] == "tiny-model" and len(record["answer_id"]) == 22
        assert record["choices"][0]["index"] == 0 and len(record["choices"][0]["turns"]) == 2
        assert record["choices"][0]["turns"][0].startswith("answer 1 to")

    # A rerun finds every answer and asks nothing.
    again = ScriptedBackend("tiny-model", echo_model)
    mtb.generate_answers(again, questions, "tiny-model", answer_file)
    assert again.calls == []


def test_answering_resumes_after_a_backend_failure(tmp_path, monkeypatch):
    use_backends(monkeypatch, m=ScriptedBackend("tiny-model", echo_model, fail_after=9))
    settings = ev_settings.MTBenchSettings(model="m", output_dir=str(tmp_path), concurrency=1)
    with pytest.raises(RunInterrupted, match=r"after 4 of 16 question\(s\) were saved"):
        benchmarks.mt_bench(settings)
    answer_file = tmp_path / "model_answer" / "tiny-model.jsonl"
    assert (
        len(answer_file.read_text().splitlines()) == 4
    )  # a question counts once both its turns are answered
    healthy = ScriptedBackend("tiny-model", echo_model)
    use_backends(monkeypatch, m=healthy)
    benchmarks.mt_bench(settings)
    assert len(healthy.calls) == 2 * 12
    assert len(mtb.load_answers(answer_file)) == 16 and len(answer_file.read_text().splitlines()) == 16


def fastchat_load_model_answers(answer_dir: Path) -> dict:
    """FastChat's load_model_answers: model name = file name, answers keyed by question id."""
    model_answers = {}
    for filename in sorted(glob.glob(os.path.join(answer_dir, "*.jsonl"))):
        model_name = os.path.basename(filename)[:-6]
        answer = {}
        with open(filename) as fin:
            for line in fin:
                row = json.loads(line)
                answer[row["question_id"]] = row
        model_answers[model_name] = answer
    return model_answers


def test_answer_files_are_what_fastchat_gen_judgment_reads(tmp_path, monkeypatch):
    model = ScriptedBackend("tiny-model", echo_model)
    use_backends(monkeypatch, m=model)
    benchmarks.mt_bench(ev_settings.MTBenchSettings(model="m", output_dir=str(tmp_path)))
    questions = [json.loads(x) for x in (tmp_path / "question.jsonl").read_text().splitlines()]
    answers = fastchat_load_model_answers(tmp_path / "model_answer")
    refs = fastchat_load_model_answers(ev_settings.BUILTIN_REFERENCES.parent / "__no_such_dir__")
    assert list(answers) == ["tiny-model"] and refs == {}
    refs = {
        "zephyr-mini-reference": {
            json.loads(x)["question_id"]: json.loads(x)
            for x in ev_settings.BUILTIN_REFERENCES.read_text().splitlines()
        }
    }
    # FastChat's check_data and the fields run_judge_single formats its prompts from.
    for q in questions:
        assert q["question_id"] in answers["tiny-model"], f"Missing answer to question {q['question_id']}"
        answer = answers["tiny-model"][q["question_id"]]
        assert isinstance(answer["choices"][0]["turns"][0], str) and isinstance(
            answer["choices"][0]["turns"][1], str
        )
        if q["category"] in ("math", "reasoning", "coding"):
            ref = refs["zephyr-mini-reference"][q["question_id"]]
            assert len(ref["choices"][0]["turns"]) == 2


# --- judging -----------------------------------------------------------------------------------------


def rating_judge(conversation, params):
    """Rates by what it sees; says nothing rateable about question 13's second turn."""
    user = conversation[-1]["content"]
    if "Mars" in user:
        return "I cannot decide on a score for this one."
    return "Looks reasonable. Rating: [[6]]" if "### User" in user else "Good. Rating: [[8]]"


def run_single(tmp_path, monkeypatch, judge, **kw) -> dict:
    use_backends(monkeypatch, m=ScriptedBackend("tiny-model", echo_model), j=judge)
    return benchmarks.mt_bench(
        ev_settings.MTBenchSettings(model="m", judge="j", output_dir=str(tmp_path), **kw)
    )


def test_single_judging_end_to_end(tmp_path, monkeypatch, capsys):
    judge = ScriptedBackend("judge-x", rating_judge)
    result = run_single(tmp_path, monkeypatch, judge)
    assert len(judge.calls) == 32
    assert all(p.temperature == 0 and p.max_tokens == 2048 for _, p in judge.calls)
    lines = [
        json.loads(x) for x in (tmp_path / "model_judgment" / "judge-x_single.jsonl").read_text().splitlines()
    ]
    assert len(lines) == 32
    for record in lines:
        assert set(record) == {
            "question_id",
            "model",
            "judge",
            "user_prompt",
            "judgment",
            "score",
            "turn",
            "tstamp",
        }
        assert record["judge"][0] == "judge-x" and record["model"] == "tiny-model"
    names = {(r["question_id"], r["turn"]): r["judge"][1] for r in lines}
    assert names[(7, 1)] == "zephyr-single-ref" and names[(7, 2)] == "zephyr-single-ref-multi-turn"
    assert names[(1, 1)] == "zephyr-single" and names[(1, 2)] == "zephyr-single-multi-turn"
    model = result["models"]["tiny-model"]
    assert model["n_invalid"] == 1 and model["invalid"] == [{"question_id": 13, "turn": 2}]
    assert model["turns"] == {"1": 8.0, "2": 6.0}
    assert model["score"] == pytest.approx((16 * 8 + 15 * 6) / 31)
    assert model["categories"]["stem"] == pytest.approx((8 + 8 + 6) / 3)
    from zephyr.evaluate.summary import show_mt_bench

    assert (
        "1 judgment(s) had no [[rating]] and were left out, as FastChat does: tiny-model q13 turn 2"
        in show_mt_bench(result)
    )
    # A second run judges nothing again and gives the same result.
    again = ScriptedBackend("judge-x", rating_judge)
    assert run_single(tmp_path, monkeypatch, again)["models"] == result["models"]
    assert again.calls == []


def test_fastchat_judge_prompts_are_used_by_name(tmp_path, monkeypatch):
    judge = ScriptedBackend("judge-x", rating_judge)
    run_single(tmp_path, monkeypatch, judge, judge_prompts=str(shared_file("mt_bench/judge_prompts.jsonl")))
    fastchat = {
        json.loads(x)["name"]: json.loads(x)
        for x in shared_file("mt_bench/judge_prompts.jsonl").read_text().splitlines()
    }
    lines = [
        json.loads(x) for x in (tmp_path / "model_judgment" / "judge-x_single.jsonl").read_text().splitlines()
    ]
    record = next(r for r in lines if r["question_id"] == 8 and r["turn"] == 2)
    assert record["judge"] == ["judge-x", "single-math-v1-multi-turn"]
    assert record["user_prompt"].startswith("<|The Start of Reference Answer|>")
    sent = next(c for c, _ in judge.calls if c[-1]["content"] == record["user_prompt"])
    assert sent[0] == {"role": "system", "content": fastchat["single-math-v1-multi-turn"]["system_prompt"]}


def test_judging_resumes_after_a_backend_failure_without_redoing_work(tmp_path, monkeypatch, capsys):
    failing = ScriptedBackend("judge-x", rating_judge, fail_after=11)
    with pytest.raises(RunInterrupted, match="rerun the same command to resume"):
        run_single(tmp_path, monkeypatch, failing, concurrency=4)
    path = tmp_path / "model_judgment" / "judge-x_single.jsonl"
    saved = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(saved) == 11  # every judgment the judge finished was kept
    healthy = ScriptedBackend("judge-x", rating_judge)
    result = run_single(tmp_path, monkeypatch, healthy)
    assert len(healthy.calls) == 32 - 11
    done_before = {r["user_prompt"] for r in saved}
    assert not done_before & set(healthy.user_prompts())
    final = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(final) == 32 and len({(r["question_id"], r["turn"]) for r in final}) == 32
    assert result["models"]["tiny-model"]["n_valid"] + result["models"]["tiny-model"]["n_invalid"] == 32

    # Through the CLI the failure is one clear line, not a traceback.
    (tmp_path / "model_judgment" / "judge-x_single.jsonl").unlink()
    use_backends(
        monkeypatch,
        m=ScriptedBackend("tiny-model", echo_model),
        j=ScriptedBackend("judge-x", rating_judge, 3),
    )
    assert main(["eval", "mt-bench", "--model", "m", "--judge", "j", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "scripted outage" in err and "rerun the same command to resume" in err and "Traceback" not in err


def preferring_judge(conversation, params):
    """Prefers whichever assistant's answer came from the 'good' model, wherever it is shown."""
    user = conversation[-1]["content"]
    a, b = user.find("GOOD-ANSWER"), user.rfind("BASE-ANSWER")
    return "[[A]]" if 0 <= a < b else "[[B]]"


def test_pairwise_against_a_baseline_swaps_positions(tmp_path, monkeypatch):
    questions = mtb.load_questions(ev_settings.BUILTIN_QUESTIONS)
    answer_dir = tmp_path / "model_answer"
    write_jsonl(
        answer_dir / "good.jsonl",
        [
            mtb.answer_record(q.question_id, "good", [["GOOD-ANSWER one", "GOOD-ANSWER two"]])
            for q in questions
        ],
    )
    write_jsonl(
        answer_dir / "base.jsonl",
        [
            mtb.answer_record(q.question_id, "base", [["BASE-ANSWER one", "BASE-ANSWER two"]])
            for q in questions
        ],
    )
    judge = ScriptedBackend("judge-x", preferring_judge)
    use_backends(monkeypatch, j=judge)
    settings = ev_settings.MTBenchSettings(
        judge="j", output_dir=str(tmp_path), mode="pairwise-baseline", baseline_model="base"
    )
    result = benchmarks.mt_bench(settings)
    assert len(judge.calls) == 64  # 16 questions x 2 turns x 2 positions
    good = result["models"]["good"]
    assert (good["win"], good["loss"], good["tie"]) == (32, 0, 0) and good["win_rate_adjusted"] == 1.0
    record = json.loads((tmp_path / "model_judgment" / "judge-x_pair.jsonl").read_text().splitlines()[0])
    assert record["g1_winner"] == record["g2_winner"] == "model_1"
    assert record["g1_user_prompt"].index("GOOD-ANSWER") < record["g1_user_prompt"].index("BASE-ANSWER")
    assert record["g2_user_prompt"].index("BASE-ANSWER") < record["g2_user_prompt"].index("GOOD-ANSWER")

    # A judge that always picks the first position is inconsistent under the swap: every pair is a tie.
    for f in (tmp_path / "model_judgment").iterdir():
        f.unlink()
    use_backends(monkeypatch, j=ScriptedBackend("judge-x", lambda c, p: "[[A]]"))
    biased = benchmarks.mt_bench(settings)["models"]["good"]
    assert (biased["win"], biased["loss"], biased["tie"]) == (0, 0, 32) and biased["win_rate_adjusted"] == 0.5


def test_judging_needs_every_answer(tmp_path, monkeypatch):
    questions = mtb.load_questions(ev_settings.BUILTIN_QUESTIONS)
    write_jsonl(
        tmp_path / "model_answer" / "partial.jsonl",
        [mtb.answer_record(q.question_id, "partial", [["a", "b"]]) for q in questions[:-2]],
    )
    use_backends(monkeypatch, j=ScriptedBackend("judge-x", rating_judge))
    with pytest.raises(DataError, match=r"model `partial` has no answer to question\(s\) 15, 16"):
        benchmarks.mt_bench(ev_settings.MTBenchSettings(judge="j", output_dir=str(tmp_path)))


def test_an_output_dir_keeps_one_question_set(tmp_path, monkeypatch):
    use_backends(monkeypatch, m=ScriptedBackend("tiny-model", echo_model))
    benchmarks.mt_bench(ev_settings.MTBenchSettings(model="m", output_dir=str(tmp_path)))
    other = write_jsonl(tmp_path / "other.jsonl", [{"question_id": 1, "category": "writing", "turns": ["x"]}])
    with pytest.raises(ConfigError, match="different question set"):
        benchmarks.mt_bench(
            ev_settings.MTBenchSettings(model="m", questions=str(other), output_dir=str(tmp_path))
        )


@pytest.mark.slow
def test_embedded_model_answers_through_the_local_backend(tmp_path, capsys):
    questions = write_jsonl(
        tmp_path / "q.jsonl",
        [
            {
                "question_id": 1,
                "category": "writing",
                "turns": ["Write one sentence about rain.", "Now make it rhyme."],
            },
            {"question_id": 2, "category": "math", "turns": ["What is 12 + 30?", "And doubled?"]},
        ],
    )
    args = [
        "eval",
        "mt-bench",
        "--model",
        "smollm2-135m-instruct",
        "--questions",
        str(questions),
        "--no-reference",
        "--max-new-tokens",
        "48",
        "--output-dir",
        str(tmp_path / "out"),
    ]
    assert main(args) == 0
    answers = mtb.load_answers(tmp_path / "out" / "model_answer" / "smollm2-135m-instruct.jsonl")
    assert sorted(answers) == [1, 2]
    for record in answers.values():
        turns = mtb.answer_turns(record)
        assert len(turns) == 2 and all(t.strip() for t in turns)


def test_a_record_torn_by_a_crash_is_dropped_on_resume(tmp_path):
    from zephyr.io import append_jsonl

    path = tmp_path / "judge_single.jsonl"
    path.write_text(json.dumps(judgment("alpha", 81, 1, 8)) + "\n" + '{"question_id": 82, "model": "al')
    assert [r["question_id"] for r in matches.load_judgments(path, "single")] == [81]
    append_jsonl(path, [judgment("alpha", 82, 1, 7)])
    assert [r["question_id"] for r in matches.load_judgments(path, "single")] == [81, 82]
    assert len(path.read_text().splitlines()) == 2
    path.write_text(path.read_text() + "{broken\n" + json.dumps(judgment("alpha", 83, 1, 7)) + "\n")
    with pytest.raises(DataError, match="line 3"):  # damage before the last line is not a crash: say so
        matches.load_judgments(path, "single")


def test_a_question_with_more_turns_than_mt_bench_judges_is_refused(tmp_path):
    path = tmp_path / "question.jsonl"
    path.write_text(json.dumps({"question_id": 1, "category": "writing", "turns": ["a", "b", "c"]}) + "\n")
    with pytest.raises(DataError, match=r"line 1, field `turns`: has 3 turns; MT-Bench judges at most 2"):
        mtb.load_questions(path)
