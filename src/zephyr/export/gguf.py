"""A Llama-architecture checkpoint as one GGUF file that llama.cpp (and Ollama, LM Studio...) runs.

What goes in, following the GGUF spec:

- metadata: ``general.*`` (name, file type), ``llama.*`` (context length, widths, heads, RMS epsilon,
  rope base and scaling), the tokenizer (``gguf_tokenizer``) and the chat template;
- tensors under llama.cpp's names (``blk.N.attn_q.weight``...), in the model's row-major layout. One
  layout differs: HF's Llama rotates the two halves of each head (``rotate_half`` pairs dims ``i`` and
  ``i + d/2``), llama.cpp's Llama rope rotates adjacent dims ``2i, 2i+1``, so the rows of the query
  and key projections are reordered per head (``interleave_rotary``);
- each tensor stored in the requested type, or in F16 where that type's blocks do not divide its rows
  (logged, tensor by tensor), and vectors (norms, biases) always in F32.

The file is written header first, then one tensor at a time (quantized just before it is written),
so memory stays at the model plus one tensor. Callers write into a staging directory (``zephyr.io``),
so a failure never leaves a half-written file where a reader would find it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from zephyr.errors import ConfigError, ModelError
from zephyr.export.config import OUTTYPES
from zephyr.export.gguf_tokenizer import gguf_vocab

log = logging.getLogger(__name__)

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}

# HF parameter names (inside model.layers.N.) -> llama.cpp's (inside blk.N.), and for the rotary
# projections the config field holding their head count.
LAYER_TENSORS = {
    "input_layernorm.weight": ("attn_norm.weight", None),
    "self_attn.q_proj.weight": ("attn_q.weight", "num_attention_heads"),
    "self_attn.q_proj.bias": ("attn_q.bias", "num_attention_heads"),
    "self_attn.k_proj.weight": ("attn_k.weight", "num_key_value_heads"),
    "self_attn.k_proj.bias": ("attn_k.bias", "num_key_value_heads"),
    "self_attn.v_proj.weight": ("attn_v.weight", None),
    "self_attn.v_proj.bias": ("attn_v.bias", None),
    "self_attn.o_proj.weight": ("attn_output.weight", None),
    "self_attn.o_proj.bias": ("attn_output.bias", None),
    "post_attention_layernorm.weight": ("ffn_norm.weight", None),
    "mlp.gate_proj.weight": ("ffn_gate.weight", None),
    "mlp.up_proj.weight": ("ffn_up.weight", None),
    "mlp.down_proj.weight": ("ffn_down.weight", None),
}
GLOBAL_TENSORS = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
# Kept at 8 bits in a q4_0 file: the embedding (and the output projection it often doubles as) is the
# tensor whose rounding every logit sees, which is why llama.cpp's quantizer spares it too.
Q4_KEPT_AT_Q8 = ("token_embd.weight", "output.weight")


def _qtypes():
    from gguf import GGMLQuantizationType as Q
    from gguf import LlamaFileType as F

    return {
        "f32": (Q.F32, F.ALL_F32),
        "f16": (Q.F16, F.MOSTLY_F16),
        "bf16": (Q.BF16, F.MOSTLY_BF16),
        "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0),
        "q4_0": (Q.Q4_0, F.MOSTLY_Q4_0),
    }


@dataclass
class PlannedTensor:
    name: str  # llama.cpp's name
    source: str  # the state-dict key it comes from ("" for computed tensors)
    shape: tuple[int, ...]
    qtype: object  # gguf.GGMLQuantizationType
    heads: int | None = None  # rows reordered for llama.cpp's rope, in this many heads
    values: np.ndarray | None = None  # computed tensors (rope factors)


@dataclass
class GGUFSummary:
    path: Path
    outtype: str
    tensors: int
    fallbacks: list[str] = field(default_factory=list)  # "name (shape): why" per tensor not in outtype
    types: dict[str, int] = field(default_factory=dict)  # GGML type name -> tensor count


def check_architecture(model) -> None:
    """Refuse, naming the architecture, anything llama.cpp's ``llama`` graph would not compute the same."""
    model_type = getattr(model.config, "model_type", "?")
    arch = type(model).__name__
    if ARCHITECTURES.get(model_type) != arch:
        raise ModelError(
            f"GGUF export supports Llama-architecture models (Llama, Mistral, SmolLM2: "
            f"{', '.join(sorted(set(ARCHITECTURES.values())))}); this model is `{model_type}` ({arch})"
        )


def check_outtype(outtype: str) -> None:
    if outtype not in OUTTYPES:
        raise ConfigError(f"`--outtype` must be one of {', '.join(OUTTYPES)}; got {outtype!r}", key="outtype")


def interleave_rotary(w: np.ndarray, heads: int) -> np.ndarray:
    """Reorder the rows of each head so HF's rope pair (i, i + d/2) sits at (2i, 2i + 1), as llama.cpp's
    Llama rope pairs them. ``w``: (heads * d, in) weights or (heads * d,) bias; same shape out."""
    d = w.shape[0] // heads
    # (heads, half, pair-member) <- (heads, pair-member, half): member 0 is row i, member 1 row i + d/2.
    return np.ascontiguousarray(w.reshape(heads, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def tensor_type(name: str, shape: tuple[int, ...], outtype: str):
    """``(qtype, why)``: the GGML type to store a tensor in, and why it is not ``outtype`` (or None)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    if len(shape) == 1:  # norms and biases: tiny, and llama.cpp's kernels read them in F32
        return GGMLQuantizationType.F32, None
    wanted, why = _qtypes()[outtype][0], None
    if outtype == "q4_0" and name in Q4_KEPT_AT_Q8:
        wanted, why = GGMLQuantizationType.Q8_0, "the embedding and output projection stay at 8 bits"
    block = GGML_QUANT_SIZES[wanted][0]
    if shape[-1] % block:
        why = f"rows of {shape[-1]} values are not a multiple of {wanted.name}'s {block}-value blocks"
        return GGMLQuantizationType.F16, why
    return wanted, why


def plan_tensors(model, outtype: str) -> tuple[list[PlannedTensor], list[str]]:
    """Every tensor the GGUF will hold, in order, and the fallbacks taken. Unknown weights are an error."""
    config = model.config
    state = model.state_dict()
    tied = getattr(config, "tie_word_embeddings", False)
    planned, unknown, fallbacks = [], [], []
    for key, tensor in state.items():
        name, heads = _gguf_name(key, config)
        if name is None:
            unknown.append(key)
            continue
        if not name:
            continue  # a cache llama.cpp recomputes
        if name == "output.weight" and tied:
            continue  # llama.cpp uses token_embd for the output when output.weight is absent
        shape = tuple(tensor.shape)
        qtype, why = tensor_type(name, shape, outtype)
        if why:
            fallbacks.append(f"{name} {list(shape)}: {why}; stored as {qtype.name}")
        planned.append(PlannedTensor(name, key, shape, qtype, heads))
    if unknown:
        raise ModelError(
            f"Cannot map {len(unknown)} weight(s) of this model to llama.cpp's Llama tensors: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
        )
    factors = _rope_factors(config)
    if factors is not None:
        from gguf import GGMLQuantizationType

        planned.append(
            PlannedTensor("rope_freqs.weight", "", factors.shape, GGMLQuantizationType.F32, None, factors)
        )
    return planned, fallbacks


def _gguf_name(key: str, config) -> tuple[str | None, int | None]:
    if key in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[key], None
    parts = key.split(".", 3)  # model, layers, N, rest
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in LAYER_TENSORS:
        name, heads_field = LAYER_TENSORS[parts[3]]
        heads = getattr(config, heads_field) if heads_field else None
        return f"blk.{parts[2]}.{name}", heads
    if key.endswith("rotary_emb.inv_freq"):  # a cache some old checkpoints saved; llama.cpp recomputes it
        return "", None
    return None, None


def write_gguf(model, tokenizer, path: Path, outtype: str, *, name: str) -> GGUFSummary:
    """Write ``model`` + ``tokenizer`` (and its chat template) to the GGUF file ``path``."""
    import gguf

    check_outtype(outtype)
    check_architecture(model)
    planned, fallbacks = plan_tensors(model, outtype)
    for line in fallbacks:
        log.warning("GGUF %s fallback: %s", outtype, line)
    vocab = gguf_vocab(tokenizer, model.get_input_embeddings().weight.shape[0])
    writer = gguf.GGUFWriter(path, "llama")
    _add_model_metadata(writer, model.config, name, outtype, len(vocab.tokens))
    vocab.write(writer)
    if isinstance(tokenizer.chat_template, str) and tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    for t in planned:
        nbytes = int(np.prod(gguf.quant_shape_to_byte_shape(t.shape, t.qtype)))
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes, raw_dtype=t.qtype)
    state = model.state_dict()
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in planned:
            writer.write_tensor_data(_stored(t, state))
    finally:
        writer.close()
    types: dict[str, int] = {}
    for t in planned:
        types[t.qtype.name] = types.get(t.qtype.name, 0) + 1
    return GGUFSummary(path=path, outtype=outtype, tensors=len(planned), fallbacks=fallbacks, types=types)


def _stored(t: PlannedTensor, state: dict) -> np.ndarray:
    """One tensor's bytes as the file stores them: f32 on the CPU, rope-reordered, then quantized."""
    from gguf.quants import quantize

    if t.values is not None:
        data = t.values
    else:
        data = state[t.source].detach().to(device="cpu", dtype=torch.float32).numpy()
    if t.heads:
        data = interleave_rotary(data, t.heads)
    return quantize(np.ascontiguousarray(data, dtype=np.float32), t.qtype)


def _add_model_metadata(writer, config, name: str, outtype: str, vocab_size: int) -> None:
    import gguf

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_type("model")
    writer.add_name(name)
    writer.add_file_type(_qtypes()[outtype][1])
    if outtype in ("q8_0", "q4_0"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_vocab_size(vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(head_dim)
    if head_dim * heads != config.hidden_size:  # llama.cpp assumes hidden / heads unless told
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    rope = rope_parameters(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", 10000.0)))
    if rope.get("rope_type", "default") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    window = getattr(config, "sliding_window", None)
    if window and window < config.max_position_embeddings:
        log.warning(
            "The model was trained with a %d-token sliding window, which llama.cpp's Llama graph does not "
            "apply: keep contexts under %d tokens for identical results",
            window,
            window,
        )


def rope_parameters(config) -> dict:
    """The rope settings, from transformers 5's ``rope_parameters`` or the older theta + scaling fields."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = dict(getattr(config, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    params.setdefault("rope_type", params.pop("type", "default"))
    kind = params["rope_type"]
    if kind not in ("default", "linear", "llama3"):
        raise ModelError(
            f"Cannot export rope scaling `{kind}` to GGUF: zephyr writes default, linear and llama3 rope"
        )
    return params


def _rope_factors(config) -> np.ndarray | None:
    """Llama 3.1's per-frequency rope divisors (llama.cpp's ``rope_freqs`` tensor), or None."""
    if rope_parameters(config)["rope_type"] != "llama3":
        return None
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    # transformers computes the scaled inverse frequencies; llama.cpp divides the plain ones by a factor
    # per frequency, so that factor is their ratio.
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    heads = config.num_attention_heads
    dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    base = float(rope_parameters(config)["rope_theta"])
    plain = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    return (plain / scaled.double()).float().numpy()
