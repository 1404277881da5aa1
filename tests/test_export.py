"""`zephyr export`: a LoRA adapter merged into its base loads with plain transformers and computes the same
logits as base + adapter; the tokenizer and chat template travel with it; pushing fails clearly offline."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from zephyr.errors import ModelError

TEXT = "Hello there, how are you?"


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the tiny model with non-zero weights, and the logits base + adapter give."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False
    )
    model = get_peft_model(base, config).eval()
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    ids = AutoTokenizer.from_pretrained(tiny_model_dir)(TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits
        plain = model.get_base_model()
        with model.disable_adapter():
            base_logits = plain(ids).logits
    assert not torch.allclose(logits, base_logits, atol=1e-4), "the test adapter must change the model"
    return out, ids, logits


def load_plain(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def test_merged_checkpoint_loads_without_peft_and_matches(adapter, tmp_path):
    from zephyr.chat import ZEPHYR_TEMPLATE
    from zephyr.export import export_model

    adapter_dir, ids, expected = adapter
    out = export_model(str(adapter_dir), tmp_path / "merged", chat_template="zephyr")
    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert "adapter_config.json" not in files
    model, tokenizer = load_plain(out)
    assert not any("lora" in name for name in model.state_dict())
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, expected, atol=1e-4)
    assert tokenizer.chat_template == ZEPHYR_TEMPLATE
    assert not any(p.name.startswith(".merged-") for p in tmp_path.iterdir()), "temporary dir left behind"


def test_export_command_with_a_moved_base(adapter, tiny_model_dir, tmp_path):
    from zephyr.cli import main

    adapter_dir, ids, expected = adapter
    moved_base, moved_adapter = tmp_path / "base", tmp_path / "adapter"
    shutil.copytree(tiny_model_dir, moved_base)
    shutil.copytree(adapter_dir, moved_adapter)
    config = json.loads((moved_adapter / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved_adapter / "adapter_config.json").write_text(json.dumps(config))

    out = tmp_path / "out"
    assert main(["export", str(moved_adapter), "--base", str(moved_base), "--output", str(out)]) == 0
    model, tokenizer = load_plain(out)
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, expected, atol=1e-4)
    assert tokenizer.chat_template  # the tokenizer's own (ChatML-style) template is kept

    assert main(["export", str(moved_adapter), "--base", str(moved_base), "--output", str(out)]) == 2
    assert main(["export", str(moved_adapter), "--base", str(moved_base), "-o", str(out), "--overwrite"]) == 0


def test_plain_models_export_too_and_non_main_ranks_do_nothing(tiny_model_dir, tmp_path, monkeypatch):
    from zephyr.export import export_model

    out = export_model(str(tiny_model_dir), tmp_path / "plain")
    assert (out / "model.safetensors").is_file()
    monkeypatch.setenv("RANK", "1")
    assert not export_model(str(tiny_model_dir), tmp_path / "rank1").exists()


def test_push_to_hub_fails_clearly_when_offline(tiny_model_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    from zephyr.export import export_model, push_folder

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError, match="offline mode") as info:
        export_model(str(tiny_model_dir), tmp_path / "out", push_to_hub="someone/tiny")
    assert str(tmp_path / "out") in str(info.value)
    assert (tmp_path / "out" / "model.safetensors").is_file(), (
        "the checkpoint must be kept when the push fails"
    )

    # A hub that cannot be reached (a closed loopback port) is reported the same way, not as a traceback.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    with pytest.raises(ModelError, match="Could not push to the hub repo `someone/tiny`"):
        push_folder(tmp_path / "out", "someone/tiny")
