"""`zephyr report`: the page and its charts from a run directory, checked as files and in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from zephyr.cli import main
from zephyr.evaluate import mt_bench as mtb
from zephyr.evaluate import mt_bench_matches as matches
from zephyr.evaluate import settings as ev_settings
from zephyr.report import report

CHARTS = (
    "chart-training-loss",
    "chart-training-rewards-margins",
    "chart-training-rewards-accuracies",
    "chart-mt-bench-radar",
    "chart-alpaca-win-rates",
)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def sft_history() -> list[dict]:
    return [
        {"step": s, "epoch": s / 10, "loss": 2.0 - 0.1 * s, "learning_rate": 1e-5} for s in range(1, 11)
    ] + [{"step": 10, "eval_loss": 1.2}, {"step": 10, "train_runtime": 12.0, "train_loss": 1.5}]


def dpo_history() -> list[dict]:
    rows = []
    for s in range(2, 13, 2):
        rows.append(
            {
                "step": s,
                "loss": 0.69 - 0.02 * s,
                "rewards/margins": 0.05 * s,
                "rewards/accuracies": min(1.0, 0.5 + 0.04 * s),
                "rewards/chosen": 0.01 * s,
            }
        )
    rows.append({"step": 12, "eval_loss": 0.5, "eval_rewards/margins": 0.4, "eval_rewards/accuracies": 0.75})
    return rows


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A run with an SFT stage (own trainer_state.json), a DPO stage (only checkpoints), MT-Bench judgments of two
    models, and AlpacaEval outputs and annotations."""
    run = tmp_path / "run"
    write_json(run / "sft" / "trainer_state.json", {"global_step": 10, "log_history": sft_history()})
    write_json(run / "dpo" / "checkpoint-6" / "trainer_state.json", {"log_history": dpo_history()[:3]})
    write_json(run / "dpo" / "checkpoint-12" / "trainer_state.json", {"log_history": dpo_history()})

    questions = mtb.load_questions(ev_settings.BUILTIN_QUESTIONS)
    bench = run / "eval" / "mt_bench"
    write_jsonl(bench / "question.jsonl", [q.as_dict() for q in questions])
    judgments = []
    for m, base in (("dpo", 7.0), ("sft", 5.0)):
        write_jsonl(
            bench / "model_answer" / f"{m}.jsonl",
            [mtb.answer_record(q.question_id, m, [[f"{m} <answer> one & two", "second"]]) for q in questions],
        )
        for i, q in enumerate(questions):
            for turn in (1, 2):
                score = -1 if (m, q.question_id, turn) == ("sft", 3, 2) else base + (i % 3) - turn + 1
                judgments.append(
                    {
                        "question_id": q.question_id,
                        "model": m,
                        "judge": ["judge", "zephyr-single"],
                        "user_prompt": "",
                        "judgment": "",
                        "score": score,
                        "turn": turn,
                        "tstamp": 0,
                    }
                )
    write_jsonl(bench / "model_judgment" / "judge_single.jsonl", judgments)

    refs = json.loads(ev_settings.BUILTIN_REFERENCE_OUTPUTS.read_text())
    alpaca = run / "eval" / "alpaca_eval" / "dpo"
    write_json(
        alpaca / "model_outputs.json",
        [
            {"instruction": r["instruction"], "output": "dpo says hi", "generator": "dpo", "dataset": "d"}
            for r in refs
        ],
    )
    write_json(
        alpaca / "judge_zephyr-pair" / "annotations.json",
        [
            {
                "instruction": r["instruction"],
                "output_1": r["output"],
                "generator_1": r["generator"],
                "output_2": "dpo says hi",
                "generator_2": "dpo",
                "annotator": "judge",
                "preference": 2.0 if i % 3 else 1.0,
                "dataset": "d",
            }
            for i, r in enumerate(refs)
        ],
    )
    return run


def test_report_writes_a_page_with_every_chart(run_dir):
    page = report(run_dir)
    assert page == run_dir / "report" / "index.html"
    text = page.read_text()
    for chart in CHARTS:
        assert f'id="{chart}"' in text
    from matplotlib.image import imread

    for png in (
        "training_loss",
        "training_rewards_margins",
        "training_rewards_accuracies",
        "mt_bench_radar",
        "alpaca_win_rates",
    ):
        image = imread(run_dir / "report" / f"{png}.png")
        assert image.shape[0] > 200 and image.shape[1] > 300
        assert image[..., :3].std() > 0.01  # not a blank canvas
    assert "http" not in text.replace("http-equiv", "")  # nothing to fetch: viewable offline
    assert "dpo &lt;answer&gt; one &amp; two" in text  # generations are escaped, not injected
    assert "checkpoint-12" not in text and ">dpo<" in text  # the latest checkpoint stands for its stage


def test_report_scores_match_the_evaluation(run_dir):
    from zephyr.report.collect import mt_bench_results

    singles, _ = mt_bench_results(run_dir, [])
    expected = matches.score_judgments(
        str(run_dir / "eval/mt_bench/model_judgment/judge_single.jsonl"), None, None
    )
    assert singles[0].summary == expected["models"]
    assert singles[0].summary["sft"]["invalid"] == [{"question_id": 3, "turn": 2}]


def test_report_of_an_empty_run_says_what_is_missing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 0
    text = (tmp_path / "empty" / "report" / "index.html").read_text()
    assert "No trainer_state.json found" in text and "No MT-Bench judgments found" in text
    assert "<img" not in text
    assert "Report written to" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_more_models_can_be_compared(run_dir, tmp_path):
    other = tmp_path / "other_single.jsonl"
    write_jsonl(
        other,
        [
            {
                "question_id": q.question_id,
                "model": "published",
                "judge": ["gpt-4", "single-v1"],
                "score": 9,
                "turn": 1,
            }
            for q in mtb.load_questions(ev_settings.BUILTIN_QUESTIONS)
        ],
    )
    page = report(run_dir, mt_bench=[str(other)], output=tmp_path / "out")
    assert "published" in page.read_text()


# --- in a real browser --------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture
def browser(tmp_path, monkeypatch):
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="the browser test needs selenium (pip install selenium)"
    )
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("headless Chromium not found: apt-get install -y chromium chromium-driver")
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(executable_path=CHROMEDRIVER, log_output=os.devnull), options=options
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_report_renders_in_headless_chromium(run_dir, browser):
    from selenium.webdriver.common.by import By

    page = report(run_dir)
    browser.get(page.resolve().as_uri())
    for chart in CHARTS:
        image = browser.find_element(By.CSS_SELECTOR, f"#{chart} img")
        loaded = browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image)
        assert loaded and loaded > 300, f"{chart} did not load"
        assert image.size["width"] > 200 and image.is_displayed()
    headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
    assert headings == ["Training", "MT-Bench", "AlpacaEval", "Sample generations"]
    cells = [c.text for c in browser.find_elements(By.CSS_SELECTOR, "table td")]
    assert "dpo" in cells and "sft" in cells
    samples = browser.find_elements(By.CSS_SELECTOR, ".sample")
    assert len(samples) >= 2 and any("dpo <answer> one & two" in s.text for s in samples)
