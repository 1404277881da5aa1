"""`zephyr feedback`: strict reading of judge replies (valid, malformed, partial), one request per aspect
with every completion in a seeded shuffled order at temperature 0, the single repair retry, missing
ratings kept with the raw reply, scores, and resuming."""

from __future__ import annotations

import json
import re

import pytest

from zephyr.config import parse_config
from zephyr.distill.feedback import FeedbackConfig, feedback, judge_prompt, read_completions, shown_order
from zephyr.distill.records import Completion, PromptRecord
from zephyr.distill.rubrics import ASPECTS, RUBRICS, aspect_messages, aspect_prompt, instruction_text
from zephyr.distill.verdicts import parse_overall, parse_ratings, problems
from zephyr.errors import ConfigError
from zephyr.generation import backends as backends_module
from zephyr.generation.backends import Backend
from zephyr.generation.params import BackendError, Generation

# ---- parsing ----------------------------------------------------------------------------------------

VALID = [
    ("Text 1\nRating: 4\nRationale: Clear.\n\nText 2\nRating: 2\nRationale: Wrong.", [4, 2]),
    ("### Text 1\n**Rating:** 5\n### Text 2\n**Rating**: 1/5", [5, 1]),
    ("#### Output for Text 1\nRating: 3\n#### Output for Text 2\nRating: [4]", [3, 4]),
    ("Text 1: Rating: 2\nText 2: Rating: 3", [2, 3]),
    ("Text 1: 4\nText 2: 5 out of 5", [4, 5]),  # the compact form: the number straight after the label
    ("Text 2\nRating: 1\nText 1\nRating: 5", [5, 1]),  # out of order is fine: labels say which is which
    ("Both look fine.\nText 1\nRating: 3\nText 1 is concise.\nText 2\nRating: 3", [3, 3]),
    ("Text 1: Rating: 4\nText 2: Rating: 2\nText 1: Rating: 4", [4, 2]),  # a consistent repeat
]
MALFORMED = [
    ("Both are good, I would say 4 and 2.", "no rating for Text 1; no rating for Text 2"),
    ("Text 1: Rating: 9\nText 2: Rating: 3", "Text 1: rating 9 is not a whole number from 1 to 5"),
    ("Text 1: Rating: 3.5\nText 2: Rating: 3", "Text 1: rating 3.5 is not a whole number from 1 to 5"),
    ("Text 1: Rating: 4/10\nText 2: Rating: 3", "Text 1: rating 4/10 is not a whole number from 1 to 5"),
    ("Text 1: Rating: N/A\nText 2: Rating: 3", "Text 1: `Rating:` is not followed by a number"),
    ("Text 0: Rating: 3\nText 1: Rating: 4", "it labels a Text 0, but only Text 1 to Text 2 were shown"),
    ("Text 1: Rating: 4\nText 2: Rating: 2\nText 3: Rating: 5", "it labels a Text 3"),
    ("Text 1: The first answer explains density well.\nText 2: Ice is cold.", "Text 1: no rating given"),
    ("Text 1: 12.5% of 480\nText 2: 480%", "Text 1: no rating given; Text 2: no rating given"),
]
PARTIAL = [
    ("Text 1\nRating: 4\nText 2\nRationale: I am not sure.", [4, None], "Text 2: no rating given"),
    (
        "Text 1: 1. Helpful.\nText 2: 2. Helpful.\nText 1: 1.\nText 2: 1.",
        [1, None],
        "Text 2 has conflicting ratings [1, 2]",
    ),
    ("Text 1\nRating: 5", [5, None], "no rating for Text 2"),
]


@pytest.mark.parametrize("reply,expected", VALID)
def test_valid_replies_parse(reply, expected):
    verdicts = parse_ratings(reply, 2)
    assert [v.rating for v in verdicts] == expected and problems(verdicts) is None


@pytest.mark.parametrize("reply,problem", MALFORMED)
def test_malformed_replies_give_no_rating(reply, problem):
    verdicts = parse_ratings(reply, 2)
    assert verdicts[0].rating is None
    assert problem in problems(verdicts)


@pytest.mark.parametrize("reply,expected,problem", PARTIAL)
def test_partial_replies_keep_what_was_read(reply, expected, problem):
    verdicts = parse_ratings(reply, 2)
    assert [v.rating for v in verdicts] == expected and problems(verdicts) == problem


def test_single_text_needs_no_label_and_rationale_and_types_are_read():
    assert parse_ratings("Rating: 3\nRationale: fine.", 1)[0].rating == 3
    assert parse_ratings("I'd give it a 3.", 1)[0].rating is None
    v = parse_ratings(
        "Text 1\nRating: 2\nType: 1, 3\nRationale: It invents a date\nand a name.", 1, n_types=3
    )[0]
    assert (v.rating, v.type, v.rationale) == (2, [1, 3], "It invents a date\nand a name.")
    assert parse_ratings("Text 1\nRating: 5\nType: None", 1, n_types=3)[0].type == []
    assert (
        parse_ratings("Text 1\nRating: 5\nType: 7", 1, n_types=3)[0].type is None
    )  # unreadable type: no type
    assert (
        parse_ratings("Text 1\nRating: 5\nType: 7", 1, n_types=3)[0].rating == 5
    )  # ...the rating still stands


def test_overall_critique_scores_parse_strictly():
    assert parse_overall("Clear and correct, but terse.\nOverall score: 7") == (
        7.0,
        "Clear and correct, but terse.",
        None,
    )
    assert parse_overall("**Overall Score:** 8.5/10")[0] == 8.5
    assert parse_overall("Great answer!")[2] == "no `Overall score:` line"
    assert parse_overall("Overall score: 11")[2] == "overall score 11 is not a number from 1 to 10"
    assert (
        parse_overall("Overall score: 6 ... Overall score: 7")[2] == "conflicting overall scores [6.0, 7.0]"
    )


def test_rubrics_cover_the_four_aspects_and_show_every_text():
    assert set(RUBRICS) == set(ASPECTS) == {"instruction_following", "honesty", "truthfulness", "helpfulness"}
    prompt = aspect_prompt("truthfulness", "Why is the sky blue?", ["first answer", "second answer"])
    assert "## Text 1\nfirst answer" in prompt and "## Text 2\nsecond answer" in prompt
    assert (
        "Type:" in prompt and "hallucination" in prompt and "Rating: <a whole number from 1 to 5>" in prompt
    )
    assert instruction_text([{"role": "user", "content": "Only turn"}]) == "Only turn"
    multi = instruction_text(
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Name a colour"},
        ]
    )
    assert multi == "User: Hi\n\nAssistant: Hello\n\nUser: Name a colour"
    system, user = aspect_messages("helpfulness", "Why is the sky blue?", ["a", "b"], rationale=False)
    compact = user["content"]
    assert compact.startswith("Rate how helpful each text is below, from 1 (wrong or useless) to 5")
    assert compact.endswith(
        "Now rate how helpful each text is, from 1 to 5. Answer in this format:\n"
        "Text 1: <rating from 1 to 5>\nText 2: <rating from 1 to 5>"
    )
    assert "Text 2:\nb" in compact and "Rationale" not in compact and system["role"] == "system"
    assert all(len(RUBRICS[a].brief) == 3 for a in ASPECTS)


# ---- judging a prompt -------------------------------------------------------------------------------

SCORES = {"GOOD": 5, "MID": 3, "BAD": 1}


class ScriptedJudge(Backend):
    """A judge that reads the texts in its request and rates GOOD 5, MID 3, BAD 1; ``mode`` picks how it
    answers: "blocks" (the full format), "garbage", or a function of (conversation, call number)."""

    name = "scripted-judge"

    def __init__(self, mode="blocks"):
        self.mode, self.calls = mode, []

    def generate(self, conversations, params):
        out = []
        for conversation in conversations:
            self.calls.append((conversation, params))
            text = (
                self.mode(conversation, len(self.calls)) if callable(self.mode) else self.reply(conversation)
            )
            out.append([Generation(text, "stop", 100, 7)])
        return out

    def reply(self, conversation) -> str:
        if self.mode == "garbage":
            return "I cannot decide, they are all lovely."
        if "Overall score" in conversation[-1]["content"]:
            return "Nice work.\nOverall score: 8"
        return "\n\n".join(
            f"Text {i}\nRating: {r}\nRationale: because."
            for i, r in enumerate(ratings_asked(conversation), 1)
        )


def ratings_asked(conversation) -> list[int]:
    texts = re.findall(r"## Text \d+\n(.*?)(?=\n\n## |\Z)", conversation[1]["content"], re.S)
    return [SCORES[t.split()[0]] for t in texts]


def record(*responses: str, prompt_id: str = "p1") -> PromptRecord:
    completions = [
        Completion(f"m{i}", f"t{i}", "helpfulness", None, 1.0, r, "stop", 10, 5)
        for i, r in enumerate(responses)
    ]
    return PromptRecord(
        prompt_id,
        "What is water made of?",
        [{"role": "user", "content": "What is water made of?"}],
        completions,
    )


def cfg(**values) -> FeedbackConfig:
    values = {"input": "in.jsonl", "output": "out.jsonl", "judge": "unused", "progress": False, **values}
    return parse_config([FeedbackConfig], None, values)[0]


def test_one_request_per_aspect_with_every_completion_in_a_seeded_shuffle():
    judge = ScriptedJudge()
    rated, tokens = judge_prompt(cfg(), judge, record("GOOD a", "BAD b", "MID c", "GOOD d"))
    assert len(judge.calls) == 4 and tokens == 4 * 7
    for (conversation, params), aspect in zip(judge.calls, ASPECTS, strict=True):
        assert params.temperature == 0 and params.n == 1
        assert RUBRICS[aspect].title in conversation[1]["content"]
        assert sorted(re.findall(r"## Text (\d)", conversation[1]["content"])) == ["1", "2", "3", "4"]
    for c, expected in zip(rated.completions, [5, 1, 3, 5], strict=True):
        assert {a: r.rating for a, r in c.annotations.items()} == dict.fromkeys(ASPECTS, expected)
        assert c.fine_grained_score == expected and c.annotations["honesty"].rationale == "because."
    orders = [j.order for j in rated.judgments]
    assert all(sorted(o) == [0, 1, 2, 3] for o in orders) and len({tuple(o) for o in orders}) > 1
    assert orders == [shown_order(42, "p1", a, 4) for a in ASPECTS]
    assert rated.judge == "scripted-judge"
    # The shuffle depends on the seed and the prompt, never on anything else.
    assert shown_order(42, "p1", "honesty", 4) == shown_order(42, "p1", "honesty", 4)
    assert any(
        shown_order(42, f"p{i}", "honesty", 4) != shown_order(7, f"p{i}", "honesty", 4) for i in range(5)
    )


def test_an_unreadable_reply_gets_exactly_one_repair_request():
    def mode(conversation, call):
        if conversation[-1]["role"] == "user" and conversation[-1]["content"].startswith(
            "Your answer could not"
        ):
            return "\n".join(f"Text {i}: Rating: {r}" for i, r in enumerate(ratings_asked(conversation), 1))
        return "They are both fine!"

    judge = ScriptedJudge(mode)
    rated, _ = judge_prompt(cfg(), judge, record("GOOD", "BAD"))
    assert len(judge.calls) == 8  # four aspects, four repairs
    repair = judge.calls[4][0]
    assert [m["role"] for m in repair] == ["system", "user", "assistant", "user"]
    assert repair[2]["content"] == "They are both fine!"
    assert "no rating for Text 1; no rating for Text 2" in repair[3]["content"]
    assert "Text 1: <rating from 1 to 5>\nText 2: <rating from 1 to 5>" in repair[3]["content"]
    assert [c.fine_grained_score for c in rated.completions] == [5, 1]
    assert all(j.repair_reply and j.error is None for j in rated.judgments)


def test_still_unreadable_after_the_repair_is_missing_with_the_raw_text_never_guessed():
    judge = ScriptedJudge("garbage")
    rated, _ = judge_prompt(cfg(critique=True), judge, record("GOOD", "BAD", "MID"))
    assert len(judge.calls) == 2 * (4 + 3)  # every request and one repair each, never a third try
    for c in rated.completions:
        assert c.fine_grained_score is None and c.overall_score is None
        for r in c.annotations.values():
            assert r.rating is None and "no rating for Text" in r.error
            assert (
                r.raw
                == "I cannot decide, they are all lovely.\n\n[repair reply]\nI cannot decide, they are all lovely."
            )
    row = rated.to_json()
    assert row["completions"][0]["annotations"]["honesty"]["rating"] is None
    assert json.loads(json.dumps(row)) == row


def test_a_partial_reply_keeps_its_ratings_and_the_repair_fills_only_the_gaps():
    def mode(conversation, call):
        asked = ratings_asked(conversation)
        if conversation[-1]["content"].startswith("Your answer could not"):
            return "\n".join(f"Text {i}: Rating: 2" for i in range(1, len(asked) + 1))  # disagrees on Text 1
        return f"Text 1\nRating: {asked[0]}\nRationale: sure.\nText 2\nRationale: unsure."

    judge = ScriptedJudge(mode)
    rated, _ = judge_prompt(cfg(aspects=["helpfulness"]), judge, record("GOOD", "BAD"))
    order = rated.judgments[0].order
    first_shown, second_shown = rated.completions[order[0]], rated.completions[order[1]]
    assert (
        first_shown.annotations["helpfulness"].rating == SCORES[first_shown.response]
    )  # from the first reply
    assert first_shown.annotations["helpfulness"].rationale == "sure."
    assert second_shown.annotations["helpfulness"].rating == 2  # from the repair


def test_scores_are_the_mean_of_the_aspects_and_the_critique_is_kept_beside_them():
    def mode(conversation, call):
        content = conversation[-1]["content"]
        if "Overall score" in content:
            return "Solid.\nOverall score: 6"
        if "Honesty" in conversation[1]["content"] and conversation[-1]["role"] == "user" and call <= 4:
            return "no idea"
        if content.startswith("Your answer could not"):
            return "still no idea"
        return "\n".join(f"Text {i}: Rating: {r}" for i, r in enumerate(ratings_asked(conversation), 1))

    rated, _ = judge_prompt(cfg(critique=True), ScriptedJudge(mode), record("GOOD", "MID"))
    assert [c.fine_grained_score for c in rated.completions] == [
        None,
        None,
    ]  # honesty missing, all 4 required
    rated, _ = judge_prompt(cfg(critique=True, min_aspects=3), ScriptedJudge(mode), record("GOOD", "MID"))
    assert [c.fine_grained_score for c in rated.completions] == [5, 3]  # the mean of the three it read
    assert [(c.overall_score, c.critique) for c in rated.completions] == [(6, "Solid."), (6, "Solid.")]
    out = rated.to_json()["completions"][0]
    assert out["fine-grained_score"] == 5 and out["overall_score"] == 6 and out["critique"] == "Solid."


def test_feedback_config_errors():
    with pytest.raises(ConfigError, match="required"):
        parse_config([FeedbackConfig], None, {"input": "x"})
    with pytest.raises(ConfigError, match="`aspects`"):
        cfg(aspects=["helpfulness", "style"])
    with pytest.raises(ConfigError, match="`min_aspects` must be between 1 and 2"):
        cfg(aspects=["helpfulness", "honesty"], min_aspects=3)


# ---- the stage --------------------------------------------------------------------------------------


def write_completions(path, prompts: dict[str, list[str]]) -> str:
    lines = [json.dumps(record(*responses, prompt_id=pid).to_json()) for pid, responses in prompts.items()]
    path.write_text("\n".join(lines + ["{torn"]) + "\n", encoding="utf-8")
    return str(path)


def test_feedback_stage_reports_failed_prompts_and_resumes_only_those(tmp_path, monkeypatch):
    source = write_completions(tmp_path / "c.jsonl", {f"p{i}": ["GOOD x", f"BAD {i}"] for i in range(6)})
    failing = {"p2", "p4"}

    class Flaky(ScriptedJudge):
        def generate(self, conversations, params):
            if self.fail and any(f"BAD {p[1]}" in c[1]["content"] for c in conversations for p in failing):
                raise BackendError("judge endpoint gave up", index=0, attempts=5)
            return super().generate(conversations, params)

    judge = Flaky()
    monkeypatch.setattr(backends_module, "make_backend", lambda spec: judge)
    settings = {"input": source, "output": str(tmp_path / "rated.jsonl"), "judge": "any", "progress": False}
    judge.fail = True
    first = feedback(parse_config([FeedbackConfig], None, settings)[0])
    assert (first.written, first.failed, first.bad_input) == (4, 2, 1)
    judge.fail, judge.calls = False, []
    second = feedback(parse_config([FeedbackConfig], None, settings)[0])
    assert (second.resumed, second.written, second.failed) == (4, 2, 0)
    assert len(judge.calls) == 2 * 4  # only the two failed prompts were judged again
    rows = [json.loads(line) for line in (tmp_path / "rated.jsonl").read_text().splitlines()]
    assert sorted(r["prompt_id"] for r in rows) == [f"p{i}" for i in range(6)]
    assert all(
        r["completions"][0]["fine-grained_score"] == 5 and r["judge"] == "scripted-judge" for r in rows
    )
    records, bad = read_completions(source)
    assert len(records) == 6 and bad[0].line == 7


def test_rows_the_judge_could_not_read_at_all_can_be_asked_again(tmp_path, monkeypatch):
    """A judge that answered garbage leaves rows with no rating; `retry_unreadable` asks again and
    replaces them, without duplicating a row or touching the readable ones."""
    source = write_completions(tmp_path / "c.jsonl", {f"p{i}": ["GOOD x", "BAD y"] for i in range(3)})
    judge = ScriptedJudge("garbage")
    monkeypatch.setattr(backends_module, "make_backend", lambda spec: judge)
    out = tmp_path / "rated.jsonl"
    settings = {"input": source, "output": str(out), "judge": "any", "progress": False}
    feedback(parse_config([FeedbackConfig], None, settings)[0])
    # Rows rated without a single readable rating count as finished: a plain rerun asks nothing.
    judge.mode, judge.calls = "blocks", []
    again = feedback(parse_config([FeedbackConfig], None, settings)[0])
    assert (again.resumed, again.written, len(judge.calls)) == (3, 0, 0)
    retried = feedback(parse_config([FeedbackConfig], None, {**settings, "retry_unreadable": True})[0])
    assert (retried.resumed, retried.written) == (0, 3) and judge.calls
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["prompt_id"] for r in rows) == ["p0", "p1", "p2"]
    assert all(r["completions"][0]["fine-grained_score"] == 5 for r in rows)
    judge.calls = []
    assert (
        feedback(parse_config([FeedbackConfig], None, {**settings, "retry_unreadable": True})[0]).written == 0
    )
    assert judge.calls == []


def test_feedback_against_zephyr_serve_records_unreadable_ratings(tmp_path, served):
    source = write_completions(tmp_path / "c.jsonl", {"p0": ["GOOD x", "BAD y"]})
    judge = {"type": "openai", "model": "tiny", "base_url": served}
    result = feedback(cfg(input=source, output=str(tmp_path / "rated.jsonl"), judge=judge, max_tokens=8))
    assert result.written == 1
    row = json.loads((tmp_path / "rated.jsonl").read_text().splitlines()[0])
    assert row["judge"] == "tiny" and len(row["judgments"]) == 4
    for c in row[
        "completions"
    ]:  # a random tiny model never writes a readable rating: all missing, none guessed
        for r in c["annotations"].values():
            assert r["rating"] is None and r["error"] and "[repair reply]" in r["raw"]
        assert c["fine-grained_score"] is None
