"""Direct preference optimisation from the dSFT model (dDPO): `zephyr dpo` and the ``dpo`` function."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from zephyr.config import to_dict
from zephyr.data.config import DataArguments
from zephyr.errors import ConfigError
from zephyr.models import ModelArguments, fit_embeddings_to_tokenizer, load_model
from zephyr.train.attention import use_packed_attention
from zephyr.train.collate import PairCollator
from zephyr.train.config import DPOConfig
from zephyr.train.dpo_data import tokenize_preferences
from zephyr.train.reference import precompute_reference_logps
from zephyr.train.setup import (
    load_run_tokenizer,
    log_batch_geometry,
    maybe_add_lora,
    packed_kernel,
    save_trained,
    training_lock,
)
from zephyr.train.sft import TrainResult
from zephyr.train.trainer import DPOTrainer

log = logging.getLogger(__name__)


def pair_collator(args: DPOConfig, pad_token_id: int) -> PairCollator:
    layout = "shared" if args.prefix_sharing else ("packed" if args.padding_free else "padded")
    return PairCollator(layout, pad_token_id)


def prepare_dpo_data(tokenizer, data_args: DataArguments, args: DPOConfig) -> dict:
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
    """The starting policy. An SFT LoRA adapter is merged into its base first, so the DPO adapters (or full
    weights) train on top of the SFT model and disabling them gives back exactly the SFT model."""
    model = load_model(model_args.model_name_or_path, model_args, for_training=True)
    if hasattr(model, "merge_and_unload"):
        log.info(
            "Merging the SFT adapter of %s into its base model before DPO", model_args.model_name_or_path
        )
        model = model.merge_and_unload()
        model.config.use_cache = False
    fit_embeddings_to_tokenizer(model, tokenizer)
    return model


def load_reference(model_args: ModelArguments, args: DPOConfig, tokenizer):
    """A separate frozen reference, or None when the policy's disabled adapters will serve."""
    if model_args.use_peft and args.ref_model_name_or_path is None:
        return None
    spec = args.ref_model_name_or_path or model_args.model_name_or_path
    ref = load_model(spec, model_args)
    if hasattr(ref, "merge_and_unload"):
        ref = ref.merge_and_unload()
    fit_embeddings_to_tokenizer(ref, tokenizer)
    return ref.eval().requires_grad_(False)


def match_reference_dtype(ref, policy):
    """The reference in the policy's dtype: a separate reference checkpoint saved in another dtype would
    otherwise score in fp32 against a bf16 policy (or the reverse), and the log-ratios would carry the
    rounding difference as if the policy had moved."""
    want = next(policy.parameters()).dtype
    have = next(ref.parameters()).dtype
    quantized = getattr(ref, "is_quantized", False) or getattr(policy, "is_quantized", False)
    if have != want and have.is_floating_point and want.is_floating_point and not quantized:
        log.warning(
            "The reference model loaded in %s and the policy in %s; casting the reference to %s",
            have,
            want,
            want,
        )
        ref = ref.to(want)
    return ref


def precompute_all(data: dict, policy, model_args: ModelArguments, args: DPOConfig, tokenizer) -> None:
    """Reference log-probs for every split, from the cache or computed now.

    When the reference is the starting policy (the default), the policy itself scores the data
    before training starts, so no second copy of the model is ever loaded.
    """
    from accelerate import PartialState

    state = PartialState()
    separate = args.ref_model_name_or_path is not None
    ref = load_reference(model_args, args, tokenizer) if separate else policy
    ref.to(state.device)
    collator = pair_collator(args, tokenizer.pad_token_id)
    for name in list(data):
        data[name] = precompute_reference_logps(
            data[name],
            ref,
            collator,
            args.per_device_eval_batch_size,
            state,
            name,
            args.ref_cache_dir,
            kernel=packed_kernel(args, training=False),
            ld_alpha=args.ld_alpha,
        )
    if separate:
        del ref
        gc.collect()


def dpo(
    model_args: ModelArguments, data_args: DataArguments, args: DPOConfig, recipe: dict | None = None
) -> TrainResult:
    """Align a model on preference pairs with DPO; save a ready-to-load checkpoint with a model card."""
    with training_lock(args, "zephyr dpo"):  # the whole run: a second run on output_dir fails at once
        return _dpo(model_args, data_args, args, recipe)


def _dpo(model_args: ModelArguments, data_args: DataArguments, args: DPOConfig, recipe: dict | None):
    from transformers import set_seed

    set_seed(args.seed)
    tokenizer = load_run_tokenizer(model_args, data_args)
    data = prepare_dpo_data(tokenizer, data_args, args)
    model = load_policy(model_args, tokenizer)
    if args.precompute_ref_log_probs:
        precompute_all(data, model, model_args, args, tokenizer)
        ref_model = None  # the reference is never needed in memory while training
        model = maybe_add_lora(model, model_args, args)
    else:
        model = maybe_add_lora(model, model_args, args)
        ref_model = load_reference(model_args, args, tokenizer)
        if ref_model is not None:
            ref_model = match_reference_dtype(ref_model, model)
        if ref_model is not None and args.padding_free:
            use_packed_attention(ref_model, packed_kernel(args))
    log_batch_geometry(
        args, data["train"], unit="pairs", token_columns=("prompt_ids", "chosen_ids", "rejected_ids")
    )
    collator = pair_collator(args, tokenizer.pad_token_id)
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data.get("test"),
        data_collator=collator,
        processing_class=tokenizer,
    )
    metrics = save_trained(
        trainer, tokenizer, args, "dpo", model_args, recipe or to_dict(model_args, data_args, args)
    )
    return TrainResult(str(Path(args.output_dir)), metrics)
