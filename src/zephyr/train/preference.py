"""What every preference run shares (`zephyr dpo`, `kto`, `orpo`, `cpo`, `simpo`): the tokenized pairs, the
starting policy, the pair collator, and training and saving."""

from __future__ import annotations

import logging
from pathlib import Path

from zephyr.config import to_dict
from zephyr.data.config import DataArguments
from zephyr.errors import ConfigError
from zephyr.models import ModelArguments, fit_embeddings_to_tokenizer, load_model
from zephyr.train.collate import PairCollator
from zephyr.train.dpo_data import tokenize_preferences
from zephyr.train.setup import log_batch_geometry, save_trained
from zephyr.train.sft import TrainResult

log = logging.getLogger(__name__)


def prepare_preference_data(tokenizer, data_args: DataArguments, args) -> dict:
    """The train (and, when there is one, test) split as token pairs, cut to the run's length limits."""
    from zephyr.data import load_datasets

    splits = load_datasets(data_args, kind="preference")
    out = {}
    for name in ("train", "test"):
        if name in splits and len(splits[name]):
            with args.main_process_first(desc=f"tokenizing {name}"):
                out[name], _, _ = tokenize_preferences(
                    splits[name],
                    tokenizer,
                    args.max_length,
                    args.max_prompt_length,
                    data_args.on_error,
                    data_args.auto_insert_empty_system_msg,
                    split=name,
                )
    if "train" not in out:
        raise ConfigError("The preference data has no training rows; check the dataset settings and splits")
    return out


def load_policy(model_args: ModelArguments, tokenizer):
    """The starting policy. An SFT LoRA adapter is merged into its base first, so the new adapters (or full
    weights) train on top of the SFT model, and DPO's disabled adapters give back exactly the SFT model."""
    model = load_model(model_args.model_name_or_path, model_args, for_training=True)
    if hasattr(model, "merge_and_unload"):
        log.info(
            "Merging the SFT adapter of %s into its base model before preference training",
            model_args.model_name_or_path,
        )
        model = model.merge_and_unload()
        model.config.use_cache = False
    fit_embeddings_to_tokenizer(model, tokenizer)
    return model


def pair_collator(args, pad_token_id: int, score_context: bool = False) -> PairCollator:
    """The collator of a run's layout (``args.pair_layout``); ``score_context`` for the reference-free losses."""
    return PairCollator(args.pair_layout, pad_token_id, score_context)


def disable_dropout(model) -> None:
    """Every dropout module of ``model`` to p = 0, as TRL's ``disable_dropout`` does (LoRA's included)."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def fit_on_pairs(
    trainer_cls,
    model,
    tokenizer,
    data: dict,
    collator: PairCollator,
    stage: str,
    model_args: ModelArguments,
    data_args: DataArguments,
    args,
    recipe: dict | None,
    *,
    unit: str = "pairs",
    **trainer_kwargs,
) -> TrainResult:
    """Train ``model`` on the pairs (``unit``: what a row is, for the start-up numbers) with ``trainer_cls``,
    evaluate, and save it with its model card."""
    columns = ("prompt_ids", *collator.completions)
    log_batch_geometry(args, data["train"], unit=unit, token_columns=columns)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data.get("test"),
        data_collator=collator,
        processing_class=tokenizer,
        **trainer_kwargs,
    )
    metrics = save_trained(
        trainer, tokenizer, args, stage, model_args, recipe or to_dict(model_args, data_args, args)
    )
    return TrainResult(str(Path(args.output_dir)), metrics)
