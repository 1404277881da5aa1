"""Training recipes: transformers.TrainingArguments plus the SFT and DPO keys (TRL's names and defaults).

Every number is checked when the recipe is parsed, before a model loads: ours through the limits on
their ``setting``, the inherited TrainingArguments ones through ``TRAINING_LIMITS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import TrainingArguments

from zephyr.config import check_settings, check_value, setting
from zephyr.errors import ConfigError
from zephyr.train.losses import DPO_LOSSES

# Limits on inherited TrainingArguments fields: transformers accepts these values and fails (or trains on
# nonsense) much later, after the model has loaded.
TRAINING_LIMITS = {
    "learning_rate": {"ge": 0},
    "num_train_epochs": {"gt": 0},
    "max_steps": {"ge": -1, "le": 2**40},
    "per_device_train_batch_size": {"ge": 1},
    "per_device_eval_batch_size": {"ge": 1},
    "gradient_accumulation_steps": {"ge": 1},
    "warmup_steps": {"ge": 0},
    "weight_decay": {"ge": 0},
    "max_grad_norm": {"ge": 0},
    "logging_steps": {"gt": 0},
    "save_steps": {"gt": 0},
    "eval_steps": {"gt": 0},
    "seed": {"ge": 0, "lt": 2**32},
}


def check_training_numbers(args: Any) -> None:
    """Range-check our own keys and the inherited TrainingArguments numbers, naming the key."""
    check_settings(args)
    for key, limits in TRAINING_LIMITS.items():
        check_value(key, getattr(args, key, None), limits)


@dataclass
class SFTConfig(TrainingArguments):
    """transformers.TrainingArguments plus the distilled-SFT settings."""

    max_length: int = setting(
        "Longest conversation in tokens; longer ones are cut from the right.", default=2048, ge=2
    )
    packing: bool = setting(
        "Pack several conversations into rows of up to `max_length` tokens (best-fit decreasing) before "
        "batching. Attention never crosses conversations either way.",
        default=False,
    )
    padding_free: bool = setting(
        "Flatten each batch into one row without padding (position ids restart per conversation). "
        "Off: pad every conversation to the longest in the batch, as TRL does.",
        default=True,
    )
    dataset_kwargs: dict[str, Any] | None = setting(
        "Accepted for handbook compatibility; unused.", default=None
    )

    def __post_init__(self):
        check_training_numbers(self)
        super().__post_init__()
        # Our collators need the token columns that Trainer would otherwise drop as "unused".
        self.remove_unused_columns = False


@dataclass
class DPOConfig(TrainingArguments):
    """transformers.TrainingArguments plus the direct-preference-optimisation settings."""

    beta: float = setting(
        "DPO temperature: how far the policy may move from the reference (0.1 paper, 0.01 handbook).",
        default=0.1,
        gt=0,
    )
    loss_type: str = setting(
        "The DPO loss: sigmoid (DPO), robust, ipo or hinge.", "sigmoid", choices=DPO_LOSSES
    )
    label_smoothing: float = setting(
        "Assumed label noise eps: conservative DPO for `sigmoid`, robust DPO for `robust`.",
        default=0.0,
        ge=0,
        lt=0.5,
    )
    max_length: int = setting(
        "Longest prompt + completion in tokens; completions are cut from the right.", default=1024, ge=2
    )
    max_prompt_length: int | None = setting(
        "Longest prompt in tokens; longer prompts are cut from the left (their start). None: no limit, and a "
        "prompt that leaves no room for a completion is a bad row.",
        default=512,
    )
    ref_model_name_or_path: str | None = setting(
        "The reference model spec. Default: the starting policy (a separate frozen copy; with LoRA, the policy "
        "with its adapters disabled, no second copy).",
        default=None,
    )
    precompute_ref_log_probs: bool = setting(
        "Compute the reference log-probs once before training and cache them on disk (keyed by reference "
        "weights, data and tokenization); the reference model is then not in memory while training.",
        default=False,
    )
    ref_cache_dir: str | None = setting(
        "Where precomputed reference log-probs are cached. Default: $ZEPHYR_CACHE/ref_logps.", default=None
    )
    padding_free: bool = setting(
        "Pack each batch into one row with no padding. Off: pad pairs as TRL does.", default=True
    )
    prefix_sharing: bool = setting(
        "Run each prompt once for its chosen and rejected completions (needs padding_free).", default=True
    )
    generate_during_eval: bool = setting("Accepted for handbook compatibility; unused.", default=False)

    def __post_init__(self):
        check_training_numbers(self)
        super().__post_init__()
        if self.max_prompt_length is not None and not 0 < self.max_prompt_length < self.max_length:
            raise ConfigError(
                f"`max_prompt_length` ({self.max_prompt_length}) must be positive and below `max_length` "
                f"({self.max_length}) to leave room for the completion"
            )
        if self.prefix_sharing and not self.padding_free:
            self.prefix_sharing = False  # sharing a prompt needs the packed row layout
        self.remove_unused_columns = False
