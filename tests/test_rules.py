"""The rubric a program checks: the rules themselves, the rule judge of `feedback`, `eval rules`, and the
prompt window of `generate` that iterative rounds use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zephyr.distill.binarize import BinarizeConfig, binarize
from zephyr.distill.feedback import FeedbackConfig, feedback
from zephyr.distill.generate import GenerateConfig, generate
from zephyr.distill.rules import RuleSet, rule_judge
from zephyr.errors import ConfigError, DataError
from zephyr.evaluate.rule_following import rules as eval_rules
from zephyr.evaluate.rule_following import score_outputs
from zephyr.evaluate.settings import RulesSettings
from zephyr.evaluate.summary import show_rules


def test_each_rule_passes_and_fails_where_it_should():
    rules = RuleSet(
        max_words=7,
        min_words=2,
        contains=["Paris", "step by step"],
        excludes=["sorry"],
        starts_with="Sure",
        ends_with=".",
        pattern=r"\d+",
    )
    good = rules.check("sure, Paris in 2 step by step.")
    assert good.satisfied and good.score == 1.0 and good.rating == 5.0 and good.failed == []
    bad = rules.check("Sorry, I cannot help with parisian steps by step today!")
    assert not bad.satisfied
    assert bad.failed == [
        "max_words: 10 words > 7",
        'contains: no "Paris"',  # "parisian" is not the whole word
        'contains: no "step by step"',
        'excludes: has "sorry"',
        "starts_with: does not start with 'Sure'",
        "ends_with: does not end with '.'",
        "pattern: no match for '\\\\d+'",
    ]
    assert bad.score == pytest.approx(1 / 8) and bad.rating == pytest.approx(1.5)
    assert rules.names() == [
        "max_words",
        "min_words",
        "contains",
        "contains",
        "excludes",
        "starts_with",
        "ends_with",
        "pattern",
    ]
    assert RuleSet(min_words=3).check("one two").failed == ["min_words: 2 words < 3"]
    assert RuleSet(max_words=3).check("  a  b\n c ").satisfied  # words are runs of non-space


def test_rule_sets_refuse_what_no_reply_could_pass_or_no_one_meant():
    with pytest.raises(ConfigError, match="at least one rule"):
        RuleSet()
    with pytest.raises(ConfigError, match="`min_words` \\(5\\) is above `max_words` \\(3\\)"):
        RuleSet(max_words=3, min_words=5)
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        RuleSet(pattern="(")
    with pytest.raises(ConfigError, match="`contains` must be a list of non-empty keywords"):
        RuleSet(contains=["ok", " "])
    with pytest.raises(ConfigError, match="`max_words`"):
        RuleSet(max_words=0)
    with pytest.raises(ConfigError, match="max_word.*max_words"):
        RuleSet.parse({"max_word": 3}, "judge")
    with pytest.raises(ConfigError, match="`judge` must be a mapping"):
        RuleSet.parse([1], "judge")
    assert rule_judge("smollm2-135m-instruct") is None
    assert rule_judge({"type": "rules", "max_words": 3}).to_json() == {"max_words": 3}


def _completions(path: Path, replies: dict[str, list[str]]) -> Path:
    rows = []
    for prompt, texts in replies.items():
        completions = [
            {"model": "m", "teacher": "t", "principle": "none", "temperature": 1.0, "response": text}
            for text in texts
        ]
        rows.append(
            {
                "prompt_id": f"id-{prompt}",
                "prompt": prompt,
                "messages": [{"role": "user", "content": prompt}],
                "completions": completions,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_rule_judge_rates_without_a_model_and_binarize_prefers_the_reply_that_passes(tmp_path):
    source = _completions(
        tmp_path / "completions.jsonl",
        {
            "Capital of France?": [
                "It is Paris.",
                "The capital city of the French Republic is, of course, Paris.",
            ],
            "Say hi": ["Hello there, how are you doing on this fine day?", "Hi!"],
            "Count": ["one two three four five six", "seven eight nine ten eleven twelve"],
        },
    )
    cfg = FeedbackConfig(
        input=str(source),
        output=str(tmp_path / "rated.jsonl"),
        judge={"type": "rules", "max_words": 4},
        progress=False,
    )
    assert cfg.settings()["judge"] == {"type": "rules", "max_words": 4}
    result = feedback(cfg)
    assert result.written == 3
    rows = {r["prompt"]: r for r in map(json.loads, Path(cfg.output).read_text().splitlines())}
    paris = rows["Capital of France?"]
    assert paris["judge"] == "rules" and paris["judgments"] == []
    scores = [c["fine-grained_score"] for c in paris["completions"]]
    assert scores == [5.0, 1.0]
    assert paris["completions"][1]["annotations"]["rules"] == {
        "rating": 1.0,
        "rationale": "failed max_words: 11 words > 4",
    }
    out = tmp_path / "prefs"
    report = binarize(
        BinarizeConfig(input=cfg.output, output_dir=str(out), ties="drop", test_size=0.0)
    ).report
    pairs = [json.loads(x) for x in (out / "jsonl" / "train_prefs.jsonl").read_text().splitlines()]
    assert {p["chosen"][-1]["content"] for p in pairs} == {"It is Paris.", "Hi!"}
    assert report["dropped"]["only_ties"] == 1  # both "Count" replies fail: no pair to learn from
    # A changed rubric is a different judge: resuming the file under it is refused.
    with pytest.raises(ConfigError, match="settings"):
        feedback(
            FeedbackConfig(
                input=str(source), output=cfg.output, judge={"type": "rules", "max_words": 5}, progress=False
            )
        )


def test_eval_rules_scores_outputs_with_a_binomial_standard_error(tmp_path):
    outputs = [
        {
            "instruction": f"q{i}",
            "output": "short answer" if i < 3 else "a much longer answer than allowed",
            "generator": "m",
        }
        for i in range(4)
    ]
    source = tmp_path / "model_outputs.json"
    source.write_text(json.dumps(outputs))
    settings = RulesSettings(
        rules={"max_words": 3, "excludes": ["much"]},
        model_outputs=str(source),
        output_dir=str(tmp_path / "out"),
    )
    result = eval_rules(settings)
    m = result["models"]["m"]
    assert m["n"] == 4 and m["satisfied"] == 0.75
    assert m["satisfied_se"] == pytest.approx((0.75 * 0.25 / 4) ** 0.5, abs=1e-4)
    assert m["per_rule"] == {"max_words": 0.75, "excludes": 0.75}
    assert m["mean_score"] == 0.75
    verdicts = [json.loads(x) for x in (tmp_path / "out" / "m" / "verdicts.jsonl").read_text().splitlines()]
    assert [v["satisfied"] for v in verdicts] == [True, True, True, False]
    assert json.loads((tmp_path / "out" / "m" / "results.json").read_text())["satisfied"] == 0.75
    assert "0.75" in show_rules(result)
    with pytest.raises(ConfigError, match="Nothing to score"):
        RulesSettings(rules={"max_words": 3})
    with pytest.raises(ConfigError, match="rules"):
        RulesSettings(rules={}, model_outputs=str(source))
    assert score_outputs(outputs[:1], RuleSet(max_words=3))["satisfied_se"] == 0.0


def test_eval_rules_generates_replies_for_a_window_of_single_turn_prompts(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(5)))
    settings = RulesSettings(
        rules={"max_words": 1000},
        model={"model": str(tiny_model_dir), "threads": 1},
        model_name="tiny",
        prompts=str(prompts),
        skip_prompts=1,
        max_prompts=3,
        max_new_tokens=4,
        output_dir=str(tmp_path / "out"),
    )
    result = eval_rules(settings)
    assert result["models"]["tiny"]["n"] == 3 and result["models"]["tiny"]["satisfied"] == 1.0
    saved = json.loads((tmp_path / "out" / "tiny" / "model_outputs.json").read_text())
    assert [o["instruction"] for o in saved] == ["Question 1?", "Question 2?", "Question 3?"]
    two_turns = tmp_path / "chat.jsonl"
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    two_turns.write_text(json.dumps({"messages": messages}) + "\n")
    with pytest.raises(DataError, match="single-turn"):
        eval_rules(RulesSettings(rules={"max_words": 3}, model=str(tiny_model_dir), prompts=str(two_turns)))


def test_generate_takes_a_window_of_the_prompt_file(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Prompt {i}"}) + "\n" for i in range(6)))

    def run(skip, limit, out):
        cfg = GenerateConfig(
            prompts=str(prompts),
            output=str(tmp_path / out),
            teachers=[{"backend": {"model": str(tiny_model_dir), "threads": 1}, "max_tokens": 2}],
            completions_per_prompt=1,
            skip_prompts=skip,
            max_prompts=limit,
            progress=False,
        )
        generate(cfg)
        return [json.loads(x)["prompt"] for x in (tmp_path / out).read_text().splitlines()]

    assert sorted(run(2, 2, "a.jsonl")) == ["Prompt 2", "Prompt 3"]
    assert sorted(run(4, None, "b.jsonl")) == ["Prompt 4", "Prompt 5"]
    with pytest.raises(DataError, match="after skipping the first 6"):
        run(6, 1, "c.jsonl")
    with pytest.raises(ConfigError, match="skip_prompts"):
        run(-1, 1, "d.jsonl")
