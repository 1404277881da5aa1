"""Pieces shared by the SFT and DPO entry points: adapters, start-up numbers, the output lock, resume,
train-and-save."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from zephyr.io import output_lock, write_atomic, write_json
from zephyr.models import ModelArguments
from zephyr.train.attention import choose_kernel, restore_attention, use_packed_attention
from zephyr.train.checkpoints import CheckpointError, checkpoint_problem, newest_checkpoint, save_final_model

log = logging.getLogger(__name__)


def load_run_tokenizer(model_args: ModelArguments, data_args):
    """The tokenizer a training run uses: the model's (or `tokenizer_name_or_path`), with the recipe's template."""
    from zephyr.models import load_tokenizer

    return load_tokenizer(
        model_args.tokenizer_name_or_path or model_args.model_name_or_path,
        data_args.chat_template,
        model_args.model_revision,
        model_args.trust_remote_code,
        eos_token=data_args.eos_token,
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


def packed_kernel(args, training: bool = True) -> str | None:
    """The packed-attention kernel of a run (``attention_kernel`` checked against its device), or None when
    batches are padded and the model keeps its own attention."""
    if not getattr(args, "padding_free", False):
        return None
    return choose_kernel(args.attention_kernel, args.device, training)


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


@contextmanager
def training_lock(args, what: str) -> Iterator[None]:
    """Hold output_dir's lock for a whole training run, so a second run on it fails at once. Under
    torchrun the ranks of one run are one holder: process 0 takes it, and the others fall with it."""
    if args.process_index != 0:
        yield
        return
    with output_lock(args.output_dir, what):
        yield


def _resume_arg(args) -> str | None:
    """The checkpoint to resume from: `resume_from_checkpoint: true` means the newest complete one in
    output_dir, if any. Every run first clears what interrupted saves left there (process 0 tidies, the
    others then only look), so no later run or checkpoint rotation mistakes it for a checkpoint."""
    with args.main_process_first(local=False, desc="checking checkpoints"):
        newest = newest_checkpoint(Path(args.output_dir), args.save_only_model, tidy=args.process_index == 0)
    value = args.resume_from_checkpoint
    if value in (True, "true", "True"):
        if newest is None:
            log.info("No complete checkpoint in %s to resume from; starting fresh", args.output_dir)
            return None
        log.info("Resuming from %s, the newest complete checkpoint", newest)
        return str(newest)
    if value and (problem := checkpoint_problem(Path(value), args.save_only_model)):
        raise CheckpointError(f"{value}: cannot resume from this checkpoint: {problem}")
    return value or None


def _steps_done(checkpoint: str | None) -> int:
    if checkpoint is None:
        return 0
    return json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))["global_step"]


def whole_run_loss(log_history: list[dict]) -> float | None:
    """The mean training loss over every step, from the logged losses (each a mean since the last log)."""
    total, steps, last = 0.0, 0, 0
    for entry in log_history:
        if "loss" in entry and "step" in entry:
            total += entry["loss"] * (entry["step"] - last)
            steps, last = steps + entry["step"] - last, entry["step"]
    return total / steps if steps else None


def save_trained(trainer, tokenizer, args, stage: str, model_args: ModelArguments, recipe: dict) -> dict:
    """Train (resuming if asked), evaluate, and save model, tokenizer, metrics and model card.

    Each file reaches output_dir whole (``save_final_model``, ``write_json``) and the model card comes
    last, so a run killed while saving resumes from its last checkpoint, trains nothing more and saves
    again, ending with exactly the files (and weights) of an uninterrupted run."""
    from zephyr.train.trainer import write_model_card

    resume = _resume_arg(args)
    kernel = packed_kernel(args)
    if kernel is not None:
        log.info(
            "Packed attention kernel: %s (attention_kernel: %s, device %s)",
            kernel,
            args.attention_kernel,
            args.device,
        )
    previous = use_packed_attention(trainer.model, kernel) if kernel is not None else None
    try:
        result = trainer.train(resume_from_checkpoint=resume)
        metrics = dict(result.metrics)
        if result.global_step == _steps_done(resume):
            # Nothing trained in this call (the run had finished): Trainer's train_loss would read 0.
            history = trainer.state.log_history
            metrics.pop("train_loss", None)
            if (loss := whole_run_loss(history)) is not None:
                metrics["train_loss"] = loss
                if history and "train_loss" in history[-1]:  # the summary Trainer just logged
                    history[-1]["train_loss"] = loss
        if trainer.eval_dataset is not None and (args.do_eval or args.eval_strategy != "no"):
            metrics.update(trainer.evaluate())
    finally:
        if previous is not None:
            restore_attention(trainer.model, previous)
    trainer.log_metrics("train", metrics)
    trainer.model.config.use_cache = True
    out = Path(args.output_dir)
    save_final_model(trainer, tokenizer, out)
    if trainer.is_world_process_zero():
        write_json(out / "all_results.json", metrics)
        # The log history beside the model: what `zephyr report` plots.
        write_atomic(out / "trainer_state.json", lambda tmp: trainer.state.save_to_json(str(tmp)))
        write_model_card(out, stage, recipe, metrics, model_args.model_name_or_path)
        log.info("Saved the %s model to %s", stage, out)
    trainer.accelerator.wait_for_everyone()
    if getattr(args, "push_to_hub", False):
        trainer.push_to_hub()
    return metrics
