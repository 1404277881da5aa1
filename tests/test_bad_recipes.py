"""Every recipe mistake a user can make is one line on stderr and exit status 2, before any model loads."""

from __future__ import annotations

import pytest
import transformers

from zephyr.cli import main

TRAINING = "model_name_or_path: smollm2-135m-instruct\noutput_dir: {out}\nuse_cpu: true\n"

CASES = {
    "mixer as a list": ("sft", TRAINING + "dataset_mixer: [a.jsonl]\n", "`dataset_mixer` must be a mapping"),
    "invalid utf-8": ("sft", b"output_dir: \xff\xfe\n", "not valid UTF-8"),
    "negative lr": ("dpo", TRAINING + "learning_rate: -1.0e-5\n", "`learning_rate` must be at least 0"),
    "nan lr": ("sft", TRAINING + "learning_rate: .nan\n", "`learning_rate` must be a finite number"),
    "batch 0": ("sft", TRAINING + "per_device_train_batch_size: 0\n", "`per_device_train_batch_size`"),
    "epochs 1e400": ("sft", TRAINING + "num_train_epochs: 1e400\n", "`num_train_epochs` must be a finite"),
    "steps 1e23": ("dpo", TRAINING + "max_steps: 1.0e+23\n", "`max_steps` must be"),
    "duplicate key": ("sft", TRAINING + "learning_rate: 1.0e-5\nlearning_rate: 2.0e-5\n", "given twice"),
    "scalar recipe": ("sft", "hello\n", "must be a mapping"),
    "pipeline as a list": ("run", "- sft\n- dpo\n", "must be a mapping"),
    "stage as a list": ("run", "run_dir: {out}\nsft: [a, b]\n", "section `sft` must be a mapping"),
    "processes: many": ("run", "run_dir: {out}\nprocesses: many\nsft: {{}}\n", "`processes` must be a whole"),
    "eval as a list": ("run", "run_dir: {out}\neval: [mt_bench]\n", "section `eval` must be a mapping"),
    "eval prefs: yes": ("run", "run_dir: {out}\neval: {{prefs: yes}}\n", "`eval.prefs` must be a mapping"),
    "teachers as a mapping": (
        "generate",
        "prompts: zephyr:demo_prompts\noutput: {out}/c.jsonl\nteachers: {{backend: smollm2-135m-instruct}}\n",
        "`teachers` must be a list",
    ),
    "unknown eval key": ("eval", "mt_bench: {{judge_base_ulr: x}}\n", "did you mean `judge_base_url`"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_recipe_is_one_line_before_any_model_loads(name, tmp_path, monkeypatch, capsys):
    command, text, message = CASES[name]

    def no_loading(*args, **kwargs):
        raise AssertionError("a bad recipe must fail before a model loads")

    # Patched on the class transformers hands out, looked up at call time: patching
    # `zephyr.models.load_model` would stay bound in modules first imported during this test.
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_loading)
    recipe = tmp_path / "recipe.yaml"
    if isinstance(text, bytes):
        recipe.write_bytes(text)
    else:
        recipe.write_text(text.format(out=tmp_path / "out"))
    args = [command, str(recipe)] + (["--dry-run"] if command == "run" else [])
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert message in err, err


def test_a_full_disk_is_one_line_that_says_work_is_kept(tmp_path, monkeypatch, capsys):
    import errno

    import zephyr.cli.generate

    def full(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "c.jsonl"))

    monkeypatch.setattr(zephyr.cli.generate, "generate", full)
    recipe = tmp_path / "g.yaml"
    recipe.write_text(
        f"prompts: zephyr:demo_prompts\noutput: {tmp_path}/c.jsonl\nteachers: [smollm2-135m-instruct]\n"
    )
    assert main(["generate", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no space left on the device writing" in err and "rerun" in err
