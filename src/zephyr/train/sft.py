"""Distilled supervised fine-tuning (dSFT): `zephyr sft` and the ``sft`` function behind it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from zephyr.chat import tokenize_conversation, with_empty_system
from zephyr.config import to_dict
from zephyr.data.config import DataArguments
from zephyr.models import ModelArguments, fit_embeddings_to_tokenizer, load_model
from zephyr.train.collate import PackedCollator, PaddedCollator, pack_best_fit
from zephyr.train.config import SFTConfig
from zephyr.train.setup import (
    load_run_tokenizer,
    log_batch_geometry,
    maybe_add_lora,
    save_trained,
    training_lock,
)
from zephyr.train.trainer import SFTTrainer

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: str
    metrics: dict


def tokenize_for_sft(
    dataset, tokenizer, data_args: DataArguments, max_length: int, num_proc: int | None = None
):
    """Conversations -> ``input_ids`` + ``assistant_mask``, cut to ``max_length`` from the right.

    Rows left with no trained token (a first reply entirely past the cut) are dropped and counted.
    """

    def encode(row):
        messages = row["messages"]
        if data_args.auto_insert_empty_system_msg:
            messages = with_empty_system(messages)
        tok = tokenize_conversation(tokenizer, messages, train_on=data_args.train_on)
        ids, mask = tok.input_ids[:max_length], tok.assistant_mask[:max_length]
        return {"input_ids": ids, "assistant_mask": mask, "truncated": len(tok) > max_length}

    columns = dataset.column_names
    out = dataset.map(encode, remove_columns=columns, num_proc=num_proc, desc="Tokenizing conversations")
    truncated = sum(out["truncated"])
    # A target exists only from the second token on (the first is never predicted).
    out = out.filter(
        lambda r: any(r["assistant_mask"][1:]), num_proc=num_proc, desc="Dropping untrainable rows"
    )
    dropped = len(dataset) - len(out)
    if truncated or dropped:
        log.warning(
            "%d of %d conversations were longer than max_length=%d and cut; %d had nothing left to train on and "
            "were dropped",
            truncated,
            len(dataset),
            max_length,
            dropped,
        )
    return out.remove_columns(["truncated"])


def pack_dataset(dataset, max_length: int):
    """Merge conversations into rows of at most ``max_length`` tokens, remembering their boundaries."""
    from datasets import Dataset

    lengths = [len(ids) for ids in dataset["input_ids"]]
    rows = []
    for members in pack_best_fit(lengths, max_length):
        ids, mask = [], []
        for i in members:
            ids += dataset[i]["input_ids"]
            mask += dataset[i]["assistant_mask"]
        rows.append({"input_ids": ids, "assistant_mask": mask, "seq_lengths": [lengths[i] for i in members]})
    log.info(
        "Packed %d conversations into %d rows of <= %d tokens (%.1f%% full)",
        len(lengths),
        len(rows),
        max_length,
        100 * sum(lengths) / max(1, len(rows) * max_length),
    )
    return Dataset.from_list(rows)


def prepare_sft_data(tokenizer, data_args: DataArguments, args: SFTConfig):
    from zephyr.data import load_datasets

    splits = load_datasets(data_args, kind="conversation")
    out = {}
    for name in ("train", "test"):
        if name not in splits or len(splits[name]) == 0:
            continue
        with args.main_process_first(desc=f"tokenizing {name}"):
            ds = tokenize_for_sft(
                splits[name], tokenizer, data_args, args.max_length, data_args.dataset_num_proc
            )
        out[name] = pack_dataset(ds, args.max_length) if args.packing else ds
    return out


def sft(
    model_args: ModelArguments, data_args: DataArguments, args: SFTConfig, recipe: dict | None = None
) -> TrainResult:
    """Fine-tune a model on conversations, training on assistant replies; save a ready-to-load checkpoint."""
    with training_lock(args, "zephyr sft"):  # the whole run: a second run on output_dir fails at once
        return _sft(model_args, data_args, args, recipe)


def resolve_packing(args: SFTConfig, data_args: DataArguments) -> None:
    """An unset `packing` follows the script the recipe was written for: the handbook's 2023 SFT script
    (recipes with `dataset_mixer`) hard-coded packing, its current one (TRL's default) does not."""
    if args.packing is None:
        args.packing = data_args.dataset_mixer is not None
        if args.packing:
            log.info(
                "Packing conversations: a `dataset_mixer` recipe was run by the handbook's packing SFT script"
            )


def _sft(model_args: ModelArguments, data_args: DataArguments, args: SFTConfig, recipe: dict | None):
    from transformers import set_seed

    set_seed(args.seed)
    resolve_packing(args, data_args)
    tokenizer = load_run_tokenizer(model_args, data_args)
    data = prepare_sft_data(tokenizer, data_args, args)
    if "train" not in data:
        from zephyr.errors import ConfigError

        raise ConfigError(
            "The dataset has no training rows; check `dataset_name`/`dataset_mixer`/`dataset_mixture` and the splits"
        )
    model = load_model(model_args.model_name_or_path, model_args, for_training=True)
    if fit_embeddings_to_tokenizer(model, tokenizer):
        log.info("Grew the embedding matrix to %d rows for the added pad token", len(tokenizer))
    if data_args.eos_token is not None:  # the saved model must stop where the tokenizer now ends a turn
        model.config.eos_token_id = tokenizer.eos_token_id
        if model.generation_config is not None:
            model.generation_config.eos_token_id = tokenizer.eos_token_id
    model = maybe_add_lora(model, model_args, args)
    collator = PackedCollator() if args.padding_free else PaddedCollator(tokenizer.pad_token_id)
    log_batch_geometry(args, data["train"], unit="conversations" if not args.packing else "packed rows")
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data.get("test"),
        data_collator=collator,
        processing_class=tokenizer,
    )
    metrics = save_trained(
        trainer, tokenizer, args, "sft", model_args, recipe or to_dict(model_args, data_args, args)
    )
    return TrainResult(str(Path(args.output_dir)), metrics)
