"""One writer per output: the output lock (a second holder fails at once naming the first's PID, a dead
holder's lock is taken over), and stage processes that never outlive the `zephyr run` that started them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support.processes import is_gone, sigint_as_usual, start_paused, wait_gone
from zephyr.io import OutputLocked, lock_path, output_lock

HOLD = """
import sys, time
from zephyr.io import output_lock
with output_lock(sys.argv[1], "zephyr eval mt-bench"):
    print("held", flush=True)
    time.sleep(120)
"""


def test_a_second_holder_fails_at_once_naming_the_first(tmp_path):
    target = tmp_path / "mt_bench"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            OutputLocked, match=rf"mt_bench is in use by zephyr eval mt-bench \(PID {holder.pid}\)"
        ):
            with output_lock(target, "zephyr eval mt-bench"):
                pass
    finally:
        holder.kill()
        holder.wait()
    # The kernel dropped the dead holder's flock: the output is free again, with a note about the PID.
    with output_lock(target, "zephyr eval mt-bench") as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
        # Even within one process a second lock on the same output is refused.
        with pytest.raises(OutputLocked, match=f"PID {os.getpid()}"), output_lock(target, "again"):
            pass
    assert path.read_text() == ""  # released cleanly: nothing stale left


def test_a_stale_lock_from_a_dead_process_is_taken_over_with_a_note(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "out"
    target.mkdir()
    lock_path(target).write_text(json.dumps({"pid": dead.pid, "what": "zephyr sft"}))
    caplog.set_level("WARNING")
    with output_lock(target, "zephyr sft"):
        pass
    assert f"taking over the lock of PID {dead.pid}, which is no longer running" in caplog.text


def test_eval_refuses_an_output_dir_in_use(tmp_path):
    from zephyr.evaluate import benchmarks
    from zephyr.evaluate.settings import AlpacaSettings, MTBenchSettings, PrefsSettings

    out = str(tmp_path / "eval")
    with output_lock(out, "zephyr eval mt-bench"):
        # Refused before any model or judge is opened: two runs would each make every judgment.
        with pytest.raises(OutputLocked, match=f"PID {os.getpid()}"):
            benchmarks.mt_bench(MTBenchSettings(model="m", judge="j", output_dir=out))
        with pytest.raises(OutputLocked):
            benchmarks.alpaca(AlpacaSettings(model="m", judge="j", output_dir=out))
        with pytest.raises(OutputLocked):
            benchmarks.prefs(PrefsSettings(model="m", data="d.jsonl", output_dir=out))


# ---- stage processes ---------------------------------------------------------------------------------

MIDDLE = """
import sys
from zephyr.pipeline.runner import run_child
try:
    sys.exit(run_child([sys.executable, "-c", "import os, time; print(os.getpid(), flush=True); time.sleep(120)"]))
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize(
    ("sig", "status"), [(signal.SIGKILL, -9), (signal.SIGTERM, 143), (signal.SIGINT, 130)]
)
def test_a_stage_child_never_outlives_its_pipeline(sig, status):
    middle = subprocess.Popen(
        [sys.executable, "-c", MIDDLE], stdout=subprocess.PIPE, text=True, preexec_fn=sigint_as_usual
    )
    child = int(middle.stdout.readline())
    assert os.getpgid(child) == child  # its own process group: the pipeline can stop all of it at once
    middle.send_signal(sig)
    assert middle.wait(30) == status
    assert wait_gone(child), f"the stage process outlived a pipeline stopped with {sig.name}"


def _pipeline(tmp_path: Path, model_dir) -> Path:
    recipe = {
        "run_dir": str(tmp_path / "run"),
        "sft": {
            "model_name_or_path": str(model_dir),
            "dataset_mixer": {"zephyr:demo_sft": 1.0},
            "dataset_splits": ["train"],
            "max_train_samples": 8,
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "save_strategy": "steps",
            "save_steps": 1,
            "report_to": "none",
            "use_cpu": True,
            "seed": 3,
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_killed_pipeline_takes_its_stage_along_and_runs_never_overlap(tmp_path, tiny_model_dir, capsys):
    from zephyr.cli import main
    from zephyr.pipeline import run_pipeline

    path = _pipeline(tmp_path, tiny_model_dir)
    pipeline, stage = start_paused(["run", str(path)], "checkpoint", tmp_path / "run.log")
    try:
        assert stage != pipeline.pid
        # A second `zephyr run` on the run dir and a hand-run `zephyr sft` on the stage's output both
        # fail at once, naming who holds it.
        with pytest.raises(OutputLocked, match=rf"zephyr run \(PID {pipeline.pid}\)"):
            run_pipeline(path)
        assert main(["sft", str(tmp_path / "run" / "sft" / "recipe.yaml")]) == 2
        assert f"in use by zephyr sft (PID {stage})" in capsys.readouterr().err
        pipeline.send_signal(signal.SIGKILL)
        pipeline.wait(30)
        assert wait_gone(stage), "the sft stage kept running after its pipeline was killed"
    finally:
        pipeline.kill()
        if not is_gone(stage):
            os.kill(stage, signal.SIGKILL)
    summary = run_pipeline(path)  # the rerun resumes alone and ends at max_steps, not past it
    assert summary["sft"]["state"].startswith("ran")
    state = json.loads((tmp_path / "run" / "sft" / "model" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
