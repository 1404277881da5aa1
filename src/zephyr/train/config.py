"""Training recipes: transformers.TrainingArguments plus the SFT and DPO keys (TRL's names and defaults).

Every number is checked when the recipe is parsed, before a model loads: ours through the limits on
their ``setting``, the inherited TrainingArguments ones through ``TRAINING_LIMITS``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from transformers import TrainingArguments

from zephyr.config import check_settings, check_value, setting
from zephyr.errors import ConfigError
from zephyr.train.attention import KERNEL_CHOICES
from zephyr.train.losses import DPO_LOSSES, USES_LABEL_SMOOTHING, LossSettings

log = logging.getLogger(__name__)

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


def attention_kernel_setting():
    """The `attention_kernel` key, shared by SFT and DPO."""
    return setting(
        "The kernel for padding-free rows: `auto` (CUDA: FlashAttention varlen where flash-attn is installed, "
        "else flex attention; elsewhere `sdpa_blocks`), `flex` (one flex-attention call per row; trains on "
        "CUDA only), `flash_varlen` (CUDA + flash-attn; prefix-shared DPO rows take flex) or `sdpa_blocks` "
        "(one SDPA call per sequence; runs everywhere). The chosen kernel is logged at start-up.",
        default="auto",
        choices=KERNEL_CHOICES,
    )


def check_training_numbers(args: Any) -> None:
    """Range-check our own keys and the inherited TrainingArguments numbers, naming the key; and refuse an
    attention kernel this machine cannot train with, before any model loads."""
    check_settings(args)
    for key, limits in TRAINING_LIMITS.items():
        check_value(key, getattr(args, key, None), limits)
    if getattr(args, "padding_free", False):
        import torch

        from zephyr.train.attention import choose_kernel

        on_gpu = torch.cuda.is_available() and not args.use_cpu
        choose_kernel(args.attention_kernel, "cuda" if on_gpu else "cpu")


@dataclass
class SFTConfig(TrainingArguments):
    """transformers.TrainingArguments plus the distilled-SFT settings."""

    max_length: int = setting(
        "Longest conversation in tokens; longer ones are cut from the right.", default=2048, ge=2
    )
    packing: bool | None = setting(
        "Pack several conversations into rows of up to `max_length` tokens (best-fit decreasing) before "
        "batching. Attention never crosses conversations either way. Unset: on for a recipe in the old "
        "handbook form (`dataset_mixer`), whose 2023 SFT script always packed; off otherwise, as TRL.",
        default=None,
    )
    packing_strategy: str = setting(
        "TRL's key: `bfd` (best-fit decreasing, what zephyr does; `ffd` is its older name). Conversations are "
        "never split across rows.",
        default="bfd",
        choices=("bfd", "ffd"),
    )
    padding_free: bool = setting(
        "Flatten each batch into one row without padding (position ids restart per conversation). "
        "Off: pad every conversation to the longest in the batch, as TRL does.",
        default=True,
    )
    attention_kernel: str = attention_kernel_setting()
    dataset_kwargs: dict[str, Any] | None = setting(
        "Accepted for handbook compatibility; unused.", default=None
    )

    def __post_init__(self):
        check_training_numbers(self)
        super().__post_init__()
        # Our collators need the token columns that Trainer would otherwise drop as "unused".
        self.remove_unused_columns = False


def _finite_weight(value: Any) -> float:
    """A loss weight as a float; YAML 1.1 hands `1e-1` over as a string, which is accepted."""
    try:
        weight = (
            float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
        )
    except ValueError:
        weight = None
    if weight is None or not math.isfinite(weight):
        raise ConfigError(f"`loss_weights` must hold finite numbers; got {value!r}", key="loss_weights")
    return weight


@dataclass
class DPOConfig(TrainingArguments):
    """transformers.TrainingArguments plus the direct-preference-optimisation settings."""

    beta: float = setting(
        "DPO temperature: how far the policy may move from the reference (0.1 paper, 0.01 handbook).",
        default=0.1,
        gt=0,
    )
    loss_type: str | list[str] = setting(
        "The DPO loss, or a list of losses summed with `loss_weights` (TRL 1.16's names): sigmoid (DPO), "
        "hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, "
        "discopop, sft (NLL of the chosen replies), sigmoid_norm (DPO on per-token log-ratios). "
        "MPO, for instance: [sigmoid, bco_pair, sft] with weights [0.8, 0.2, 1.0].",
        "sigmoid",
    )
    loss_weights: list[float] | None = setting(
        "One weight per entry of `loss_type`; the loss is the weighted sum of each type's mean over the "
        "pairs. None: every weight 1.",
        default=None,
    )
    label_smoothing: float = setting(
        "Assumed label noise eps, read only by robust (robust DPO), exo_pair (EXO's eps, must then be above 0; "
        "the paper suggests 1e-3), aot and aot_unpaired. As in TRL 1.16, sigmoid ignores it (no conservative "
        "DPO).",
        default=0.0,
        ge=0,
        lt=0.5,
    )
    ld_alpha: float | None = setting(
        "LD-DPO: within each pair, the tokens of the longer completion past the shorter one's length count "
        "with this weight in the policy's and the reference's summed log-probs (1: plain DPO, 0: ignored). "
        "None: off.",
        default=None,
        ge=0,
        le=1,
    )
    discopop_tau: float = setting(
        "DiscoPOP's temperature, which shapes how its loss blends the logistic and exponential parts.",
        default=0.05,
        gt=0,
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
    attention_kernel: str = attention_kernel_setting()
    prefix_sharing: bool = setting(
        "Run each prompt once for its chosen and rejected completions (needs padding_free).", default=True
    )
    generate_during_eval: bool = setting("Accepted for handbook compatibility; unused.", default=False)

    def __post_init__(self):
        check_training_numbers(self)
        self._check_losses()
        super().__post_init__()
        if self.max_prompt_length is not None and not 0 < self.max_prompt_length < self.max_length:
            raise ConfigError(
                f"`max_prompt_length` ({self.max_prompt_length}) must be positive and below `max_length` "
                f"({self.max_length}) to leave room for the completion"
            )
        if self.prefix_sharing and not self.padding_free:
            self.prefix_sharing = False  # sharing a prompt needs the packed row layout
        self.remove_unused_columns = False

    def _check_losses(self) -> None:
        """`loss_type` becomes a list of known names; its weights and label smoothing must fit it (TRL's
        checks, made here so a bad recipe fails before any model loads). Robust DPO's 0 <= eps < 0.5 is
        the limit on `label_smoothing` itself."""
        types = [self.loss_type] if isinstance(self.loss_type, str) else self.loss_type
        if not isinstance(types, list) or not types:
            raise ConfigError(
                f"`loss_type` must be a loss name or a non-empty list of them; got {self.loss_type!r}",
                key="loss_type",
            )
        for name in types:
            check_value("loss_type", name, {}, DPO_LOSSES)
        self.loss_type = list(types)
        if self.loss_weights is not None:
            weights = self.loss_weights if isinstance(self.loss_weights, list) else [self.loss_weights]
            if len(weights) != len(types):
                raise ConfigError(
                    f"`loss_weights` has {len(weights)} weight(s) but `loss_type` has {len(types)} loss "
                    f"type(s) ({', '.join(types)}); give one weight per loss type",
                    key="loss_weights",
                )
            self.loss_weights = [_finite_weight(w) for w in weights]
        if "exo_pair" in types and self.label_smoothing == 0:
            raise ConfigError(
                "`label_smoothing` must be greater than 0 for the `exo_pair` loss (its eps; the EXO paper "
                "suggests 1e-3)",
                key="label_smoothing",
            )
        if self.label_smoothing > 0 and not set(types) & set(USES_LABEL_SMOOTHING):
            log.warning(
                "`label_smoothing` (%s) has no effect on %s: only %s read it (TRL 1.16 applies none to sigmoid)",
                self.label_smoothing,
                ", ".join(types),
                ", ".join(USES_LABEL_SMOOTHING),
            )

    def loss_settings(self) -> LossSettings:
        return LossSettings(self.beta, self.label_smoothing, self.discopop_tau)
