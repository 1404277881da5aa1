"""The data keys of a training recipe (the handbook's DataArguments)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zephyr.config import check_settings, on_error_setting, setting
from zephyr.errors import ConfigError


@dataclass
class DataArguments:
    """Which data to train on and how to turn it into tokens (the handbook's DataArguments keys)."""

    chat_template: str | None = setting(
        "`zephyr`, `chatml`, or Jinja source. Default: the model's own template, or Zephyr's if it has none.",
        default=None,
    )
    eos_token: str | None = setting(
        "TRL's key: the token that ends a turn, replacing the tokenizer's own (e.g. `<|im_end|>` for a base "
        "model trained on ChatML); it must be in the vocabulary.",
        default=None,
    )
    dataset_mixer: dict[str, float] | None = setting(
        "Old handbook mixing: {dataset id or file: fraction}. Takes the first int(fraction*len) rows of each "
        "train split (shuffled with seed 42); test splits are never subsampled.",
        default=None,
    )
    dataset_splits: list[str] = setting(
        "Splits to load for dataset_mixer; names containing `train` train, names containing `test` evaluate.",
        default_factory=lambda: ["train", "test"],
    )
    dataset_configs: list[str] | None = setting("Hub configs, one per dataset_mixer entry.", default=None)
    dataset_mixture: dict[str, Any] | None = setting(
        "New handbook mixing: {datasets: [{id, config, split, columns, weight}], seed, test_split_size}.",
        default=None,
    )
    dataset_name: str | None = setting(
        "TRL's data key: one dataset id or file; its `dataset_train_split` trains and its `dataset_test_split` "
        "(when it has one) evaluates, as the handbook's scripts load it. `dataset_mixture` wins when both are set.",
        default=None,
    )
    dataset_config: str | None = setting("The hub config of `dataset_name`.", default=None)
    dataset_train_split: str = setting("The split of `dataset_name` to train on.", default="train")
    dataset_test_split: str = setting("The split of `dataset_name` to evaluate on.", default="test")
    dataset_num_proc: int | None = setting("Worker processes for tokenization.", default=None)
    auto_insert_empty_system_msg: bool = setting(
        "Prepend an empty system message to every conversation (the original handbook behaviour).",
        default=False,
    )
    train_on: str = setting(
        "Which tokens carry loss: `assistant` (replies and their EOS) or `all`.",
        default="assistant",
        choices=("assistant", "all"),
    )
    assistant_only_loss: bool | None = setting(
        "TRL's key for `train_on`: true is `train_on: assistant`, false is `train_on: all`; it wins when set.",
        default=None,
    )
    on_error: str = on_error_setting("raise")
    max_train_samples: int | None = setting("Keep only the first N training rows (smoke runs).", None, ge=1)
    max_eval_samples: int | None = setting("Keep only the first N evaluation rows.", None, ge=1)
    truncation_side: str | None = setting(
        "Old handbook key; conversations are always cut from the right.", default=None
    )

    def __post_init__(self):
        check_settings(self)
        if self.assistant_only_loss is not None:
            self.train_on = "assistant" if self.assistant_only_loss else "all"
        if self.dataset_mixer is not None and not isinstance(self.dataset_mixer, dict):
            raise ConfigError(
                "`dataset_mixer` must be a mapping of dataset id or file to fraction, e.g. "
                f"{{HuggingFaceH4/ultrachat_200k: 1.0}}; got {type(self.dataset_mixer).__name__}",
                key="dataset_mixer",
            )
        if self.dataset_name is not None and self.dataset_mixer is not None:
            raise ConfigError(
                "Set either `dataset_name` (TRL form) or `dataset_mixer` (old handbook form), not both"
            )
        if self.dataset_mixer is not None and self.dataset_mixture is not None:
            raise ConfigError(
                "Set either `dataset_mixer` (old handbook form) or `dataset_mixture` (new form), not both"
            )
        for name, frac in (self.dataset_mixer or {}).items():
            if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac < float("inf"):
                raise ConfigError(f"`dataset_mixer.{name}` must be a non-negative fraction; got {frac!r}")
