"""Preference accuracy: log-probs match a plain forward pass, rewards match DPO's definitions, the CLI runs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from support.models import make_tiny_model
from zephyr.cli import main
from zephyr.data import load_rows
from zephyr.evaluate.prefs import logp_metrics, reward_metrics, score_pairs
from zephyr.train.dpo_data import tokenize_preferences


@pytest.fixture
def pairs(zephyr_tokenizer):
    rows = load_rows("zephyr:demo_prefs", "preference").dataset.select(range(6))
    data, _, _ = tokenize_preferences(rows, zephyr_tokenizer, max_length=256, max_prompt_length=128)
    return data


def plain_logps(model, prompt_ids, completion_ids) -> float:
    """log p(completion | prompt) from an ordinary unpacked forward pass."""
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    targets = ids[0, 1:]
    picked = logp[torch.arange(len(targets)), targets]
    return picked[len(prompt_ids) - 1 :].sum().item()


def test_pair_logps_match_a_plain_forward_pass(pairs):
    model = make_tiny_model(seed=1).eval()
    scores = score_pairs(model, pairs, batch_size=4)
    for i in range(len(pairs)):
        row = pairs[i]
        assert scores.chosen[i].item() == pytest.approx(
            plain_logps(model, row["prompt_ids"], row["chosen_ids"]), abs=1e-3
        )
        assert scores.rejected[i].item() == pytest.approx(
            plain_logps(model, row["prompt_ids"], row["rejected_ids"]), abs=1e-3
        )
        assert scores.lengths[2 * i].item() == len(row["chosen_ids"])
    metrics = logp_metrics(scores)
    wins = (scores.chosen > scores.rejected).float()
    assert metrics["logps/accuracy"] == pytest.approx(wins.mean().item())
    per_token = scores.logps / scores.lengths
    assert metrics["logps/accuracy_per_token"] == pytest.approx(
        (per_token[0::2] > per_token[1::2]).float().mean().item()
    )
    assert metrics["n_pairs"] == 6
    assert model.config._attn_implementation != "zephyr_packed"  # the attention kernel is restored


def test_rewards_against_a_reference(pairs):
    policy, reference = make_tiny_model(seed=1), make_tiny_model(seed=2)
    p, r = score_pairs(policy, pairs), score_pairs(reference, pairs)
    metrics = reward_metrics(p, r, beta=0.1)
    chosen = 0.1 * (p.chosen - r.chosen)
    rejected = 0.1 * (p.rejected - r.rejected)
    assert metrics["rewards/chosen"] == pytest.approx(chosen.mean().item(), rel=1e-5)
    assert metrics["rewards/margins"] == pytest.approx((chosen - rejected).mean().item(), rel=1e-5)
    assert metrics["rewards/accuracies"] == pytest.approx((chosen > rejected).float().mean().item())
    expected_loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean().item()
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_a_model_against_itself_has_zero_reward_and_loss_ln2(pairs):
    model = make_tiny_model(seed=3)
    scores = score_pairs(model, pairs)
    metrics = reward_metrics(scores, scores, beta=0.1)
    assert metrics["rewards/margins"] == 0 and metrics["rewards/accuracies"] == 0  # ties count as wrong
    assert metrics["loss"] == pytest.approx(math.log(2))


def test_prefs_command(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "prefs"
    code = main(
        [
            "eval",
            "prefs",
            "--model",
            str(tiny_model_dir),
            "--ref-model",
            str(tiny_model_dir),
            "--data",
            "zephyr:demo_prefs",
            "--max-samples",
            "5",
            "--max-length",
            "256",
            "--max-prompt-length",
            "128",
            "--output-dir",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "rewards/accuracies: 0.0000" in printed and "logps/accuracy:" in printed
    result = json.loads(next(out.iterdir()).read_text())
    assert result["metrics"]["n_pairs"] == 5
    assert result["metrics"]["loss"] == pytest.approx(math.log(2), abs=1e-6)


def test_prefs_settings_are_checked(tiny_model_dir, capsys):
    assert main(["eval", "prefs", "--model", str(tiny_model_dir), "--data", "x.jsonl", "--beta", "0"]) == 2
    assert "`beta` must be positive" in capsys.readouterr().err
