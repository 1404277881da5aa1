"""AlpacaEval: the published win rate recomputed, file formats, position randomization, resume, bad input."""

from __future__ import annotations

import csv
import json
import math

import pytest

from support.data import shared_file
from support.fakes import ScriptedBackend, use_backends
from zephyr.cli import main
from zephyr.errors import ConfigError, DataError
from zephyr.evaluate import alpaca as ae
from zephyr.evaluate import benchmarks
from zephyr.evaluate import settings as ev_settings
from zephyr.evaluate.scoring import win_rate
from zephyr.generation.jobs import RunInterrupted


def test_published_zephyr_annotations_give_90_60(capsys):
    path = shared_file("alpaca_eval/zephyr-7b-beta_alpaca_eval_gpt4_annotations.json")
    assert main(["eval", "alpaca", "--annotations", str(path)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("zephyr-7b-beta "))
    assert row.split()[1] == "90.60", out
    assert "2 annotation(s) with no preference left out" in out


def test_recomputed_numbers_match_the_leaderboard_row():
    annotations = ae.load_annotations(
        shared_file("alpaca_eval/zephyr-7b-beta_alpaca_eval_gpt4_annotations.json")
    )
    with open(shared_file("alpaca_eval/leaderboard_v1_alpaca_eval_gpt4.csv")) as f:
        row = next(r for r in csv.DictReader(f) if r[""] == "zephyr-7b-beta")
    ours = benchmarks.alpaca_results(annotations, "published")["models"]["zephyr-7b-beta"]
    assert ours["win_rate"] == pytest.approx(float(row["win_rate"]), abs=1e-9)
    assert ours["standard_error"] == pytest.approx(float(row["standard_error"]), abs=1e-9)
    for key in ("n_wins", "n_wins_base", "n_draws", "n_total", "avg_length"):
        assert ours[key] == int(row[key]), key
    assert ours["discrete_win_rate"] == pytest.approx(float(row["discrete_win_rate"]))


def test_win_rate_arithmetic_by_hand():
    # 2 = model better, 1 = reference better, 1.5 and the old code 0 = tie, None = no verdict (dropped).
    rate = win_rate([2, 2, 1, 1.5, 0, None, 2.0])
    values = [1, 1, 0, 0.5, 0.5, 1]
    mean = sum(values) / 6
    sem = math.sqrt(sum((v - mean) ** 2 for v in values) / 5 / 6)
    assert rate.win_rate == pytest.approx(mean * 100)
    assert rate.standard_error == pytest.approx(sem * 100)
    assert (rate.n_wins, rate.n_wins_base, rate.n_draws, rate.n_total, rate.n_missing) == (3, 1, 2, 6, 1)
    # Weighted preferences (AlpacaEval 2.0 style) count by their weight.
    assert win_rate([1.25, 1.75]).win_rate == pytest.approx(50.0)
    with pytest.raises(DataError, match=r"must be in \[1, 2\]"):
        win_rate([3])
    nothing = win_rate([None, None])
    assert nothing.win_rate is None and nothing.n_missing == 2 and nothing.n_total == 0


def test_position_order_is_a_seeded_hash_of_the_instruction():
    instructions = [
        x["instruction"] for x in ae.load_instructions(shared_file("alpaca_eval/instructions.jsonl"))
    ]
    flips = [ae.is_switched(i, seed=0) for i in instructions]
    assert flips == [ae.is_switched(i, seed=0) for i in instructions]  # deterministic
    assert 0.44 < sum(flips) / len(flips) < 0.56
    other_seed = [ae.is_switched(i, seed=1) for i in instructions]
    assert 0.35 < sum(a != b for a, b in zip(flips, other_seed, strict=True)) / len(flips) < 0.65


def model_reply(conversation, params):
    return f"MODEL-OUTPUT for: {conversation[-1]['content'][:30]}"


def fair_judge(conversation, params):
    """Prefers the model's output wherever it is shown."""
    user = conversation[-1]["content"]
    return "[[A]]" if user.find("MODEL-OUTPUT") < user.find("[Answer of Assistant B]") else "[[B]]"


def run_alpaca(tmp_path, monkeypatch, judge, **kw) -> dict:
    use_backends(monkeypatch, m=ScriptedBackend("tiny-model", model_reply), j=judge)
    return benchmarks.alpaca(ev_settings.AlpacaSettings(model="m", judge="j", output_dir=str(tmp_path), **kw))


def test_builtin_flow_writes_alpaca_files(tmp_path, monkeypatch, capsys):
    judge = ScriptedBackend("judge-x", fair_judge)
    result = run_alpaca(tmp_path, monkeypatch, judge, max_new_tokens=32, temperature=0.0)
    instructions = ae.load_instructions(ev_settings.BUILTIN_INSTRUCTIONS)
    assert len(instructions) == 24

    outputs = json.loads((tmp_path / "tiny-model" / "model_outputs.json").read_text())
    assert [o["instruction"] for o in outputs] == [x["instruction"] for x in instructions]
    assert all(
        set(o) == {"instruction", "output", "generator", "dataset"} and o["generator"] == "tiny-model"
        for o in outputs
    )

    annotator = "judge-x:zephyr-pair"
    annotations = json.loads(
        (tmp_path / "tiny-model" / "judge-x_zephyr-pair" / "annotations.json").read_text()
    )
    assert len(annotations) == 24 and len(judge.calls) == 24
    for a in annotations:
        assert {
            "instruction",
            "output_1",
            "generator_1",
            "output_2",
            "generator_2",
            "dataset",
            "annotator",
            "preference",
            "raw_completion",
        } <= set(a)
        assert a["generator_1"] == "zephyr-mini-reference" and a["generator_2"] == "tiny-model"
        assert a["annotator"] == annotator and a["preference"] == 2.0
    model = result["models"]["tiny-model"]
    assert model["win_rate"] == 100.0 and model["n_total"] == 24
    # The judge saw the model first exactly for the instructions the hash switches.
    for conversation, params in judge.calls:
        user = conversation[-1]["content"]
        instruction = user.split("[Question]\n", 1)[1].split("\n\n[Answer of Assistant A]", 1)[0]
        model_first = user.find("MODEL-OUTPUT") < user.find("[Answer of Assistant B]")
        assert model_first == ae.is_switched(instruction, 0)
        assert params.temperature == 0


def test_letter_verdicts_from_logprobs_give_graded_preferences(tmp_path, monkeypatch):
    """judge_verdict: logprobs reads P(A) and P(B) of the judge's first token; 0.8 for the model's side,
    wherever the model's output is shown, is a preference of 1.8 and a win rate of 80."""

    def scores(conversation, options):
        assert options == ("A", "B")
        user = conversation[-1]["content"]
        assert user.endswith("Reply with one letter only: A or B.")
        model_first = user.find("MODEL-OUTPUT") < user.find("[Answer of Assistant B]")
        p_a = 0.8 if model_first else 0.2
        # Unnormalised on purpose: only the two letters' ratio counts.
        return {"A": math.log(p_a * 0.5), "B": math.log((1 - p_a) * 0.5)}

    judge = ScriptedBackend(
        "judge-x", lambda c, p: pytest.fail("a letter judge must not generate"), scores=scores
    )
    result = run_alpaca(tmp_path, monkeypatch, judge, judge_verdict="logprobs")
    annotations = json.loads(
        (tmp_path / "tiny-model" / "judge-x_zephyr-pair-letter" / "annotations.json").read_text()
    )
    assert len(annotations) == 24 and len(judge.calls) == 24
    assert [a["preference"] for a in annotations] == pytest.approx([1.8] * 24)
    assert all(set(a["raw_completion"]["logprobs"]) == {"A", "B"} for a in annotations)
    model = result["models"]["tiny-model"]
    assert model["win_rate"] == pytest.approx(80.0) and model["n_wins"] == 24 and model["n_missing"] == 0


def test_a_letter_missing_from_the_top_logprobs_counts_as_probability_zero():
    base = {"instruction": "i"}
    build = ae._letter_builder(base, False)
    record = build([{"A": math.log(0.3), "B": float("-inf")}])
    assert record["preference"] == 1.0 and record["raw_completion"]["logprobs"] == {
        "A": math.log(0.3),
        "B": None,
    }
    json.dumps(record, allow_nan=False)  # stays valid JSON
    assert ae._letter_builder(base, True)([{"A": float("-inf"), "B": -2.0}])["preference"] == 1.0


def test_letter_verdicts_need_a_judge_that_can_score(tmp_path, monkeypatch):
    with pytest.raises(RunInterrupted, match="cannot score options"):
        run_alpaca(tmp_path, monkeypatch, ScriptedBackend("judge-x", fair_judge), judge_verdict="logprobs")
    with pytest.raises(ConfigError, match="judge_verdict"):
        ev_settings.AlpacaSettings(judge="j", judge_verdict="probs")
    prompts = shared_file("mt_bench/judge_prompts.jsonl")
    with pytest.raises(ConfigError, match="do not go together"):
        run_alpaca(
            tmp_path,
            monkeypatch,
            ScriptedBackend("judge-x", fair_judge, scores=lambda c, o: {}),
            judge_verdict="logprobs",
            judge_prompts=str(prompts),
        )


def test_position_biased_judge_gives_the_switched_share(tmp_path, monkeypatch):
    result = run_alpaca(tmp_path, monkeypatch, ScriptedBackend("judge-x", lambda c, p: "Output A. [[A]]"))
    instructions = [x["instruction"] for x in ae.load_instructions(ev_settings.BUILTIN_INSTRUCTIONS)]
    switched = sum(ae.is_switched(i, 0) for i in instructions)
    assert 0 < switched < 24
    assert result["models"]["tiny-model"]["win_rate"] == pytest.approx(100 * switched / 24)


def test_unreadable_verdicts_are_missing_and_identical_outputs_tie(tmp_path, monkeypatch):
    references = ae.load_outputs(ev_settings.BUILTIN_REFERENCE_OUTPUTS)
    outputs = [dict(r, generator="copycat") for r in references[:4]] + [
        {
            "instruction": r["instruction"],
            "output": "something else",
            "generator": "copycat",
            "dataset": r["dataset"],
        }
        for r in references[4:6]
    ]
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    judge = ScriptedBackend("judge-x", lambda c, p: "I cannot tell.")
    use_backends(monkeypatch, j=judge)
    refs = tmp_path / "refs.json"
    refs.write_text(json.dumps(references[:5]))
    settings = ev_settings.AlpacaSettings(
        model_outputs=str(path), judge="j", reference_outputs=str(refs), output_dir=str(tmp_path / "o")
    )
    with pytest.raises(
        ConfigError, match=r"no reference output for 1 instruction\(s\), e.g. 'Write a polite email"
    ):
        benchmarks.alpaca(settings)
    refs.write_text(json.dumps(references))
    result = benchmarks.alpaca(settings)
    model = result["models"]["copycat"]
    assert len(judge.calls) == 2  # identical outputs are a tie without asking the judge
    assert (model["n_draws"], model["n_total"], model["n_missing"]) == (4, 4, 2)
    assert model["win_rate"] == 50.0


def test_annotating_resumes_after_a_backend_failure(tmp_path, monkeypatch):
    with pytest.raises(RunInterrupted, match="9 of 24"):
        run_alpaca(tmp_path, monkeypatch, ScriptedBackend("judge-x", fair_judge, fail_after=9), concurrency=3)
    healthy = ScriptedBackend("judge-x", fair_judge)
    result = run_alpaca(tmp_path, monkeypatch, healthy)
    assert len(healthy.calls) == 24 - 9
    assert result["models"]["tiny-model"]["n_total"] == 24
    cache = next((tmp_path / "annotations_cache").iterdir())
    assert len(cache.read_text().splitlines()) == 24


def test_shared_outputs_pair_with_the_davinci_references():
    outputs = ae.load_outputs(shared_file("alpaca_eval/zephyr-7b-beta_outputs.json"))
    references = ae.load_outputs(shared_file("alpaca_eval/reference_text_davinci_003.json"))
    pairs = ae.pair_with_references(outputs, references, "davinci")
    assert len(pairs) == 805 and all(r["instruction"] == o["instruction"] for r, o in pairs)


def test_bad_files_name_the_place(tmp_path):
    path = tmp_path / "instructions.jsonl"
    path.write_text('{"instruction": "ok"}\n{"instruction": "  "}\n')
    with pytest.raises(DataError, match=r"line 2, field `instruction`: must be a non-empty string"):
        ae.load_instructions(path)
    path.write_text('{"instruction": "same"}\n{"instruction": "same"}\n')
    with pytest.raises(DataError, match=r"line 2, field `instruction`: duplicate instruction"):
        ae.load_instructions(path)
    outputs = tmp_path / "outputs.json"
    outputs.write_text(
        json.dumps([{"instruction": "a", "output": "b", "generator": "g"}, {"instruction": "c"}])
    )
    with pytest.raises(DataError, match=r"row 1, field `output`"):
        ae.load_outputs(outputs)
    annotations = tmp_path / "annotations.json"
    annotations.write_text(json.dumps([{"instruction": "a", "preference": "best"}]))
    with pytest.raises(DataError, match="must be a number"):
        ae.load_annotations(annotations)


def test_own_instructions_need_reference_outputs(tmp_path, monkeypatch):
    path = tmp_path / "instructions.jsonl"
    path.write_text('{"instruction": "Say hi."}\n')
    use_backends(
        monkeypatch, m=ScriptedBackend("tiny-model", model_reply), j=ScriptedBackend("j", fair_judge)
    )
    with pytest.raises(ConfigError, match="give --reference-outputs"):
        benchmarks.alpaca(
            ev_settings.AlpacaSettings(model="m", judge="j", instructions=str(path), output_dir=str(tmp_path))
        )


def test_duplicate_outputs_and_annotations_are_refused(tmp_path):
    """A second output or annotation of the same pair would be counted twice in the win rate."""
    outputs = tmp_path / "outputs.json"
    row = {"instruction": "a", "output": "b", "generator": "g"}
    outputs.write_text(json.dumps([row, {**row, "output": "other"}]))
    with pytest.raises(DataError, match=r"row 1, field `instruction`: a second output of `g`"):
        ae.load_outputs(outputs)
    annotations = tmp_path / "annotations.json"
    one = {"instruction": "a", "generator_1": "ref", "generator_2": "m", "preference": 2}
    annotations.write_text(json.dumps([one, one]))
    with pytest.raises(DataError, match=r"row 1, field `instruction`: annotates the same instruction"):
        ae.load_annotations(annotations)
    annotations.write_text(json.dumps([{k: v for k, v in one.items() if k != "generator_2"}]))
    with pytest.raises(DataError, match=r"row 0, field `generator_2`: is missing"):
        ae.load_annotations(annotations)
    annotations.write_text("[]")
    with pytest.raises(DataError, match="holds no annotations"):
        ae.load_annotations(annotations)


def test_outputs_are_kept_one_by_one_across_a_kill(tmp_path):
    """Each output is durable as soon as it arrives (a kill after 5 of 8 redoes only 3)."""
    instructions = [{"instruction": f"Say {i}.", "dataset": "d"} for i in range(8)]
    out = tmp_path / "model_outputs.json"
    from zephyr.generation.params import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=8)
    dying = ScriptedBackend("m", lambda c, p: c[-1]["content"].upper(), fail_after=5)
    with pytest.raises(RunInterrupted):
        ae.generate_outputs(dying, instructions, "m", out, params, concurrency=1, save_every=100)
    partial = out.with_name(out.name + ".partial.jsonl")
    assert len(partial.read_text().splitlines()) == 5
    healthy = ScriptedBackend("m", lambda c, p: c[-1]["content"].upper())
    done = ae.generate_outputs(healthy, instructions, "m", out, params, concurrency=1, save_every=100)
    assert len(healthy.calls) == 3 and [d["output"] for d in done] == [f"SAY {i}." for i in range(8)]
    assert not partial.exists() and len(json.loads(out.read_text())) == 8
