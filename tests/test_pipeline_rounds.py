"""Iterative rounds in `zephyr run`: the wiring from round to round, keys, errors, and the report's chart
of each metric per round. (The slow test in test_distill_demo.py runs two rounds on the embedded model.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from zephyr.errors import ConfigError
from zephyr.pipeline.runner import load_plan, prepare, select

START = "smollm2-135m-instruct"


def _recipe(tmp_path: Path, **rounds) -> Path:
    recipe = {
        "run_dir": str(tmp_path / "run"),
        "rounds": {
            "count": 2,
            "model": START,
            "prompts_per_round": 8,
            "rules": {"max_words": 20},
            "generate": {
                "prompts": "zephyr:demo_prompts",
                "completions_per_prompt": 3,
                "teachers": [{"backend": {"dtype": "float32"}, "temperature": 1.0, "max_tokens": 16}],
                "seed": 7,
            },
            "feedback": {},
            "binarize": {"ties": "drop", "test_size": 0.25},
            "dpo": {"beta": 0.1, "max_steps": 1, "report_to": "none"},
            "eval": {
                "rules": {"prompts": "zephyr:alpaca_mini", "max_new_tokens": 8},
                "prefs": {"max_samples": 4},
            },
            **rounds,
        },
        "report": {},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _wired(path: Path, overrides: dict | None = None) -> dict:
    return {stage.name: stage for stage in prepare(load_plan(path, overrides))}


def test_each_round_samples_judges_and_trains_from_the_model_the_round_before(tmp_path):
    path = _recipe(tmp_path)
    plan = load_plan(path)
    stages = ["generate", "feedback", "binarize", "dpo", "eval"]
    assert plan.names() == [
        "round0/eval",
        *(f"round{k}/{s}" for k in (1, 2) for s in stages),
        "report",
    ]
    wired = _wired(path)
    run = tmp_path / "run"
    assert wired["round2/dpo"].stage_dir == run / "round2" / "dpo"
    first_model = wired["round1/dpo"].outputs["model"]
    assert first_model == str(run / "round1" / "dpo" / "model")
    # Round 1 samples from the starting model, round 2 from round 1's; each a fresh window and seed.
    for k, model, skip, seed in ((1, START, 0, 7), (2, first_model, 8, 8)):
        gen = wired[f"round{k}/generate"].settings
        assert gen["teachers"] == [
            {
                "backend": {"dtype": "float32", "model": model},
                "temperature": 1.0,
                "max_tokens": 16,
                "name": "policy@t1",
            }
        ]
        assert (gen["skip_prompts"], gen["max_prompts"], gen["seed"]) == (skip, 8, seed)
        assert gen["output"] == str(run / f"round{k}" / "generate" / "completions.jsonl")
        assert wired[f"round{k}/feedback"].settings["judge"] == {"type": "rules", "max_words": 20}
        assert wired[f"round{k}/feedback"].settings["input"] == gen["output"]
        dpo = wired[f"round{k}/dpo"].settings
        assert dpo["model_name_or_path"] == model  # and so the reference: the round k-1 model, frozen
        assert dpo["dataset_mixer"] == {str(run / f"round{k}" / "binarize" / "data"): 1.0}
        evals = wired[f"round{k}/eval"].settings
        assert evals["rules"]["model"] == evals["prefs"]["model"] == dpo["output_dir"]
        assert evals["rules"]["rules"] == {"max_words": 20}
        assert evals["prefs"]["ref_model"] == model
        assert evals["prefs"]["data"] == str(run / f"round{k}" / "binarize" / "data")
    baseline = wired["round0/eval"].settings
    assert set(baseline) == {"rules"}  # prefs needs a trained model and its reference
    assert baseline["rules"]["model"] == START
    assert baseline["rules"]["output_dir"] == str(run / "round0" / "eval" / "rules")
    assert wired["report"].settings["run_dir"] == str(run)


def test_a_changed_round_redoes_it_and_every_later_round_only(tmp_path):
    path = _recipe(tmp_path)
    before = {name: stage.key for name, stage in _wired(path).items()}
    after = {name: stage.key for name, stage in _wired(path, {"rounds.dpo.beta": 0.2}).items()}
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {
        "round1/dpo",
        "round1/eval",
        *(f"round2/{s}" for s in ("generate", "feedback", "binarize", "dpo", "eval")),
        "report",
    }


def test_a_judge_model_and_self_rewarding_judge_replace_the_rubric(tmp_path):
    wired = _wired(_recipe(tmp_path, feedback={"judge": "policy", "max_tokens": 8}))
    assert wired["round1/feedback"].settings["judge"] == START
    assert wired["round2/feedback"].settings["judge"] == wired["round1/dpo"].outputs["model"]
    other = _wired(_recipe(tmp_path, feedback={"judge": {"model": "some/judge", "type": "local"}}))
    assert other["round2/feedback"].settings["judge"] == {"model": "some/judge", "type": "local"}


def test_rounds_start_from_the_sft_stage_and_stages_after_them_take_the_last_round(tmp_path):
    path = _recipe(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    del recipe["rounds"]["model"]
    recipe["sft"] = {"model_name_or_path": START, "dataset_mixer": {"zephyr:demo_sft": 1.0}, "max_steps": 1}
    recipe["export"] = {"format": "gguf"}
    path.write_text(yaml.safe_dump(recipe))
    wired = _wired(path)
    names = list(wired)
    assert names[0] == "sft" and names[-2:] == ["report", "export"]
    sft_model = wired["sft"].outputs["model"]
    assert wired["round1/generate"].settings["teachers"][0]["backend"]["model"] == sft_model
    assert wired["round1/dpo"].settings["model_name_or_path"] == sft_model
    assert wired["export"].settings["model"] == wired["round2/dpo"].outputs["model"]
    assert select(load_plan(path), None, "round2/dpo") == {"round2/dpo"}
    assert "round2/eval" in select(load_plan(path), "round2/dpo", None)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"count": 0}, "`rounds.count` must be a whole number >= 1"),
        ({"count": None}, "`rounds.count`"),
        ({"prompts_per_round": 0}, "`rounds.prompts_per_round`"),
        ({"feedback": None}, "missing feedback"),
        ({"orpo": {}}, "alignment stages dpo, orpo"),
        ({"rules": {"max_word": 3}}, "max_words"),
        ({"evals": {}}, "evals.*eval"),
        ({"dpo": "fast"}, "`rounds.dpo` must be a mapping"),
    ],
)
def test_bad_rounds_are_clear_errors_before_anything_runs(tmp_path, change, message):
    path = _recipe(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    for key, value in change.items():
        if value is None:
            recipe["rounds"].pop(key)
        else:
            recipe["rounds"][key] = value
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match=message):
        load_plan(path)


def test_rounds_without_a_starting_model_say_how_to_give_one(tmp_path):
    path = _recipe(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    del recipe["rounds"]["model"]
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="set `rounds.model`, or add an `sft` stage"):
        prepare(load_plan(path))


def test_the_report_charts_each_metric_per_round(tmp_path):
    from zephyr.report import report

    run = tmp_path / "run"
    for k, rate in ((0, 0.25), (1, 0.5), (2, 0.75)):
        result = run / f"round{k}" / "eval" / "rules" / "m" / "results.json"
        result.parent.mkdir(parents=True)
        result.write_text(json.dumps({"satisfied": rate, "satisfied_se": 0.1, "n": 24}))
        if k:
            prefs = run / f"round{k}" / "eval" / "prefs" / "model.json"
            prefs.parent.mkdir(parents=True)
            prefs.write_text(json.dumps({"metrics": {"rewards/accuracies": 0.5 + k / 10}}))
    page = report(run).read_text()
    assert "Iterative rounds" in page
    assert 'id="chart-rounds-0"' in page and (run / "report" / "rounds_0.png").stat().st_size > 1000
    assert 'id="chart-rounds-1"' in page
    assert "rule satisfaction (%)" in page and "reward accuracy" in page
    assert '<td class="num">75.00</td>' in page and '<td class="num">10.00</td>' in page
    bare = tmp_path / "bare"
    bare.mkdir()
    assert "Iterative rounds" not in report(bare).read_text()


@pytest.mark.slow
def test_two_rounds_on_the_embedded_model_each_train_from_the_round_before(tmp_path):
    from zephyr.pipeline import run_pipeline

    run = tmp_path / "run"
    recipe = {
        "run_dir": str(run),
        "rounds": {
            "count": 2,
            "model": START,
            "prompts_per_round": 4,
            "rules": {"max_words": 12},
            "generate": {
                "prompts": "zephyr:demo_prompts",
                "completions_per_prompt": 2,
                "teachers": [{"backend": {"dtype": "float32"}, "temperature": 1.0, "max_tokens": 24}],
                "principles": {"none": 1},
                "progress": False,
            },
            "feedback": {"progress": False},
            "binarize": {"ties": "keep", "test_size": 0.0},
            "dpo": {
                "torch_dtype": "float32",
                "learning_rate": 1.0e-5,
                "per_device_train_batch_size": 2,
                "max_length": 128,
                "max_prompt_length": 64,
                "precompute_ref_log_probs": True,
                "ref_cache_dir": str(tmp_path / "refcache"),
                "save_strategy": "no",
                "report_to": "none",
                "use_cpu": True,
            },
            "eval": {"rules": {"prompts": "zephyr:alpaca_mini", "max_prompts": 4, "max_new_tokens": 16}},
        },
        "report": {"samples": 1},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe))
    summary = run_pipeline(path)
    assert all(info["state"].startswith("ran") for info in summary.values()), summary
    first = run / "round1" / "dpo" / "model"
    second = yaml.safe_load((run / "round2" / "dpo" / "recipe.yaml").read_text())
    assert second["model_name_or_path"] == str(first)
    sampled = [
        json.loads(x) for x in (run / "round2" / "generate" / "completions.jsonl").read_text().splitlines()
    ]
    assert {c["model"] for row in sampled for c in row["completions"]} == {first.name}
    round1 = {
        json.loads(x)["prompt"]
        for x in (run / "round1" / "generate" / "completions.jsonl").read_text().splitlines()
    }
    assert len(round1) == 4 and not round1 & {row["prompt"] for row in sampled}  # a fresh window of prompts
    for k in (0, 1, 2):
        result = json.loads(next((run / f"round{k}" / "eval" / "rules").glob("*/results.json")).read_text())
        assert result["n"] == 4 and 0 <= result["satisfied"] <= 1
    page = (run / "report" / "index.html").read_text()
    assert 'id="chart-rounds-0"' in page
    assert all(info["state"] == "skipped (up to date)" for info in run_pipeline(path).values())


def test_a_pipeline_binarizes_votes_without_a_feedback_stage(tmp_path):
    from zephyr.pipeline import run_pipeline

    votes = tmp_path / "votes.jsonl"
    votes.write_text("")
    recipe = {
        "run_dir": str(tmp_path / "run"),
        "binarize": {"votes": str(votes), "test_size": 0.1},
        "dpo": {"model_name_or_path": START, "max_steps": 1},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe))
    wired = _wired(path)
    assert "input" not in wired["binarize"].settings
    assert wired["dpo"].settings["dataset_mixer"] == {str(tmp_path / "run" / "binarize" / "data"): 1.0}
    before = wired["binarize"].key  # the votes file's contents are hashed into the key
    votes.write_text('{"x": 1}\n')
    assert _wired(path)["binarize"].key != before
    votes.unlink()
    with pytest.raises(ConfigError, match="`votes` not found"):
        run_pipeline(path, dry_run=True)


def test_the_plan_names_exactly_the_stages_it_wires(tmp_path):
    """A round eval with no benchmark that needs only a model (prefs alone) has no round0/eval."""
    for evals in ({"rules": {"max_new_tokens": 8}, "prefs": {}}, {"prefs": {}}):
        path = _recipe(tmp_path, eval=evals)
        assert load_plan(path).names() == list(_wired(path))
    assert "round0/eval" not in load_plan(path).names()
