"""`zephyr binarize`: chosen/rejected selection, its reproducibility (runs, input order, 1 vs 2 processes),
ties, score gaps and drops, and the six splits as a `datasets` dir and JSONL in ultrafeedback_binarized's shape."""

from __future__ import annotations

import collections
import json
import random
from pathlib import Path

import pytest

from zephyr.config import parse_config
from zephyr.data import load_rows, prompt_id_of
from zephyr.distill.binarize import SPLITS, BinarizeConfig, binarize, load_report
from zephyr.distill.pairing import completion_score, pair_row
from zephyr.errors import ConfigError

ROW_KEYS = {"prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"}


def cfg(**values) -> BinarizeConfig:
    return parse_config([BinarizeConfig], None, {"input": "in.jsonl", "output_dir": "out", **values})[0]


def rules(**values):
    return cfg(**values).rules()


def rated_row(prompt: str, scores: list, field: str = "fine-grained_score", **extra) -> dict:
    completions = [
        {"model": f"m{i}", "response": f"{prompt} answer {i}", field: s} for i, s in enumerate(scores)
    ]
    return {
        "schema_version": 1,
        "prompt_id": prompt_id_of(prompt),
        "prompt": prompt,
        "messages": [{"role": "user", "content": prompt}],
        "completions": completions,
        **extra,
    }


def write_rows(path: Path, rows: list) -> str:
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return str(path)


# ---- one prompt -------------------------------------------------------------------------------------


def test_chosen_is_the_best_and_rejected_a_random_other():
    row = rated_row("Explain tides.", [2.0, 4.5, 3.0, 1.0])
    rejected = collections.Counter()
    for seed in range(200):
        pair, reason = pair_row(row, rules(seed=seed))
        assert (
            reason == "pair"
            and pair["chosen"][-1]["content"] == "Explain tides. answer 1"
            and pair["score_chosen"] == 4.5
        )
        assert (
            pair["chosen"][0] == {"role": "user", "content": "Explain tides."}
            and pair["messages"] == pair["chosen"]
        )
        rejected[pair["rejected"][-1]["content"]] += 1
        assert pair_row(row, rules(seed=seed)) == (pair, reason)  # the same seed, the same draw
    # Any of the other three, not just the worst, and roughly evenly.
    assert set(rejected) == {f"Explain tides. answer {i}" for i in (0, 2, 3)} and min(rejected.values()) > 40


def test_ties_gaps_and_too_few_ratings():
    tied = rated_row("q", [4.0, 4.0, 2.0])
    assert pair_row(tied, rules(ties="drop"))[0]["rejected"][-1]["content"] == "q answer 2"
    reasons = {pair_row(tied, rules(seed=s))[1] for s in range(30)}
    assert reasons == {"pair", "tie"}  # ties kept: the other 4.0 may be drawn
    assert pair_row(rated_row("q", [3, 3]), rules(ties="drop")) == (None, "only_ties")
    assert pair_row(rated_row("q", [3, 3]), rules())[1] == "tie"
    gap = rated_row("q", [5.0, 4.5, 2.0])
    assert all(pair_row(gap, rules(min_score_gap=1, seed=s))[0]["score_rejected"] == 2.0 for s in range(20))
    assert pair_row(rated_row("q", [5.0, 4.5]), rules(min_score_gap=1)) == (None, "below_min_score_gap")
    assert pair_row(rated_row("q", [5.0, None, "N/A"]), rules()) == (None, "too_few_ratings")
    assert pair_row(
        rated_row("q", [5.0, 2.0], source="truthful_qa"), rules(exclude_sources=["truthful_qa"])
    ) == (None, "excluded_source")


def test_score_field_and_ultrafeedback_rows():
    uf = {
        "source": "evol_instruct",
        "instruction": "Name a prime.",
        "completions": [
            {
                "model": "a",
                "response": "4",
                "overall_score": 9,
                "annotations": {"helpfulness": {"Rating": "1"}, "honesty": {"Rating": "2"}},
            },
            {
                "model": "b",
                "response": "7",
                "overall_score": 3,
                "annotations": {"helpfulness": {"Rating": "5"}, "honesty": {"Rating": "5"}},
            },
            {
                "model": "c",
                "response": "9",
                "overall_score": 5,
                "annotations": {"helpfulness": {"Rating": "N/A"}, "honesty": {"Rating": "3"}},
            },
        ],
    }
    by_mean, _ = pair_row(uf, rules())  # no fine-grained_score field: the mean of the aspect ratings
    assert by_mean["chosen"][-1]["content"] == "7" and by_mean["score_chosen"] == 5.0
    assert by_mean["rejected"][-1]["content"] == "4"  # "9" has an N/A rating, so no mean
    assert by_mean["prompt_id"] == prompt_id_of("Name a prime.") and by_mean["prompt"] == "Name a prime."
    by_critique, _ = pair_row(uf, rules(score_field="overall_score"))
    assert by_critique["chosen"][-1]["content"] == "4" and by_critique["score_chosen"] == 9.0
    by_honesty, _ = pair_row(uf, rules(score_field="honesty"))
    assert by_honesty["chosen"][-1]["content"] == "7"
    assert completion_score({"annotations": {"helpfulness": {"rating": 4}}}, "helpfulness") == 4.0
    assert completion_score({"fine-grained_score": float("nan")}, "fine-grained_score") is None
    assert completion_score({"fine-grained_score": True}, "fine-grained_score") is None


def test_binarize_config_errors():
    with pytest.raises(ConfigError, match="`score_field`"):
        cfg(score_field="quality")
    with pytest.raises(ConfigError, match="`ties`"):
        cfg(ties="random")
    with pytest.raises(ConfigError, match="`test_size`"):
        cfg(test_size=2.5)


# ---- the stage --------------------------------------------------------------------------------------


def dataset_rows(n: int = 40) -> list:
    rng = random.Random(0)
    rows = [
        rated_row(f"Prompt number {i}?", [rng.choice([1, 2, 3, 3.5, 4, 5]) for _ in range(4)])
        for i in range(n)
    ]
    rows.append(rated_row("Only one rating", [4.0, None]))
    rows.append("{torn line")
    rows.append({"schema_version": 1, "completions": []})  # no prompt at all
    return rows


def run(tmp_path, name: str, rows: list, **values):
    source = write_rows(tmp_path / f"{name}.jsonl", rows)
    return binarize(cfg(input=source, output_dir=str(tmp_path / name), **values))


def jsonl_outputs(directory: Path) -> dict[str, bytes]:
    return {split: (directory / "jsonl" / f"{split}.jsonl").read_bytes() for split in SPLITS}


def test_writes_six_splits_as_datasets_and_jsonl(tmp_path):
    result = run(tmp_path, "out", dataset_rows(), test_size=8, test_sft_size=0.5)
    report = load_report(tmp_path / "out")
    assert report == result.report and not result.complete  # two unreadable rows were reported
    assert report["rows_read"] == 42 and report["unreadable"] == {
        "lines": 1,
        "rows": 1,
        "examples": report["unreadable"]["examples"],
    }
    assert report["dropped"]["too_few_ratings"] == 1
    assert report["splits"] == {
        "train_prefs": 32,
        "test_prefs": 8,
        "train_sft": 32,
        "test_sft": 4,
        "train_gen": 32,
        "test_gen": 4,
    }
    for split, count in report["splits"].items():
        rows = [
            json.loads(line)
            for line in (tmp_path / "out" / "jsonl" / f"{split}.jsonl").read_text().splitlines()
        ]
        assert len(rows) == count and all(set(r) == ROW_KEYS for r in rows)
        for r in rows:
            assert r["chosen"][-1]["role"] == r["rejected"][-1]["role"] == "assistant"
            assert r["score_chosen"] >= r["score_rejected"] and r["chosen"][:-1] == r["rejected"][:-1]
            assert r["messages"] == (r["chosen"][:-1] if split.endswith("_gen") else r["chosen"])
    train = {
        json.loads(line)["prompt_id"]
        for line in (tmp_path / "out" / "jsonl" / "train_prefs.jsonl").read_text().splitlines()
    }
    test = {
        json.loads(line)["prompt_id"]
        for line in (tmp_path / "out" / "jsonl" / "test_prefs.jsonl").read_text().splitlines()
    }
    assert not train & test and len(train | test) == 40
    # Both forms load as the toolkit's preference and conversation data.
    prefs = load_rows(tmp_path / "out", "preference", split="test_prefs").dataset
    assert (
        len(prefs) == 8 and prefs[0]["chosen"][0]["role"] == "assistant"
    )  # the loader splits off the prompt
    assert len(load_rows(tmp_path / "out" / "jsonl" / "train_prefs.jsonl", "preference").dataset) == 32
    assert len(load_rows(tmp_path / "out", "conversation", split="train_sft").dataset) == 32


def test_same_pairs_across_runs_input_orders_and_process_counts(tmp_path):
    rows = dataset_rows(60)
    one = run(tmp_path, "one", rows, test_size=0.1)
    shuffled = rows[:]
    random.Random(3).shuffle(shuffled)
    two = run(tmp_path, "two", shuffled, test_size=0.1, num_proc=2)
    assert jsonl_outputs(tmp_path / "one") == jsonl_outputs(tmp_path / "two")
    assert one.report["splits"] == two.report["splits"] and one.report["pairs"] == 60
    from datasets import load_from_disk

    a, b = load_from_disk(str(tmp_path / "one")), load_from_disk(str(tmp_path / "two"))
    assert all(a[s].to_list() == b[s].to_list() for s in SPLITS)
    other = run(tmp_path, "seed", rows, test_size=0.1, seed=7)
    assert jsonl_outputs(tmp_path / "seed") != jsonl_outputs(tmp_path / "one")
    assert other.report["pairs"] == 60


def test_output_dir_is_replaced_whole(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.txt").write_text("from an older run")
    run(tmp_path, "out", dataset_rows(5), test_size=1)
    assert not (tmp_path / "out" / "stale.txt").exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        ["binarize_report.json", "dataset_dict.json", "jsonl", *SPLITS]
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging leftovers
