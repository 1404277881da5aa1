"""Training recipes: transformers.TrainingArguments plus the SFT, DPO, KTO, ORPO and CPO/SimPO keys (TRL's
names and defaults).

Every number is checked when the recipe is parsed, before a model loads: ours through the limits on
their ``setting``, the inherited TrainingArguments ones through ``TRAINING_LIMITS``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

from transformers import TrainingArguments

from zephyr.config import check_settings, check_value, setting
from zephyr.data.ratings import SCORE_FIELDS
from zephyr.data.schemas import UnpairedRules
from zephyr.errors import ConfigError
from zephyr.train.attention import KERNEL_CHOICES
from zephyr.train.losses import (
    CPO_LOSSES,
    CPO_USES_LABEL_SMOOTHING,
    DPO_LOSSES,
    KTO_LOSSES,
    USES_LABEL_SMOOTHING,
    FreeSettings,
    LossSettings,
    UnpairedSettings,
)

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


# Which command trains which preference method. A key of another method's command (unknown to this one)
# or a loss type trained by another command fails naming the command that runs it, instead of being
# refused as a typo or, worse, training the wrong method. parse_config reads ``ELSEWHERE``.
_DPO_KEYS = (
    "ref_model_name_or_path",
    "precompute_ref_log_probs",
    "ref_cache_dir",
    "precompute_ref_batch_size",
)
_DPO_LOSS_KEYS = ("loss_weights", "ld_alpha", "discopop_tau")
_KTO_KEYS = ("desirable_weight", "undesirable_weight", "kto_threshold", "kto_score_field")
ELSEWHERE: dict[str, str] = {
    **{
        key: "a DPO setting (the reference model, which KTO has too; ORPO, CPO and SimPO use none); run this "
        "recipe with `zephyr dpo` (or `zephyr kto`)"
        for key in _DPO_KEYS
    },
    **{key: "a DPO setting; run this recipe with `zephyr dpo`" for key in _DPO_LOSS_KEYS},
    **{
        key: "a KTO setting (unpaired desirable/undesirable rows); run this recipe with `zephyr kto`"
        for key in _KTO_KEYS
    },
    **{
        key: "a CPO/SimPO setting; run this recipe with `zephyr cpo` (or `zephyr simpo`)"
        for key in ("cpo_alpha", "simpo_gamma", "alpha")
    },
    "loss_type": "not an ORPO setting (ORPO has one loss); DPO losses run with `zephyr dpo`, CPO and SimPO "
    "ones with `zephyr cpo`",
}
# TRL 1.16's CPOConfig.loss_type choices: the CPO_LOSSES table plus `alphapo` (simpo with cpo_alpha 0).
CPO_LOSS_TYPES = (*CPO_LOSSES, "alphapo")
# The command that trains each loss type zephyr knows of, for a loss_type given to the wrong one.
LOSS_COMMANDS = {
    **{name: "zephyr dpo" for name in DPO_LOSSES},
    **{name: "zephyr cpo" for name in CPO_LOSS_TYPES if name not in DPO_LOSSES},
    **{name: "zephyr kto" for name in KTO_LOSSES},
    "orpo": "zephyr orpo",
}
# KTO's losses train on unpaired (prompt, completion, label) rows: `zephyr kto` runs them (`kto_pair` was TRL's
# paired approximation inside DPOTrainer, since removed; KTO itself takes preference pairs as two rows).
UNPAIRED_LOSSES = ("kto", "kto_pair", "apo_zero_unpaired")


def check_loss_type(name: Any, command: str, choices) -> None:
    """A loss type ``command`` trains, or a ConfigError naming the command that does (or did-you-mean)."""
    if name in choices:
        return
    if name == "kto_pair" and command == "zephyr kto":
        raise ConfigError(
            "`loss_type` 'kto_pair' was TRL's paired approximation of KTO, since removed; `zephyr kto` trains KTO "
            "itself, on preference pairs too (one desirable and one undesirable row each): use `loss_type: kto`",
            key="loss_type",
        )
    if name in UNPAIRED_LOSSES and command != "zephyr kto":
        fix = "`loss_type: kto`" if name == "kto_pair" else f"`loss_type: {name}`"
        raise ConfigError(
            f"`loss_type` {name!r} is KTO's: it trains on unpaired (prompt, completion, label) rows; run this "
            f"recipe with `zephyr kto` ({fix}), which also reads preference pairs as one desirable and one "
            f"undesirable row each; `{command}` trains on preference pairs",
            key="loss_type",
        )
    other = LOSS_COMMANDS.get(name) if isinstance(name, str) else None
    if other is not None and other != command:
        raise ConfigError(
            f"`loss_type` {name!r} is not a `{command}` loss; run this recipe with `{other}`", key="loss_type"
        )
    check_value("loss_type", name, {}, choices)


@dataclass
class PreferenceConfig(TrainingArguments):
    """transformers.TrainingArguments plus what every preference method shares: pair lengths and layout."""

    ELSEWHERE: ClassVar[dict[str, str]] = ELSEWHERE
    COMMAND: ClassVar[str] = ""

    max_length: int = setting(
        "Longest prompt + completion in tokens; completions are cut from the right.", default=1024, ge=2
    )
    max_prompt_length: int | None = setting(
        "Longest prompt in tokens; longer prompts are cut from the left (their start). None: no limit, and a "
        "prompt that leaves no room for a completion is a bad row.",
        default=512,
    )
    padding_free: bool = setting(
        "Pack each batch into one row with no padding. Off: pad pairs as TRL does.", default=True
    )
    attention_kernel: str = attention_kernel_setting()
    prefix_sharing: bool = setting(
        "Run each prompt once for all its completions: DPO's chosen and rejected, KTO's completion and KL "
        "completion (needs padding_free).",
        default=True,
    )
    generate_during_eval: bool = setting("Accepted for handbook compatibility; unused.", default=False)

    def __post_init__(self):
        self._check_method()  # first: a loss type of another command names that command
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

    def _check_method(self) -> None:
        """The method's own checks (its loss type and the settings that go with it)."""

    @property
    def pair_layout(self) -> str:
        """The PairCollator layout these settings ask for."""
        return "shared" if self.prefix_sharing else ("packed" if self.padding_free else "padded")


@dataclass
class ReferenceConfig(PreferenceConfig):
    """What DPO and KTO share: a reference model, live or with its log-probs precomputed."""

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
    precompute_ref_batch_size: int | None = setting(
        "Rows per batch of the precomputing pass. None: `per_device_eval_batch_size` (it runs without "
        "gradients, so it can be larger than the training batch).",
        default=None,
        ge=1,
    )
    ref_cache_dir: str | None = setting(
        "Where precomputed reference log-probs are cached. Default: $ZEPHYR_CACHE/ref_logps.", default=None
    )


@dataclass
class DPOConfig(ReferenceConfig):
    """transformers.TrainingArguments plus the direct-preference-optimisation settings."""

    COMMAND: ClassVar[str] = "zephyr dpo"

    beta: float = setting(
        "DPO temperature: how far the policy may move from the reference (0.1 paper, 0.01 handbook).",
        default=0.1,
        gt=0,
    )
    loss_type: str | list[str] = setting(
        "The DPO loss, or a list of losses summed with `loss_weights` (TRL 1.16's names): sigmoid (DPO), "
        "hinge, ipo, exo_pair, nca_pair, robust, bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, "
        "discopop, sft (NLL of the chosen replies), sigmoid_norm (DPO on per-token log-ratios). "
        "MPO, for instance: [sigmoid, bco_pair, sft] with weights [0.8, 0.2, 1.0]. ORPO, CPO and SimPO train "
        "with `zephyr orpo`, `zephyr cpo` and `zephyr simpo`.",
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

    def _check_method(self) -> None:
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
            check_loss_type(name, self.COMMAND, DPO_LOSSES)
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


@dataclass
class KTOConfig(ReferenceConfig):
    """transformers.TrainingArguments plus KTO's settings (TRL 1.16's KTOConfig names and defaults): unpaired
    rows, each one completion labelled desirable or undesirable, against a reference model."""

    COMMAND: ClassVar[str] = "zephyr kto"

    learning_rate: float = setting(
        "The peak learning rate; TRL's KTO default (transformers' own is 5e-5). TRL's KTO examples use 5e-7 "
        "for 1.8B-7B models; the KTO paper reports 5e-7 to 1e-6 working at 7B.",
        default=1e-6,
        ge=0,
    )
    beta: float = setting(
        "KTO's beta: the scale of the reward r = log pi/pi_ref inside the sigmoid; higher keeps the policy "
        "nearer the reference (0.1: TRL and the KTO paper).",
        default=0.1,
        gt=0,
    )
    loss_type: str = setting(
        "TRL 1.16's KTO loss types: kto (1 - sigmoid(beta (r - z0)) for desirable rows, 1 - sigmoid(beta (z0 - "
        "r)) for undesirable ones; z0 the batch's KL estimate from mismatched prompt/completion pairs) or "
        "apo_zero_unpaired (APO-zero on unpaired rows: 1 - sigmoid(beta r) and sigmoid(beta r); no KL term).",
        "kto",
    )
    desirable_weight: float = setting(
        "Weight of the desirable rows' losses. TRL (after the KTO paper) advises desirable_weight * n_desirable "
        "/ (undesirable_weight * n_undesirable) in [1, 4/3]; the run warns, with weights that would fit, when the "
        "data is outside it.",
        default=1.0,
        gt=0,
    )
    undesirable_weight: float = setting("Weight of the undesirable rows' losses.", default=1.0, gt=0)
    train_sampling_strategy: str = setting(
        "The training sampler (TRL's KTO default: sequential). The KL completions are paired within fixed "
        "batches of `per_device_train_batch_size` consecutive rows (the rows are shuffled once, with `seed`, "
        "before pairing), so the loss types with a KL term need `sequential` for each batch's KL completions "
        "to be its own completions; apo_zero_unpaired may use any.",
        default="sequential",
        choices=("random", "sequential", "group_by_length", "batch_rebalance"),
    )
    kto_score_field: str = setting(
        "For rated completions (the `zephyr feedback` output, UltraFeedback's rows): the score that labels them: "
        "fine-grained_score (the mean of the 1-5 aspect ratings; `binarize`'s default), overall_score (the 1-10 "
        "critique score, written with `critique: true`) or one aspect's 1-5 rating. A completion without it is "
        "left out.",
        default="fine-grained_score",
        choices=SCORE_FIELDS,
    )
    kto_threshold: float | None = setting(
        "A rated completion is desirable when its `kto_score_field` score is at least this, undesirable below "
        "it. None: 4 on the 1-5 scales, 7 for overall_score. Rows that already have a label (TRL's unpaired "
        "rows) or a side (preference pairs: chosen desirable, rejected undesirable) ignore it.",
        default=None,
    )
    disable_dropout: bool = setting(
        "Turn off dropout in the policy (and a separate reference) while training (TRL's default).",
        default=True,
    )
    pad_to_multiple_of: int | str | None = setting(
        "TRL's key: accepted and unused (packed rows have no padding; padded batches pad to their longest row).",
        default=None,
    )

    def _check_method(self) -> None:
        """TRL's KTOConfig/KTOTrainer checks, made before any data or model loads."""
        check_loss_type(self.loss_type, self.COMMAND, KTO_LOSSES)
        if self.kto_threshold is not None and (
            isinstance(self.kto_threshold, bool)
            or not isinstance(self.kto_threshold, (int, float))
            or not math.isfinite(self.kto_threshold)
        ):
            raise ConfigError(
                f"`kto_threshold` must be a number; got {self.kto_threshold!r}", key="kto_threshold"
            )
        if not self.uses_kl:
            return
        if isinstance(self.per_device_train_batch_size, int) and self.per_device_train_batch_size < 2:
            raise ConfigError(
                f"`per_device_train_batch_size` is {self.per_device_train_batch_size}, but loss_type "
                f"{self.loss_type!r} estimates its KL term from the other rows of each per-device batch, so it "
                "needs at least 2 (with 1 the KL estimate is the row's own reward); raise it, and lower "
                "`gradient_accumulation_steps` to keep the global batch",
                key="per_device_train_batch_size",
            )
        if self.train_sampling_strategy != "sequential":
            raise ConfigError(
                f"`train_sampling_strategy` is {self.train_sampling_strategy!r}, but loss_type {self.loss_type!r} "
                "pairs each row's KL completion within fixed batches of consecutive rows (as TRL does), and any "
                "other sampler breaks those batches apart; use `sequential` (the default: the rows are shuffled "
                "once, with `seed`, before pairing)",
                key="train_sampling_strategy",
            )

    @property
    def uses_kl(self) -> bool:
        """Whether the loss type estimates the KL term (and the batches carry KL completions)."""
        return KTO_LOSSES[self.loss_type].uses_kl

    def loss_settings(self) -> UnpairedSettings:
        return UnpairedSettings(self.beta, self.desirable_weight, self.undesirable_weight)

    def unpaired_rules(self) -> UnpairedRules:
        return UnpairedRules(self.kto_score_field, self.kto_threshold)


@dataclass
class ReferenceFreeConfig(PreferenceConfig):
    """What ORPO and CPO share (TRL's experimental ORPOConfig/CPOConfig): no reference model, ever."""

    METHOD: ClassVar[str] = ""  # the REFERENCE_FREE entry that computes the loss

    learning_rate: float = setting(
        "The peak learning rate; TRL's default for ORPO and CPO (transformers' own is 5e-5).",
        default=1e-6,
        ge=0,
    )
    max_completion_length: int | None = setting(
        "TRL's key, which it reads for encoder-decoder models only: accepted and unused (prompt + completion "
        "are limited by `max_length`).",
        default=None,
        ge=1,
    )
    disable_dropout: bool = setting(
        "Turn off the model's dropout while training (TRL's default).", default=True
    )

    def loss_settings(self) -> FreeSettings:
        raise NotImplementedError


@dataclass
class ORPOConfig(ReferenceFreeConfig):
    """transformers.TrainingArguments plus ORPO's settings (TRL 1.16's experimental ORPOConfig)."""

    COMMAND: ClassVar[str] = "zephyr orpo"
    METHOD: ClassVar[str] = "orpo"

    beta: float = setting(
        "ORPO's lambda: the weight of the odds-ratio term beside the NLL of the chosen sequences (0.1: TRL and "
        "the paper; 0.05: the handbook's zephyr-141b ORPO recipe).",
        default=0.1,
        gt=0,
    )

    def loss_settings(self) -> FreeSettings:
        return FreeSettings(beta=self.beta)


@dataclass
class CPOConfig(ReferenceFreeConfig):
    """transformers.TrainingArguments plus CPO's settings, SimPO and AlphaPO included (TRL 1.16's experimental
    CPOConfig)."""

    COMMAND: ClassVar[str] = "zephyr cpo"
    METHOD: ClassVar[str] = "cpo"

    beta: float = setting(
        "The temperature: the scale of the chosen-minus-rejected margin (IPO's tau for ipo; the SimPO paper "
        "uses 2.0-2.5 for simpo).",
        default=0.1,
        gt=0,
    )
    loss_type: str = setting(
        "The preference term (TRL 1.16's names): sigmoid (CPO: DPO's loss on summed log-probs, no reference), "
        "hinge (SLiC, summed), ipo (per-token mean log-probs), simpo (SimPO: per-token means with the margin "
        "`simpo_gamma`), alphapo (simpo with `cpo_alpha` 0; shape the reward with `alpha`).",
        "sigmoid",
    )
    label_smoothing: float = setting(
        "Assumed label noise eps of the conservative logistic loss (sigmoid and simpo; hinge and ipo ignore it).",
        default=0.0,
        ge=0,
        lt=0.5,
    )
    cpo_alpha: float = setting(
        "Weight of the NLL of the chosen completions (CPO's behaviour-cloning term) added to the loss; 0: pure "
        "SimPO (TRL then computes, and logs, no NLL).",
        default=1.0,
        ge=0,
    )
    simpo_gamma: float = setting(
        "SimPO's target reward margin gamma, read by loss_type simpo only (the SimPO code's default is "
        "gamma/beta 0.25, i.e. 0.5 at beta 2.0).",
        default=0.5,
        ge=0,
    )
    alpha: float = setting(
        "AlphaPO's reward shape: each log-prob the loss reads (mean or sum) becomes (1 - p^-alpha) / alpha; "
        "0: the log-prob itself. Works with every loss type.",
        default=0.0,
    )

    def _check_method(self) -> None:
        """TRL's CPOConfig checks and its `alphapo` shorthand (simpo with `cpo_alpha` 0), before any model loads."""
        check_loss_type(self.loss_type, self.COMMAND, CPO_LOSS_TYPES)
        if self.loss_type == "alphapo":
            log.info(
                "`loss_type: alphapo` is simpo with `cpo_alpha` 0 (TRL's shorthand); `alpha` is %s",
                self.alpha,
            )
            self.loss_type, self.cpo_alpha = "simpo", 0.0
        if isinstance(self.alpha, (int, float)) and not math.isfinite(self.alpha):
            raise ConfigError(f"`alpha` must be a finite number; got {self.alpha!r}", key="alpha")
        if self.label_smoothing and self.loss_type not in CPO_USES_LABEL_SMOOTHING:
            log.warning(
                "`label_smoothing` (%s) has no effect on the %s loss: only %s read it (as in TRL 1.16)",
                self.label_smoothing,
                self.loss_type,
                ", ".join(CPO_USES_LABEL_SMOOTHING),
            )

    def loss_settings(self) -> FreeSettings:
        return FreeSettings(
            self.beta, self.loss_type, self.label_smoothing, self.cpo_alpha, self.simpo_gamma, self.alpha
        )


@dataclass
class SimPOConfig(CPOConfig):
    """CPOConfig with pure SimPO's defaults: `zephyr simpo` is `zephyr cpo` with loss_type simpo, no NLL term
    (cpo_alpha 0) and the SimPO paper's beta 2.0 (its code's default gamma/beta 0.25 gives simpo_gamma 0.5,
    TRL's default)."""

    COMMAND: ClassVar[str] = "zephyr simpo"

    beta: float = setting(
        "SimPO's beta, the scale of the per-token mean log-prob margin (the SimPO paper: 2.0-2.5 for 7-8B "
        "models, up to 10 for Gemma-2/Llama-3-Instruct).",
        default=2.0,
        gt=0,
    )
    loss_type: str = setting(
        "simpo (the default); any CPO loss type is accepted (sigmoid, hinge, ipo, simpo, alphapo).", "simpo"
    )
    cpo_alpha: float = setting(
        "Weight of the NLL of the chosen completions; 0 (pure SimPO) by default, CPO's 1.0 is CPO-SimPO.",
        default=0.0,
        ge=0,
    )
