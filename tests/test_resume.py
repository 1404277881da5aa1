"""Resume after a kill or a full disk at any moment of training: torn checkpoints are skipped, a finished
run resumed trains nothing, and every interrupted run ends with the uninterrupted run's exact weights."""

from __future__ import annotations

import errno
import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from support.processes import start_paused
from zephyr.cli import main

MAX_STEPS = 4


def _conversations(path: Path, n: int = 16) -> Path:
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} times two?"},
                {"role": "assistant", "content": f"{i} times two is {2 * i}."},
            ]
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sft_args(model_dir, data, out, *extra) -> list[str]:
    return [
        "sft",
        f"--model_name_or_path={model_dir}",
        f"--dataset_mixer={{{data}: 1.0}}",
        "--dataset_splits=[train]",
        f"--output_dir={out}",
        "--per_device_train_batch_size=2",
        "--learning_rate=3e-3",
        "--logging_steps=1",
        "--report_to=none",
        "--seed=1",
        "--use_cpu=true",
        f"--max_steps={MAX_STEPS}",
        "--save_strategy=steps",
        "--save_steps=2",
        *extra,
    ]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run in this module on one thread, in this process and in the killed ones: bit-identical
    weights need the same float summation order, and other test modules leave torch's count as they like."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def baseline(tiny_model_dir, tmp_path_factory):
    """One uninterrupted run: (data file, output dir, final weights)."""
    root = tmp_path_factory.mktemp("baseline")
    data = _conversations(root / "conv.jsonl")
    assert main(sft_args(tiny_model_dir, data, root / "out")) == 0
    return data, root / "out", load_file(root / "out" / "model.safetensors")


def assert_same_weights(out: Path, expected: dict) -> None:
    got = load_file(out / "model.safetensors")
    assert got.keys() == expected.keys()
    for name in expected:  # CPU fp32, same steps on the same batches: bit for bit
        assert torch.equal(got[name], expected[name]), name


def steps_in(out: Path) -> int:
    return json.loads((out / "trainer_state.json").read_text())["global_step"]


def resume(model_dir, data, out) -> None:
    assert main(sft_args(model_dir, data, out, "--resume_from_checkpoint=true")) == 0


def test_resume_skips_torn_checkpoints_and_ends_with_the_same_weights(
    tiny_model_dir, baseline, tmp_path, caplog
):
    data, full, weights = baseline
    out = tmp_path / "out"
    shutil.copytree(full, out)
    # Killed while saving checkpoint-4 (no trainer state yet); then the final save never happened.
    (out / "checkpoint-4" / "trainer_state.json").unlink()
    for name in ("model.safetensors", "README.md", "trainer_state.json"):
        (out / name).unlink()
    # And an older zephyr's torn checkpoint: weights cut short by a full disk.
    torn = out / "checkpoint-3"
    shutil.copytree(out / "checkpoint-2", torn)
    with open(torn / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    caplog.set_level("INFO")
    resume(tiny_model_dir, data, out)
    log = caplog.text
    assert "Skipping" in log and "checkpoint-4: no trainer_state.json" in log
    assert "checkpoint-3: model.safetensors is cut short" in log
    assert "Resuming from" in log and "checkpoint-2, the newest complete checkpoint" in log
    # Moved aside, not left to confuse a later resume or the checkpoint rotation.
    assert (out / ".incomplete-checkpoint-4").is_dir() and (out / ".incomplete-checkpoint-3").is_dir()
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert_same_weights(out, weights)
    assert steps_in(out) == MAX_STEPS


def test_a_finished_run_resumed_trains_nothing_and_completes_its_save(tiny_model_dir, baseline, tmp_path):
    data, full, weights = baseline
    out = tmp_path / "out"
    shutil.copytree(full, out)
    # Killed in the middle of the final save: a torn model file, no model card yet.
    with open(out / "model.safetensors", "r+b") as f:
        f.truncate(5000)
    (out / "README.md").unlink()
    resume(tiny_model_dir, data, out)
    assert_same_weights(out, weights)
    assert steps_in(out) == MAX_STEPS  # not MAX_STEPS + 1
    assert (out / "README.md").is_file() and (out / "tokenizer_config.json").is_file()
    before = json.loads((full / "all_results.json").read_text())["train_loss"]
    after = json.loads((out / "all_results.json").read_text())["train_loss"]
    assert after == pytest.approx(before, rel=1e-3)  # the whole run's loss, not 0 for "no step now"
    resume(tiny_model_dir, data, out)  # and again: still nothing to train
    assert_same_weights(out, weights)
    assert steps_in(out) == MAX_STEPS


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_nothing_torn(
    tiny_model_dir, baseline, tmp_path, monkeypatch, capsys
):
    from zephyr.train.trainer import ZephyrTrainer

    data, _, weights = baseline
    out = tmp_path / "out"
    real = ZephyrTrainer._save_optimizer_and_scheduler

    def full_disk(self, output_dir):
        if self.state.global_step == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir)

    monkeypatch.setattr(ZephyrTrainer, "_save_optimizer_and_scheduler", full_disk)
    assert main(sft_args(tiny_model_dir, data, out)) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("zephyr sft: error:")]
    assert len(errors) == 1 and "checkpoint-4" in errors[0] and "No space left on device" in errors[0]
    assert "Traceback" not in err
    assert [p.name for p in out.iterdir() if "checkpoint" in p.name] == ["checkpoint-2"]
    monkeypatch.setattr(ZephyrTrainer, "_save_optimizer_and_scheduler", real)
    resume(tiny_model_dir, data, out)
    assert_same_weights(out, weights)


# ---- the real CLI, killed with SIGKILL at a named moment -------------------------------------------


def kill_at(args: list[str], pause_at: str, log: Path) -> None:
    proc, _ = start_paused(args, pause_at, log)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


def test_sigkill_during_a_checkpoint_save_resumes_to_the_same_weights(tiny_model_dir, baseline, tmp_path):
    data, _, weights = baseline
    out = tmp_path / "out"
    kill_at(sft_args(tiny_model_dir, data, out), "checkpoint-4", tmp_path / "killed.log")
    assert not (out / "checkpoint-4").exists()  # only its staging dir, which no resume looks at
    assert (out / ".checkpoint-4.saving").is_dir() and (out / "checkpoint-2").is_dir()
    resume(tiny_model_dir, data, out)
    assert not (out / ".checkpoint-4.saving").exists()
    assert_same_weights(out, weights)
    assert steps_in(out) == MAX_STEPS


def test_sigkill_during_the_final_save_resumes_to_the_same_weights(tiny_model_dir, baseline, tmp_path):
    data, _, weights = baseline
    out = tmp_path / "out"
    kill_at(sft_args(tiny_model_dir, data, out), "final-save", tmp_path / "killed.log")
    # Nothing torn in output_dir: the final weights were still in the staging dir.
    assert not (out / "model.safetensors").exists() and not (out / "README.md").exists()
    resume(tiny_model_dir, data, out)
    assert_same_weights(out, weights)
    assert steps_in(out) == MAX_STEPS
    assert (out / "README.md").is_file() and not (out / ".final.saving").exists()
