"""Pieces shared by the SFT and DPO entry points: adapters, start-up numbers, train-and-save."""

from __future__ import annotations

import logging
from pathlib import Path

from zephyr.models import ModelArguments
from zephyr.train.attention import restore_attention, use_packed_attention

log = logging.getLogger(__name__)


def load_run_tokenizer(model_args: ModelArguments, data_args):
    """The tokenizer a training run uses: the model's (or `tokenizer_name_or_path`), with the recipe's template."""
    from zephyr.models import load_tokenizer

    return load_tokenizer(
        model_args.tokenizer_name_or_path or model_args.model_name_or_path,
        data_args.chat_template,
        model_args.model_revision,
        model_args.trust_remote_code,
    )


def lora_config(model_args: ModelArguments):
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules or "all-linear",
        modules_to_save=model_args.lora_modules_to_save,
        task_type="CAUSAL_LM",
    )


def maybe_add_lora(model, model_args: ModelArguments, args):
    """Wrap the model with fresh LoRA adapters when `use_peft` is set (after k-bit prep for QLoRA)."""
    if not model_args.use_peft:
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if model_args.load_in_4bit or model_args.load_in_8bit:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=args.gradient_checkpointing,
            gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs,
        )
    model = get_peft_model(model, lora_config(model_args))
    trainable, total = model.get_nb_trainable_parameters()
    log.info(
        "LoRA: training %s of %s parameters (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total
    )
    return model


def log_batch_geometry(
    args, train_dataset, unit: str, token_columns: tuple[str, ...] = ("input_ids",)
) -> None:
    """Print the numbers that decide a run: effective batch, steps, tokens per step.

    ``token_columns`` are the columns whose tokens a row contributes (a DPO pair: prompt, chosen
    and rejected)."""
    world = max(1, args.world_size)
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
    tokens = sum(len(ids) for column in token_columns for ids in train_dataset[column])
    steps = (
        args.max_steps
        if args.max_steps > 0
        else max(1, -(-len(train_dataset) // per_step)) * int(max(1, args.num_train_epochs))
    )
    log.info(
        "Effective global batch: %d %s (%d per device x %d accumulation x %d processes); %d rows, %s tokens, "
        "~%d tokens per optimizer step, %d steps",
        per_step,
        unit,
        args.per_device_train_batch_size,
        args.gradient_accumulation_steps,
        world,
        len(train_dataset),
        f"{tokens:,}",
        tokens * per_step // max(1, len(train_dataset)),
        steps,
    )


def _resume_arg(args):
    """`resume_from_checkpoint: true` means the last checkpoint in output_dir, if there is one."""
    value = args.resume_from_checkpoint
    if value in (True, "true", "True"):
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(args.output_dir) if Path(args.output_dir).is_dir() else None
        if last is None:
            log.info("No checkpoint in %s to resume from; starting fresh", args.output_dir)
        return last
    return value or None


def save_trained(trainer, tokenizer, args, stage: str, model_args: ModelArguments, recipe: dict) -> dict:
    """Train (resuming if asked), evaluate, and save model, tokenizer, metrics and model card."""
    from zephyr.train.trainer import write_model_card

    previous = use_packed_attention(trainer.model) if getattr(args, "padding_free", False) else None
    try:
        result = trainer.train(resume_from_checkpoint=_resume_arg(args))
        metrics = dict(result.metrics)
        if trainer.eval_dataset is not None and (args.do_eval or args.eval_strategy != "no"):
            metrics.update(trainer.evaluate())
    finally:
        if previous is not None:
            restore_attention(trainer.model, previous)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("all", metrics)
    trainer.save_state()  # trainer_state.json beside the model: the log history `zephyr report` plots
    trainer.model.config.use_cache = True
    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        tokenizer.save_pretrained(args.output_dir)
        write_model_card(args.output_dir, stage, recipe, metrics, model_args.model_name_or_path)
        log.info("Saved the %s model to %s", stage, args.output_dir)
    if getattr(args, "push_to_hub", False):
        trainer.push_to_hub()
    return metrics
