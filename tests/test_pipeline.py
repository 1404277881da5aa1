"""`zephyr run`: planning, dry runs of every shipped recipe, skipping, redoing, resuming, processes."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from zephyr.errors import ConfigError
from zephyr.pipeline import run_pipeline
from zephyr.pipeline.keys import input_digests, is_within
from zephyr.pipeline.runner import read_stage_record

ROOT = Path(__file__).resolve().parents[1]


def _training(extra: dict | None = None) -> dict:
    return {
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "learning_rate": 1e-3,
        "train_sampling_strategy": "sequential",
        "seed": 3,
        **(extra or {}),
    }


def _recipe(tmp_path: Path, model_dir, **top) -> Path:
    recipe = {
        "run_dir": str(tmp_path / "run"),
        "sft": {
            "model_name_or_path": str(model_dir),
            "dataset_mixer": {"zephyr:demo_sft": 1.0},
            "dataset_splits": ["train"],
            **_training(),
        },
        "dpo": {
            "dataset_mixer": {"zephyr:demo_prefs": 1.0},
            "dataset_splits": ["train"],
            "max_train_samples": 8,
            "precompute_ref_log_probs": True,
            "ref_cache_dir": str(tmp_path / "refcache"),
            **_training(),
        },
        **top,
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def shipped_pipeline_recipes() -> list[str]:
    return sorted(glob.glob(str(ROOT / "recipes" / "**" / "pipeline*.yaml"), recursive=True))


@pytest.mark.parametrize("recipe", shipped_pipeline_recipes() or ["none"])
def test_every_shipped_pipeline_recipe_dry_runs(recipe, tmp_path):
    if recipe == "none":
        pytest.skip("no pipeline recipes shipped")
    if "../shared" in Path(recipe).read_text() and not (ROOT.parent / "shared" / "data").is_dir():
        pytest.skip("the recipe reads ../shared/data, which is absent")
    # Hub ids are reported as not checkable offline; everything else must validate.
    summary = run_pipeline(recipe, dry_run=True, overrides={"run_dir": str(tmp_path / "run")})
    assert summary and all(info["state"] in ("would run", "up to date") for info in summary.values())


def shipped_stage_recipes() -> list[str]:
    every = glob.glob(str(ROOT / "recipes" / "**" / "*.yaml"), recursive=True)
    return sorted(p for p in every if "pipeline" not in Path(p).name and "/accelerate/" not in p)


@pytest.mark.parametrize("recipe", shipped_stage_recipes())
def test_every_shipped_stage_recipe_validates(recipe):
    """Each single-stage recipe parses with its command's settings (stage = its folder or file name)."""
    from zephyr.pipeline.stages import STAGES
    from zephyr.pipeline.validate import VALIDATORS

    path = Path(recipe)
    stage = path.parent.name if path.parent.name in STAGES else path.stem
    assert stage in STAGES, f"cannot tell which stage {recipe} is for"
    # Paths under runs/ are what an earlier demo command produces.
    VALIDATORS[stage](yaml.safe_load(path.read_text()), ["runs/"])


def test_dry_run_loads_no_model_and_catches_bad_keys(tmp_path, tiny_model_dir, monkeypatch):
    import zephyr.models

    def boom(*a, **k):
        raise AssertionError("a dry run must not load a model")

    monkeypatch.setattr(zephyr.models, "load_model", boom)
    path = _recipe(tmp_path, tiny_model_dir)
    summary = run_pipeline(path, dry_run=True)
    assert [s for s in summary] == ["sft", "dpo"]
    assert summary["dpo"]["state"] == "would run"
    with pytest.raises(ConfigError, match="stage `sft`.*learnig_rate.*did you mean `learning_rate`"):
        run_pipeline(path, dry_run=True, overrides={"sft.learnig_rate": 1e-4})
    with pytest.raises(ConfigError, match="did you mean `sft`"):
        run_pipeline(path, dry_run=True, overrides={"stf": {}})
    with pytest.raises(ConfigError, match="not found"):
        run_pipeline(
            path, dry_run=True, overrides={"sft.dataset_mixer": {str(tmp_path / "missing.jsonl"): 1.0}}
        )


def test_unknown_key_is_reported_before_wiring(tmp_path):
    """A misspelt data key must not surface as the missing upstream the misspelling caused."""
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "sft": {"dataset_nmae": "x.jsonl"}}))
    with pytest.raises(
        ConfigError, match="stage `sft`: Unknown key `dataset_nmae`; did you mean `dataset_name`"
    ):
        run_pipeline(path, dry_run=True)
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "sft": {"dataset_name": "x.jsonl"}}))
    with pytest.raises(ConfigError, match="x.jsonl.*not found"):  # named data: nothing needed from binarize
        run_pipeline(path, dry_run=True)


def test_missing_upstream_is_a_clear_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "dpo": {"max_steps": 1}}))
    with pytest.raises(ConfigError, match="needs `model` from stage `sft`"):
        run_pipeline(path, dry_run=True)


def test_run_skips_finished_stages_and_redoes_changed_ones(tmp_path, tiny_model_dir):
    path = _recipe(tmp_path, tiny_model_dir)
    first = run_pipeline(path)
    assert first["sft"]["state"].startswith("ran") and first["dpo"]["state"].startswith("ran")
    run_dir = tmp_path / "run"
    sft_key = read_stage_record(run_dir / "sft")["key"]
    dpo_weights = load_file(run_dir / "dpo" / "model" / "model.safetensors")
    again = run_pipeline(path)
    assert again["sft"]["state"] == again["dpo"]["state"] == "skipped (up to date)"
    # A DPO-only change redoes DPO and leaves SFT alone.
    changed = run_pipeline(path, overrides={"dpo.learning_rate": 1e-4})
    assert changed["sft"]["state"] == "skipped (up to date)" and changed["dpo"]["state"].startswith("ran")
    assert read_stage_record(run_dir / "sft")["key"] == sft_key
    new_weights = load_file(run_dir / "dpo" / "model" / "model.safetensors")
    assert any(not (new_weights[k] == dpo_weights[k]).all() for k in dpo_weights)
    # An SFT change redoes SFT and, through its key, DPO downstream.
    both = run_pipeline(path, overrides={"sft.learning_rate": 2e-3, "dpo.learning_rate": 1e-4})
    assert both["sft"]["state"].startswith("ran") and both["dpo"]["state"].startswith("ran")
    only = run_pipeline(path, only="dpo", overrides={"sft.learning_rate": 2e-3, "dpo.learning_rate": 2e-4})
    assert only["sft"]["state"] == "not selected" and only["dpo"]["state"].startswith("ran")
    with pytest.raises(ConfigError, match="not in this recipe"):
        run_pipeline(path, start="eval")


def test_interrupted_training_stage_resumes(tmp_path, tiny_model_dir):
    path = _recipe(tmp_path, tiny_model_dir)
    run_pipeline(path, only="sft")
    stage = tmp_path / "run" / "sft"
    (stage / "stage.json").unlink()  # as if killed after training began but before it was recorded
    summary = run_pipeline(path, only="sft")
    assert summary["sft"]["state"].startswith("ran")
    resumed = yaml.safe_load((stage / "recipe.yaml").read_text())
    assert resumed["resume_from_checkpoint"] is True


def test_two_processes_match_one_for_dpo(tmp_path, tiny_model_dir):
    """The dpo stage under 2 CPU processes (gloo DDP, 1 pair each) equals 1 process with 2 pairs per step."""
    results = {}
    for processes, per_device in ((1, 2), (2, 1)):
        base = tmp_path / f"p{processes}"
        base.mkdir()
        recipe = {
            "run_dir": str(base / "run"),
            "processes": processes,
            "dpo": {
                "model_name_or_path": str(tiny_model_dir),
                "dataset_mixer": {"zephyr:demo_prefs": 1.0},
                "dataset_splits": ["train"],
                "max_train_samples": 8,
                "precompute_ref_log_probs": True,
                "ref_cache_dir": str(base / "cache"),
                "dataloader_drop_last": True,
                **_training({"per_device_train_batch_size": per_device, "max_steps": 3}),
            },
        }
        path = base / "pipeline.yaml"
        path.write_text(yaml.safe_dump(recipe))
        run_pipeline(path)
        out = base / "run" / "dpo" / "model"
        results[processes] = (
            json.loads((out / "all_results.json").read_text()),
            load_file(out / "model.safetensors"),
        )
    (m1, w1), (m2, w2) = results[1], results[2]
    # Only float summation order differs (gradients all-reduced over gloo). Trainer's `train_loss` is rank 0's
    # own average, so compare the metrics gathered over all processes.
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert m2[name] == pytest.approx(m1[name], rel=1e-4, abs=1e-6), name
    drift = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    assert drift < 1e-4, f"weights differ by up to {drift}"


def test_report_stage_plots_the_training_runs(tmp_path, tiny_model_dir):
    """Training stages that save no checkpoint still leave their log history for the report."""
    summary = run_pipeline(
        _recipe(tmp_path, tiny_model_dir, report={}),
        overrides={"sft.logging_steps": 1, "dpo.logging_steps": 1},
    )
    assert summary["report"]["state"].startswith("ran")
    page = (tmp_path / "run" / "report" / "index.html").read_text()
    for chart in (
        "chart-training-loss",
        "chart-training-rewards-margins",
        "chart-training-rewards-accuracies",
    ):
        assert f'id="{chart}"' in page
    assert (tmp_path / "run" / "report" / "training_loss.png").is_file()


def test_produced_upstream_compares_whole_path_components(tmp_path):
    """`runs/a/model2` is not inside `runs/a/model` (a bare prefix test said it was)."""
    assert is_within("runs/a/model/config.json", ["runs/a/model"])
    assert is_within("runs/a/model", ["runs/a/model/"])
    assert not is_within("runs/a/model2", ["runs/a/model"])
    assert not is_within("runs/a/model2/data.jsonl", ["runs/a/model"])
    data = tmp_path / "model2.jsonl"
    data.write_text("{}\n")
    # A user file next to an upstream output with the same prefix is still an input of its own.
    assert list(input_digests({"input": str(data)}, [str(tmp_path / "model2")])) == [str(data)]


def _generate_recipe(tmp_path: Path, prompts: Path, model_dir) -> Path:
    recipe = {
        "run_dir": str(tmp_path / "run"),
        "generate": {
            "prompts": str(prompts),
            "teachers": [
                {"backend": {"model": str(model_dir), "threads": 1}, "max_tokens": 4, "temperature": 0}
            ],
            "completions_per_prompt": 1,
            "progress": False,
        },
        "feedback": {
            "judge": {"model": str(model_dir), "threads": 1},
            "max_tokens": 4,
            "critique": False,
            "progress": False,
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_editing_a_local_prompts_file_reruns_generate_and_everything_downstream(tmp_path, tiny_model_dir):
    prompts = tmp_path / "prompts.jsonl"
    lines = [json.dumps({"prompt": f"Name a colour, number {i}."}) for i in range(3)]
    prompts.write_text("\n".join(lines) + "\n")
    path = _generate_recipe(tmp_path, prompts, tiny_model_dir)
    first = run_pipeline(path)
    assert first["generate"]["state"].startswith("ran") and first["feedback"]["state"].startswith("ran")
    unchanged = run_pipeline(path)
    assert unchanged["generate"]["state"] == unchanged["feedback"]["state"] == "skipped (up to date)"
    lines[1] = json.dumps({"prompt": "Name a fruit instead."})
    prompts.write_text("\n".join(lines) + "\n")
    edited = run_pipeline(path)
    assert edited["generate"]["state"].startswith("ran") and edited["feedback"]["state"].startswith("ran")
    rows = [
        json.loads(x) for x in (tmp_path / "run" / "generate" / "completions.jsonl").read_text().splitlines()
    ]
    assert "Name a fruit instead." in [r["prompt"] for r in rows]
    assert "Name a colour, number 1." not in [r["prompt"] for r in rows]
    assert run_pipeline(path)["generate"]["state"] == "skipped (up to date)"


def test_pipeline_runs_eval_and_report_through_their_commands(tmp_path, tiny_model_dir):
    """The eval and report entries run as `zephyr eval RECIPE` / `zephyr report RECIPE` subprocesses."""
    pairs = ROOT / "src" / "zephyr" / "resources" / "demo_prefs.jsonl"
    recipe = {
        "run_dir": str(tmp_path / "run"),
        "eval": {
            "prefs": {
                "model": str(tiny_model_dir),
                "data": str(pairs),
                "max_samples": 4,
                "batch_size": 2,
                "dtype": "fp32",
            }
        },
        "report": {"samples": 1},
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe))
    summary = run_pipeline(path)
    assert summary["eval"]["state"].startswith("ran") and summary["report"]["state"].startswith("ran")
    metrics = list((tmp_path / "run" / "eval" / "prefs").glob("*.json"))
    assert metrics, "prefs wrote no metrics"
    result = json.loads(metrics[0].read_text())
    assert result["metrics"]["n_pairs"] == 4 and 0.0 <= result["metrics"]["logps/accuracy"] <= 1.0
    page = Path(summary["report"]["outputs"]["html"])
    assert page.is_file() and "<html" in page.read_text().lower()
    assert run_pipeline(path)["eval"]["state"] == "skipped (up to date)"


def test_pipeline_export_stage_writes_a_gguf_of_the_trained_model(tmp_path, tiny_model_dir):
    """The export stage runs `zephyr export recipe.yaml` on the last trained model (here sft's)."""
    path = _recipe(tmp_path, tiny_model_dir)
    recipe = yaml.safe_load(path.read_text())
    del recipe["dpo"]
    recipe["export"] = {"format": "gguf", "outtype": "f16"}
    path.write_text(yaml.safe_dump(recipe))
    assert run_pipeline(path, dry_run=True)["export"]["state"] == "would run"
    summary = run_pipeline(path)
    assert summary["export"]["state"].startswith("ran")
    out = Path(summary["export"]["outputs"]["export"])
    assert (out / "model-f16.gguf").is_file() and (out / "Modelfile").is_file()
    stage = yaml.safe_load((tmp_path / "run" / "export" / "recipe.yaml").read_text())
    assert stage["model"] == summary["sft"]["outputs"]["model"]
    assert run_pipeline(path)["export"]["state"] == "skipped (up to date)"


def test_wired_sft_data_does_not_turn_packing_on(tmp_path):
    """Unset `packing` follows the handbook script of a recipe's data form; data the pipeline wires itself
    is not a handbook recipe, so its sft stage keeps packing off unless the section asks for it."""
    from zephyr.pipeline.runner import load_plan, prepare

    path = tmp_path / "p.yaml"
    sections = {"binarize": {"input": str(tmp_path / "rated.jsonl")}, "sft": {}}
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), **sections}))
    wired = {stage.spec.name: stage.settings for stage in prepare(load_plan(path))}
    assert wired["sft"]["packing"] is False and "dataset_mixer" in wired["sft"]
    sections["sft"] = {"packing": True}
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), **sections}))
    assert {s.spec.name: s.settings for s in prepare(load_plan(path))}["sft"]["packing"] is True
