"""The demo distillation recipes: they parse, and (slow) generate -> feedback -> binarize runs end to end on
the embedded SmolLM2-135M-Instruct, producing pairs from the ratings its small judge managed to write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zephyr.cli import main as zephyr_main
from zephyr.config import parse_config
from zephyr.distill.binarize import BinarizeConfig, load_report
from zephyr.distill.clean import CleanConfig
from zephyr.distill.feedback import FeedbackConfig
from zephyr.distill.generate import GenerateConfig, read_prompts

DEMO = Path(__file__).resolve().parents[1] / "recipes" / "demo"


def test_demo_recipes_parse_and_chain():
    (gen,) = parse_config([GenerateConfig], DEMO / "generate.yaml")
    (fb,) = parse_config([FeedbackConfig], DEMO / "feedback.yaml")
    (binarize,) = parse_config([BinarizeConfig], DEMO / "binarize.yaml")
    (clean,) = parse_config([CleanConfig], DEMO / "clean.yaml")
    assert gen.prompts == "zephyr:demo_prompts" and fb.input == gen.output and binarize.input == fb.output
    assert 2 <= len(gen.pool) <= 4 and len({t.temperature for t in gen.pool}) >= 2
    assert {t.spec.model for t in gen.pool} == {fb.judge_spec.model} == {"smollm2-135m-instruct"}
    principles = {p for t in gen.pool for p in (t.principles or gen.principles)}
    assert 2 <= len(principles - {"none"}) <= 4
    prompts, _ = read_prompts(gen.prompts, limit=gen.max_prompts)
    assert len({p["extra"]["category"] for p in prompts}) == 8  # the subset still spans every category
    assert clean.decontaminate


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    out = tmp_path / "distill"
    assert (
        zephyr_main(
            [
                "generate",
                str(DEMO / "generate.yaml"),
                f"--output={out}/completions.jsonl",
                "--max_prompts=8",
                "--progress=false",
            ]
        )
        == 0
    )
    assert (
        zephyr_main(
            [
                "feedback",
                str(DEMO / "feedback.yaml"),
                f"--input={out}/completions.jsonl",
                f"--output={out}/rated.jsonl",
                "--progress=false",
            ]
        )
        == 0
    )
    assert (
        zephyr_main(
            [
                "binarize",
                str(DEMO / "binarize.yaml"),
                f"--input={out}/rated.jsonl",
                f"--output_dir={out}/prefs",
            ]
        )
        == 0
    )
    rows = [json.loads(line) for line in (out / "rated.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    ratings = [r["rating"] for row in rows for c in row["completions"] for r in c["annotations"].values()]
    missing = [
        r
        for row in rows
        for c in row["completions"]
        for r in c["annotations"].values()
        if r["rating"] is None
    ]
    assert all(r["raw"] is not None and r["error"] for r in missing)  # unreadable: kept raw, never guessed
    assert any(r is not None for r in ratings)
    report = load_report(out / "prefs")
    assert report["rows_read"] == 8 and report["pairs"] == sum(
        report["splits"][s] for s in ("train_prefs", "test_prefs")
    )
