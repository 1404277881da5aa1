"""`zephyr export --format gguf`: the GGUF loads back with transformers' GGUF loader and computes the source
model's logits (exactly at f32, within the rounding of each type otherwise); it carries llama.cpp's tensor
names and rope layout, the tokenizer (byte-level BPE and SentencePiece) and the chat template; bad input
fails clearly and leaves nothing half-written.

Tolerances. Logit errors are measured as rms(gguf - source) / std(source): one number per export that
does not depend on how large a model's logits are. Rounding one weight to a type has an rms relative
error EPS (uniform rounding: step / sqrt(12)): f16 keeps 11 significant bits (step 2^-10 of the value),
bf16 8 (2^-7); q8_0 rounds to 1/127 of its 32-value block's absolute maximum, q4_0 to 1/8 of it, and that
maximum is ~2.2 sigma for Gaussian weights. A two-layer model's logits pass each weight error through a
handful of matmuls, so we allow 4 x EPS (measured on the tiny model: 1.2-2 x EPS); the 30-layer embedded
model compounds them through 30 blocks, so its slow test allows 10 x EPS (measured: 2-5 x EPS).
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import torch

from support.gguf_models import make_llama, make_spm_tokenizer, save_checkpoint
from zephyr.errors import ConfigError, ModelError

EPS = {
    "f16": 2**-10 / math.sqrt(12),
    "bf16": 2**-7 / math.sqrt(12),
    "q8_0": 2.2 / 127 / math.sqrt(12),
    "q4_0": 2.2 / 8 / math.sqrt(12),
}
TEXTS = ["Hello there, how are you?", "The capital of France is Paris.\nIt has 2148000 people.", "café ☕ ok"]


def export(spec, out, outtype="f32", **kwargs):
    from zephyr.export import export_gguf

    return export_gguf(str(spec), out, outtype=outtype, **kwargs)


def load_back(result):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        result.output, gguf_file=result.gguf.name, dtype=torch.float32
    )
    return model.eval()


def logits(model, tokenizer, texts=TEXTS) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(tokenizer(t, return_tensors="pt").input_ids).logits[0] for t in texts]


def rms_relative(got: list[torch.Tensor], want: list[torch.Tensor]) -> float:
    diff = torch.cat([(g - w).flatten() for g, w in zip(got, want, strict=True)])
    return (diff.pow(2).mean().sqrt() / torch.cat([w.flatten() for w in want]).std()).item()


def read_fields(path) -> dict:
    import gguf

    reader = gguf.GGUFReader(path)
    fields = {}
    for key, f in reader.fields.items():
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type"):
            fields[key] = f.contents()
        elif key != "tokenizer.ggml.scores":
            fields[key] = f.contents()
    fields["_tensors"] = {
        t.name: (t.tensor_type.name, tuple(int(d) for d in t.shape)) for t in reader.tensors
    }
    if "tokenizer.ggml.scores" in reader.fields:
        fields["tokenizer.ggml.scores"] = reader.fields["tokenizer.ggml.scores"].contents()
    return fields


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The shared tiny checkpoint (byte-level BPE tokenizer), its model and tokenizer, and their logits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tiny_model_dir, tokenizer, logits(model, tokenizer)


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("outtype", ["f32", "f16", "bf16", "q8_0", "q4_0"])
def test_round_trip_logits_match_within_each_types_rounding(tiny, tmp_path, outtype):
    spec, tokenizer, want = tiny
    result = export(spec, tmp_path / "gguf", outtype)
    assert result.gguf.is_file() and result.gguf.name == f"model-{outtype}.gguf"
    got = logits(load_back(result), tokenizer)
    if outtype == "f32":
        assert max((g - w).abs().max().item() for g, w in zip(got, want, strict=True)) <= 1e-4
    else:
        assert rms_relative(got, want) <= 4 * EPS[outtype]
        # The rounding is real: each type stores the weights in fewer bits than f32.
        assert rms_relative(got, want) > 0
    assert (
        all(torch.equal(g.argmax(-1), w.argmax(-1)) for g, w in zip(got, want, strict=True))
        or outtype == "q4_0"
    )


def test_untied_output_and_wide_heads_round_trip(tokenizer_dir, tmp_path):
    """A separate output projection (`output.weight`) and head_dim != hidden / heads (key_length)."""
    from transformers import AutoTokenizer

    model = make_llama(49152, hidden=64, tie=False, head_dim=32).eval()
    spec = save_checkpoint(model, tokenizer_dir, tmp_path / "ckpt")
    result = export(spec, tmp_path / "gguf", "q4_0")
    fields = read_fields(result.gguf)
    assert fields["llama.attention.key_length"] == 32 and fields["llama.rope.dimension_count"] == 32
    # q4_0 keeps the embedding and output projection at 8 bits (every logit sees their rounding).
    assert fields["_tensors"]["output.weight"][0] == "Q8_0"
    assert fields["_tensors"]["token_embd.weight"][0] == "Q8_0"
    assert fields["_tensors"]["blk.0.attn_q.weight"][0] == "Q4_0"
    assert sorted(line.split(" ")[0] for line in result.fallbacks) == ["output.weight", "token_embd.weight"]
    tokenizer = AutoTokenizer.from_pretrained(spec)
    assert rms_relative(logits(load_back(result), tokenizer), logits(model, tokenizer)) <= 4 * EPS["q4_0"]


def test_mistral_exports_as_llama(tokenizer_dir, tmp_path, caplog):
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        sliding_window=256,
    )
    model = MistralForCausalLM(config).eval()
    # (not named just "mistral": transformers then maps the file to a `mistral` type that gguf-py lacks)
    spec = save_checkpoint(model, tokenizer_dir, tmp_path / "tiny-mistral")
    with caplog.at_level("WARNING", logger="zephyr.export.gguf"):
        result = export(spec, tmp_path / "gguf")
    assert "256-token sliding window" in caplog.text  # llama.cpp's Llama graph attends to the whole context
    assert read_fields(result.gguf)["general.architecture"] == "llama"
    tokenizer = AutoTokenizer.from_pretrained(spec)
    got, want = logits(load_back(result), tokenizer), logits(model, tokenizer)
    assert max((g - w).abs().max().item() for g, w in zip(got, want, strict=True)) <= 1e-4


def test_rotary_rows_are_reordered_for_llama_cpps_rope():
    """HF's rope on W x equals llama.cpp's (adjacent pairs) on the reordered W x, up to that reordering."""
    from zephyr.export.gguf import interleave_rotary

    heads, d, pos = 3, 8, 5
    w = np.random.default_rng(0).standard_normal((heads * d, 16)).astype(np.float32)
    x = np.random.default_rng(1).standard_normal(16).astype(np.float32)
    angle = pos * 10000.0 ** (-np.arange(0, d, 2) / d)
    cos, sin = np.cos(angle), np.sin(angle)

    def hf_rope(q):  # rotate_half: dim i pairs with i + d/2
        a, b = q[: d // 2], q[d // 2 :]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin])

    def llama_cpp_rope(q):  # GGML_ROPE_TYPE_NORM: dim 2i pairs with 2i + 1
        a, b = q[0::2], q[1::2]
        out = np.empty_like(q)
        out[0::2], out[1::2] = a * cos - b * sin, b * cos + a * sin
        return out

    reordered = interleave_rotary(w, heads)
    for h in range(heads):
        want = hf_rope((w @ x)[h * d : (h + 1) * d])
        got = llama_cpp_rope((reordered @ x)[h * d : (h + 1) * d])
        np.testing.assert_allclose(interleave_rotary(want[:, None], 1)[:, 0], got, rtol=1e-5, atol=1e-5)


def test_lora_adapter_is_merged_first(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj"], init_lora_weights=False
    )
    peft_model = get_peft_model(base, config).eval()
    peft_model.save_pretrained(tmp_path / "adapter")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    want = logits(peft_model, tokenizer)
    got = logits(load_back(export(tmp_path / "adapter", tmp_path / "gguf")), tokenizer)
    assert max((g - w).abs().max().item() for g, w in zip(got, want, strict=True)) <= 1e-4


def test_bf16_checkpoint_is_loaded_in_bf16_and_exported_exactly(tokenizer_dir, tmp_path, monkeypatch):
    """A full model is not widened to f32 in memory (a 7B bf16 model would take 28 GB); each tensor is,
    as it is written, so an f32 export holds exactly the bf16 weights."""
    import zephyr.export.merge as merge

    source = save_checkpoint(make_llama(49152).to(torch.bfloat16), tokenizer_dir, tmp_path / "bf16")
    loaded_dtypes = []
    original = merge._load_base
    monkeypatch.setattr(
        merge, "_load_base", lambda spec, dtype: loaded_dtypes.append(dtype) or original(spec, dtype)
    )
    back = load_back(export(source, tmp_path / "gguf"))
    assert loaded_dtypes == ["auto"]
    from transformers import AutoModelForCausalLM

    want = AutoModelForCausalLM.from_pretrained(source, dtype=torch.bfloat16).state_dict()
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, want[name].float()), name


def test_a_run_stage_directory_exports_its_model(tiny_model_dir, tmp_path):
    shutil.copytree(tiny_model_dir, tmp_path / "run" / "dpo" / "model")
    result = export(tmp_path / "run" / "dpo", tmp_path / "gguf", "f16")
    assert result.gguf.is_file() and read_fields(result.gguf)["general.name"] == "dpo"


# --------------------------------------------------------------------------- metadata, tokenizer, template


def test_metadata_tokenizer_and_zephyr_template(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from zephyr.chat import ZEPHYR_TEMPLATE
    from zephyr.models import load_tokenizer

    result = export(tiny_model_dir, tmp_path / "gguf", "q8_0", chat_template="zephyr")
    f = read_fields(result.gguf)
    assert f["general.architecture"] == "llama" and f["general.file_type"] == 7  # MOSTLY_Q8_0
    assert (f["llama.context_length"], f["llama.embedding_length"], f["llama.block_count"]) == (2048, 64, 2)
    assert (f["llama.attention.head_count"], f["llama.attention.head_count_kv"]) == (4, 2)
    assert f["llama.rope.dimension_count"] == 16 and f["llama.rope.freq_base"] == pytest.approx(10000.0)
    assert f["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert "output.weight" not in f["_tensors"], "tied embeddings: llama.cpp reuses token_embd"
    assert f["_tensors"]["blk.1.ffn_down.weight"] == ("Q8_0", (128, 64))
    assert f["_tensors"]["blk.1.attn_norm.weight"][0] == "F32"

    hf = load_tokenizer(str(tiny_model_dir), chat_template="zephyr")
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "gpt-2"
    assert len(f["tokenizer.ggml.tokens"]) == 49152 and f["llama.vocab_size"] == 49152
    assert f["tokenizer.ggml.tokens"][:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert f["tokenizer.ggml.token_type"][:3] == [3, 3, 3] and f["tokenizer.ggml.token_type"][1000] == 1
    assert len(f["tokenizer.ggml.merges"]) == 48900 and f["tokenizer.ggml.merges"][0] == "Ġ t"
    ids = (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)
    assert (
        f["tokenizer.ggml.bos_token_id"],
        f["tokenizer.ggml.eos_token_id"],
        f["tokenizer.ggml.padding_token_id"],
    ) == ids
    assert f["tokenizer.ggml.add_bos_token"] is False
    assert f["tokenizer.chat_template"] == ZEPHYR_TEMPLATE

    back = AutoTokenizer.from_pretrained(result.output, gguf_file=result.gguf.name)
    for text in TEXTS:
        assert back(text, add_special_tokens=False).input_ids == hf(text, add_special_tokens=False).input_ids
    messages = [{"role": "user", "content": "Hi"}]
    assert back.apply_chat_template(messages, tokenize=False) == hf.apply_chat_template(
        messages, tokenize=False
    )
    readme = (result.output / "README.md").read_text()
    assert f"llama-server -m {result.gguf}" in readme and "ollama create" in readme


def test_sentencepiece_tokenizer_round_trip(tmp_path):
    """A Llama-2/Mistral-shaped tokenizer: `llama` model, unknown + control + byte token types, scores in
    merge order, BOS added."""
    from transformers import AutoTokenizer

    tok_dir = make_spm_tokenizer(tmp_path / "tok")
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    model = make_llama(len(tokenizer)).eval()
    result = export(save_checkpoint(model, tok_dir, tmp_path / "ckpt"), tmp_path / "gguf")
    f = read_fields(result.gguf)
    assert f["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.pre" not in f
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.add_space_prefix"] is True
    types, tokens, scores = (
        f["tokenizer.ggml.token_type"],
        f["tokenizer.ggml.tokens"],
        f["tokenizer.ggml.scores"],
    )
    assert types[:3] == [2, 3, 3] and tokens[3] == "<0x00>" and set(types[3:259]) == {6}
    learned = scores[259:]
    assert all(a >= b for a, b in zip(learned, learned[1:], strict=False) if a < 0 and b < 0), (
        "scores follow merge order"
    )
    back = AutoTokenizer.from_pretrained(result.output, gguf_file=result.gguf.name)
    for text in TEXTS:
        assert back(text).input_ids == tokenizer(text).input_ids
    got = logits(load_back(result), tokenizer)
    assert max((g - w).abs().max().item() for g, w in zip(got, logits(model, tokenizer), strict=True)) <= 1e-4


# ------------------------------------------------------------------------------------------- bad input


def test_other_architectures_are_refused_by_name(tokenizer_dir, tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    spec = save_checkpoint(Qwen2ForCausalLM(config), tokenizer_dir, tmp_path / "qwen")
    with pytest.raises(ModelError, match=r"`qwen2` \(Qwen2ForCausalLM\)") as info:
        export(spec, tmp_path / "gguf")
    assert "Llama" in str(info.value)
    assert not (tmp_path / "gguf").exists()


def test_existing_output_dir_is_refused_and_kept(tiny_model_dir, tmp_path):
    out = tmp_path / "gguf"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        export(tiny_model_dir, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert export(tiny_model_dir, out, overwrite=True).gguf.is_file()
    assert not (out / "keep.txt").exists()


def test_unsupported_outtype_and_tokenizers_fail_clearly(tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="`--outtype` must be one of f32, f16, bf16, q8_0, q4_0"):
        export(tiny_model_dir, tmp_path / "a", "q5_k")
    from zephyr.export.gguf_tokenizer import byte_level_pre_name

    with pytest.raises(ModelError, match="matches none zephyr knows"):
        byte_level_pre_name({"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated"})
    with pytest.raises(ModelError, match="adds a prefix space"):
        byte_level_pre_name({"type": "ByteLevel", "add_prefix_space": True, "use_regex": True})


def test_wordpiece_tokenizer_is_refused(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from zephyr.export.gguf_tokenizer import gguf_vocab

    vocab = {"[UNK]": 0, "[CLS]": 1, "[SEP]": 2, "hello": 3}
    wp = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordPiece(vocab, unk_token="[UNK]")))
    with pytest.raises(ModelError, match="Cannot write a `WordPiece` tokenizer to GGUF"):
        gguf_vocab(wp, 4)


def test_quant_type_falls_back_per_tensor_and_says_which(tokenizer_dir, tmp_path, caplog):
    """Width 48: q8_0's 32-value blocks do not divide rows of 48, so those tensors are stored as f16."""
    from transformers import AutoTokenizer

    model = make_llama(49152, hidden=48).eval()
    spec = save_checkpoint(model, tokenizer_dir, tmp_path / "ckpt")
    with caplog.at_level("WARNING", logger="zephyr.export.gguf"):
        result = export(spec, tmp_path / "gguf", "q8_0")
    tensors = read_fields(result.gguf)["_tensors"]
    assert tensors["blk.0.attn_q.weight"][0] == "F16" and tensors["token_embd.weight"][0] == "F16"
    assert tensors["blk.0.ffn_down.weight"][0] == "Q8_0"  # rows of 96 values: two whole blocks
    assert any(line.startswith("blk.0.attn_q.weight [48, 48]: rows of 48") for line in result.fallbacks)
    assert "blk.0.ffn_down.weight" not in " ".join(result.fallbacks)
    assert "blk.0.attn_q.weight" in caplog.text and "stored as F16" in caplog.text
    assert "blk.0.attn_q.weight" in (result.output / "README.md").read_text()
    tokenizer = AutoTokenizer.from_pretrained(spec)
    assert rms_relative(logits(load_back(result), tokenizer), logits(model, tokenizer)) <= 4 * EPS["q8_0"]


def test_a_failure_while_writing_leaves_nothing_half_written(tiny_model_dir, tmp_path, monkeypatch):
    import gguf

    written = []

    def fail_after_three(self, tensor, *args, **kwargs):
        if len(written) == 3:
            raise OSError("disk full")
        written.append(tensor.nbytes)
        return real(self, tensor, *args, **kwargs)

    real = gguf.GGUFWriter.write_tensor_data
    monkeypatch.setattr(gguf.GGUFWriter, "write_tensor_data", fail_after_three)
    with pytest.raises(OSError, match="disk full"):
        export(tiny_model_dir, tmp_path / "gguf")
    assert len(written) == 3, "the failure came midway through the tensors"
    assert list(tmp_path.iterdir()) == [], "no output dir and no staging dir left behind"


def test_cli_gguf_format(tiny_model_dir, tmp_path, capsys):
    from zephyr.cli import export as cli_export
    from zephyr.cli import main
    from zephyr.export.gguf import OUTTYPES

    assert cli_export.OUTTYPES == OUTTYPES  # the CLI's copy (kept for a torch-free --help) is current

    out = tmp_path / "gguf"
    assert main(["export", str(tiny_model_dir), "--format", "gguf", "--outtype", "q8_0", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"GGUF saved to {out / 'model-q8_0.gguf'}" in printed and "ollama create" in printed
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "model-q8_0.gguf"]
    assert main(["export", str(tiny_model_dir), "--format", "gguf", "-o", str(out)]) == 2
    with pytest.raises(SystemExit):  # argparse refuses a type outside --outtype's choices
        main(["export", str(tiny_model_dir), "--format", "gguf", "--outtype", "q3", "-o", str(out)])
