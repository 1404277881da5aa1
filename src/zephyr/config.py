"""Recipes: YAML files plus `--key=value` overrides, parsed into typed dataclasses.

The alignment-handbook's recipe keys parse as they are: TrainingArguments names, the handbook's
model/data keys, and the older names it used (see ``KEY_ALIASES``). An unknown key is an error that
suggests the closest valid key, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zephyr.errors import ConfigError

log = logging.getLogger(__name__)

# Old or alternative key names (handbook generations, TRL renames) -> the name we use.
KEY_ALIASES = {
    "evaluation_strategy": "eval_strategy",
    "max_seq_length": "max_length",
    "warmup_ratio": "warmup_steps",  # transformers 5: warmup_steps < 1 is a ratio of the total steps
    "preprocessing_num_workers": "dataset_num_proc",
    "model_name": "model_name_or_path",
    "ref_model": "ref_model_name_or_path",
}
# Keys the handbook recipes carry that have no meaning any more: accepted, noted, ignored.
IGNORED_KEYS = {
    "overwrite_output_dir": "transformers 5 removed it; an existing output_dir is reused (resume with resume_from_checkpoint)",
    "model_code_revision": "not needed",
    "hub_private_repo": None,
}


def _help(text: str, **kw) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class ModelArguments:
    """Which model to load and how (the handbook's ModelArguments keys)."""

    model_name_or_path: str = _help(
        "Model spec: a hub id, a local checkpoint dir, a .gguf file, or `smollm2-135m-instruct` (embedded).",
        default="smollm2-135m-instruct",
    )
    model_revision: str = _help("Hub revision (branch, tag or commit).", default="main")
    tokenizer_name_or_path: str | None = _help("Tokenizer spec if it differs from the model's.", default=None)
    torch_dtype: str = _help(
        "Weights dtype: auto, float32/fp32, bfloat16/bf16 or float16/fp16.", default="auto"
    )
    attn_implementation: str | None = _help(
        "Attention kernel: eager, sdpa, flex_attention or flash_attention_2. Default: transformers' choice.",
        default=None,
    )
    use_flash_attention_2: bool = _help(
        "Old handbook key: same as attn_implementation=flash_attention_2.", default=False
    )
    trust_remote_code: bool = _help("Allow custom modelling code from the hub.", default=False)
    use_peft: bool = _help("Train LoRA adapters instead of all weights.", default=False)
    lora_r: int = _help("LoRA rank.", default=16)
    lora_alpha: int = _help("LoRA scaling numerator (scale = alpha / r).", default=32)
    lora_dropout: float = _help("Dropout on the LoRA branch.", default=0.05)
    lora_target_modules: list[str] | None = _help(
        "Module names to adapt; default: every linear layer except the LM head.", default=None
    )
    lora_modules_to_save: list[str] | None = _help(
        "Modules trained in full beside the adapters.", default=None
    )
    load_in_4bit: bool = _help("Load weights in 4 bit (QLoRA; needs bitsandbytes and a GPU).", default=False)
    load_in_8bit: bool = _help("Load weights in 8 bit (needs bitsandbytes and a GPU).", default=False)
    bnb_4bit_quant_type: str = _help("4-bit quantization type: nf4 or fp4.", default="nf4")
    use_bnb_nested_quant: bool = _help("Double quantization of the 4-bit constants.", default=False)

    def __post_init__(self):
        if self.use_flash_attention_2 and not self.attn_implementation:
            self.attn_implementation = "flash_attention_2"
        if self.lora_r <= 0 or self.lora_alpha <= 0:
            raise ConfigError(
                f"`lora_r` and `lora_alpha` must be positive; got {self.lora_r} and {self.lora_alpha}"
            )
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"`lora_dropout` must be in [0, 1); got {self.lora_dropout}")
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise ConfigError(f"`bnb_4bit_quant_type` must be nf4 or fp4; got {self.bnb_4bit_quant_type!r}")

    def load_settings(self):
        from zephyr.models import LoadSettings

        return LoadSettings(
            dtype=self.torch_dtype,
            attn_implementation=self.attn_implementation,
            load_in_4bit=self.load_in_4bit,
            load_in_8bit=self.load_in_8bit,
            bnb_4bit_quant_type=self.bnb_4bit_quant_type,
            use_bnb_nested_quant=self.use_bnb_nested_quant,
            revision=self.model_revision,
            trust_remote_code=self.trust_remote_code,
        )


@dataclass
class DataArguments:
    """Which data to train on and how to turn it into tokens (the handbook's DataArguments keys)."""

    chat_template: str | None = _help(
        "`zephyr`, `chatml`, or Jinja source. Default: the model's own template, or Zephyr's if it has none.",
        default=None,
    )
    dataset_mixer: dict[str, float] | None = _help(
        "Old handbook mixing: {dataset id or file: fraction}. Takes the first int(fraction*len) rows of each "
        "train split (shuffled with seed 42); test splits are never subsampled.",
        default=None,
    )
    dataset_splits: list[str] = _help(
        "Splits to load for dataset_mixer; names containing `train` train, names containing `test` evaluate.",
        default_factory=lambda: ["train", "test"],
    )
    dataset_configs: list[str] | None = _help("Hub configs, one per dataset_mixer entry.", default=None)
    dataset_mixture: dict[str, Any] | None = _help(
        "New handbook mixing: {datasets: [{id, config, split, columns, weight}], seed, test_split_size}.",
        default=None,
    )
    dataset_num_proc: int | None = _help("Worker processes for tokenization.", default=None)
    auto_insert_empty_system_msg: bool = _help(
        "Prepend an empty system message to every conversation (the original handbook behaviour).",
        default=False,
    )
    train_on: str = _help(
        "Which tokens carry loss: `assistant` (replies and their EOS) or `all`.", default="assistant"
    )
    on_error: str = _help(
        "A malformed row: `raise` stops with a clear error, `skip` skips and counts it.", default="raise"
    )
    max_train_samples: int | None = _help("Keep only the first N training rows (smoke runs).", default=None)
    max_eval_samples: int | None = _help("Keep only the first N evaluation rows.", default=None)
    truncation_side: str | None = _help(
        "Old handbook key; conversations are always cut from the right.", default=None
    )

    def __post_init__(self):
        if self.train_on not in ("assistant", "all"):
            raise ConfigError(f"`train_on` must be `assistant` or `all`; got {self.train_on!r}")
        if self.on_error not in ("raise", "skip"):
            raise ConfigError(f"`on_error` must be `raise` or `skip`; got {self.on_error!r}")
        if self.dataset_mixer is not None and self.dataset_mixture is not None:
            raise ConfigError(
                "Set either `dataset_mixer` (old handbook form) or `dataset_mixture` (new form), not both"
            )
        for name, frac in (self.dataset_mixer or {}).items():
            if not isinstance(frac, (int, float)) or frac < 0:
                raise ConfigError(f"`dataset_mixer.{name}` must be a non-negative fraction; got {frac!r}")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _scalar_type(tp) -> type | None:
    """The scalar type behind Optional[X] / X | None, for coercing command-line strings."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar_type(args[0]) if len(args) == 1 else None
    return tp if tp in (bool, int, float, str) else None


def _admits_str(tp) -> bool:
    if tp is str:
        return True
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and str in typing.get_args(tp)


def _coerce(key: str, value: Any, tp) -> Any:
    """YAML reads `1e-5` as a string (YAML 1.1); turn such strings into the field's number type."""
    scalar = _scalar_type(tp)
    if value is False and scalar is not bool and _admits_str(tp) and bool not in typing.get_args(tp):
        return "no"  # YAML 1.1 reads `save_strategy: no` as False; `resume_from_checkpoint: true` stays True
    if value is None or scalar is None:
        return value
    if not isinstance(value, str):
        # A bool/int/float field must get that type (an int field accepts a whole float such as 1.0e3).
        ok = {
            bool: isinstance(value, bool),
            int: (isinstance(value, int) and not isinstance(value, bool))
            or (isinstance(value, float) and value.is_integer()),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
        }.get(scalar, True)
        if not ok:
            raise ConfigError(f"`{key}` must be a {scalar.__name__}; got {value!r}")
        return int(value) if scalar is int else value
    try:
        if scalar is bool:
            low = value.lower()
            if low in ("true", "yes", "1", "on"):
                return True
            if low in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if scalar in (int, float):
            return scalar(float(value)) if scalar is int and "e" in value.lower() else scalar(value)
    except ValueError:
        raise ConfigError(f"`{key}` must be a {scalar.__name__}; got {value!r}") from None
    return value


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """`--key=value` / `--key value` pairs; values are read as YAML (`--lora_target_modules=[q_proj,v_proj]`)."""
    out, i = {}, 0
    args = list(args)
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"Expected `--key=value`, got {arg!r}")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 < len(args) and not args[i + 1].startswith("--"):
                value, i = args[i + 1], i + 1
            else:
                value = "true"  # a bare flag
        out[key.replace("-", "_")] = yaml.safe_load(value) if value != "" else ""
        i += 1
    return out


def read_recipe(path: str | Path | None) -> dict[str, Any]:
    """A recipe file as a dict; a clear error for a missing file or bad YAML."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of keys to values, got {type(data).__name__}")
    return data


def parse_config(
    classes: Sequence[type], recipe: str | Path | None = None, overrides: Sequence[str] | dict = ()
):
    """Build one instance of each dataclass from a recipe file and overrides (overrides win).

    Every key must belong to exactly one of ``classes`` (after aliasing); an unknown key raises a
    ConfigError that suggests the nearest valid key.
    """
    raw = read_recipe(recipe)
    raw.update(overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    owners: dict[str, tuple[type, Any]] = {}
    for cls in classes:
        for name, tp in _field_types(cls).items():
            owners.setdefault(name, (cls, tp))
    values: dict[type, dict[str, Any]] = {cls: {} for cls in classes}
    where = f" in {recipe}" if recipe else ""
    for key, value in raw.items():
        name = KEY_ALIASES.get(key, key)
        if key in IGNORED_KEYS:
            if IGNORED_KEYS[key]:
                log.info("Ignoring `%s`: %s", key, IGNORED_KEYS[key])
            continue
        if name not in owners:
            close = difflib.get_close_matches(key, list(owners) + list(KEY_ALIASES), n=1, cutoff=0.6)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise ConfigError(f"Unknown key `{key}`{where}{hint}")
        cls, tp = owners[name]
        value = _coerce(key, value, tp)
        if key == "warmup_ratio" and not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise ConfigError(f"`warmup_ratio` must be in [0, 1){where}; got {value!r}")
        values[cls][name] = value
    out = []
    for cls in classes:
        try:
            out.append(cls(**values[cls]))
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"Invalid settings{where}: {exc}") from None
    return tuple(out)


def to_dict(*configs) -> dict[str, Any]:
    """The merged, effective settings of several config dataclasses (for model cards and run records)."""
    merged: dict[str, Any] = {}
    for cfg in configs:
        for f in dataclasses.fields(cfg):
            value = getattr(cfg, f.name)
            if isinstance(value, enum.Enum):
                value = value.value
            if isinstance(value, (str, int, float, bool, type(None), list, dict)):
                merged[f.name] = value
            else:
                merged[f.name] = str(value)
    return merged


def help_text(classes: Sequence[type]) -> str:
    """`--help` for a stage: each key, its default and its documentation, from the field metadata."""
    lines = []
    for cls in classes:
        lines.append(f"\n{cls.__name__}:")
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else ("[]" if f.default_factory is not dataclasses.MISSING else "required")
            )
            doc = f.metadata.get("help", "")
            lines.append(
                f"  --{f.name}  (default: {default})\n      {doc}"
                if doc
                else f"  --{f.name}  (default: {default})"
            )
    return "\n".join(lines)


def _training_arguments():
    from transformers import TrainingArguments

    return TrainingArguments


@dataclass
class SFTConfig(_training_arguments()):
    """transformers.TrainingArguments plus the distilled-SFT settings."""

    max_length: int = _help(
        "Longest conversation in tokens; longer ones are cut from the right.", default=2048
    )
    packing: bool = _help(
        "Pack several conversations into rows of up to `max_length` tokens (best-fit decreasing) before "
        "batching. Attention never crosses conversations either way.",
        default=False,
    )
    padding_free: bool = _help(
        "Flatten each batch into one row without padding (position ids restart per conversation). "
        "Off: pad every conversation to the longest in the batch, as TRL does.",
        default=True,
    )
    dataset_kwargs: dict[str, Any] | None = _help(
        "Accepted for handbook compatibility; unused.", default=None
    )

    def __post_init__(self):
        super().__post_init__()
        if self.max_length <= 1:
            raise ConfigError(f"`max_length` must be at least 2 tokens; got {self.max_length}")
        # Our collators need the token columns that Trainer would otherwise drop as "unused".
        self.remove_unused_columns = False


DPO_LOSS_TYPES = ("sigmoid", "robust", "ipo", "hinge")


@dataclass
class DPOConfig(_training_arguments()):
    """transformers.TrainingArguments plus the direct-preference-optimisation settings."""

    beta: float = _help(
        "DPO temperature: how far the policy may move from the reference (0.1 paper, 0.01 handbook).",
        default=0.1,
    )
    loss_type: str = _help("One of sigmoid (DPO), robust, ipo, hinge.", default="sigmoid")
    label_smoothing: float = _help(
        "Assumed label noise eps in [0, 0.5): conservative DPO for `sigmoid`, robust DPO for `robust`.",
        default=0.0,
    )
    max_length: int = _help(
        "Longest prompt + completion in tokens; completions are cut from the right.", default=1024
    )
    max_prompt_length: int | None = _help(
        "Longest prompt in tokens; longer prompts are cut from the left (their start). None: no limit, and a "
        "prompt that leaves no room for a completion is a bad row.",
        default=512,
    )
    ref_model_name_or_path: str | None = _help(
        "The reference model spec. Default: the starting policy (a separate frozen copy; with LoRA, the policy "
        "with its adapters disabled, no second copy).",
        default=None,
    )
    precompute_ref_log_probs: bool = _help(
        "Compute the reference log-probs once before training and cache them on disk (keyed by reference "
        "weights, data and tokenization); the reference model is then not in memory while training.",
        default=False,
    )
    ref_cache_dir: str | None = _help(
        "Where precomputed reference log-probs are cached. Default: $ZEPHYR_CACHE/ref_logps.", default=None
    )
    padding_free: bool = _help(
        "Pack each batch into one row with no padding. Off: pad pairs as TRL does.", default=True
    )
    prefix_sharing: bool = _help(
        "Run each prompt once for its chosen and rejected completions (needs padding_free).", default=True
    )
    generate_during_eval: bool = _help("Accepted for handbook compatibility; unused.", default=False)

    def __post_init__(self):
        super().__post_init__()
        if self.loss_type not in DPO_LOSS_TYPES:
            close = difflib.get_close_matches(self.loss_type, DPO_LOSS_TYPES, n=1)
            hint = f"; did you mean `{close[0]}`?" if close else ""
            raise ConfigError(
                f"`loss_type` must be one of {', '.join(DPO_LOSS_TYPES)}; got {self.loss_type!r}{hint}"
            )
        if self.beta <= 0:
            raise ConfigError(f"`beta` must be positive; got {self.beta}")
        if not 0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"`label_smoothing` must be in [0, 0.5); got {self.label_smoothing}")
        if self.max_prompt_length is not None and not 0 < self.max_prompt_length < self.max_length:
            raise ConfigError(
                f"`max_prompt_length` ({self.max_prompt_length}) must be positive and below `max_length` "
                f"({self.max_length}) to leave room for the completion"
            )
        if self.prefix_sharing and not self.padding_free:
            self.prefix_sharing = False  # sharing a prompt needs the packed row layout
        self.remove_unused_columns = False


def effective_recipe(recipe: str | Path | None, overrides: Sequence[str], *configs) -> dict[str, Any]:
    """What a run was asked to do, for model cards: every model/data setting plus each training key the
    recipe file or the command line set, with the value actually used."""
    given = read_recipe(recipe) | parse_overrides(overrides)
    record = to_dict(*(c for c in configs if isinstance(c, (ModelArguments, DataArguments))))
    effective = to_dict(*configs)
    for key in given:
        name = KEY_ALIASES.get(key, key)
        if name in effective:
            record[name] = effective[name]
    return record
