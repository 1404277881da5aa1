"""Direct preference optimisation from the dSFT model (dDPO): `zephyr dpo` and the ``dpo`` function."""

from __future__ import annotations

import gc
import logging

from zephyr.data.config import DataArguments
from zephyr.models import ModelArguments, fit_embeddings_to_tokenizer, load_model
from zephyr.train.attention import use_packed_attention
from zephyr.train.config import DPOConfig, ReferenceConfig
from zephyr.train.preference import fit_on_pairs, load_policy, pair_collator, prepare_preference_data
from zephyr.train.reference import precompute_reference_logps
from zephyr.train.setup import load_run_tokenizer, maybe_add_lora, packed_kernel, training_lock
from zephyr.train.sft import TrainResult
from zephyr.train.trainer import DPOTrainer

log = logging.getLogger(__name__)


def load_reference(model_args: ModelArguments, args: ReferenceConfig, tokenizer):
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


def precompute_all(
    data: dict, policy, model_args: ModelArguments, args: ReferenceConfig, tokenizer, collator=None
) -> None:
    """Reference log-probs for every split, from the cache or computed now, for every completion ``collator``
    scores (default: the run's pair collator).

    When the reference is the starting policy (the default), the policy itself scores the data
    before training starts, so no second copy of the model is ever loaded.
    """
    from accelerate import PartialState

    state = PartialState()
    separate = args.ref_model_name_or_path is not None
    ref = load_reference(model_args, args, tokenizer) if separate else policy
    ref.to(state.device)
    collator = collator or pair_collator(args, tokenizer.pad_token_id)
    for name in list(data):
        data[name] = precompute_reference_logps(
            data[name],
            ref,
            collator,
            args.precompute_ref_batch_size or args.per_device_eval_batch_size,
            state,
            name,
            args.ref_cache_dir,
            kernel=packed_kernel(args, training=False),
            ld_alpha=getattr(args, "ld_alpha", None),
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


def with_reference(data: dict, model, model_args: ModelArguments, args: ReferenceConfig, tokenizer, collator):
    """The policy to train (LoRA added when asked) and the reference model to train against: None when the
    reference log-probs were precomputed into ``data`` (the reference is then never in memory while
    training) or when the policy's disabled adapters serve as the reference."""
    if args.precompute_ref_log_probs:
        precompute_all(data, model, model_args, args, tokenizer, collator)
        return maybe_add_lora(model, model_args, args), None
    model = maybe_add_lora(model, model_args, args)
    ref_model = load_reference(model_args, args, tokenizer)
    if ref_model is not None:
        ref_model = match_reference_dtype(ref_model, model)
        if args.padding_free:
            use_packed_attention(ref_model, packed_kernel(args))
    return model, ref_model


def _dpo(model_args: ModelArguments, data_args: DataArguments, args: DPOConfig, recipe: dict | None):
    from transformers import set_seed

    set_seed(args.seed)
    tokenizer = load_run_tokenizer(model_args, data_args)
    data = prepare_preference_data(tokenizer, data_args, args)
    collator = pair_collator(args, tokenizer.pad_token_id)
    model, ref_model = with_reference(
        data, load_policy(model_args, tokenizer), model_args, args, tokenizer, collator
    )
    return fit_on_pairs(
        DPOTrainer,
        model,
        tokenizer,
        data,
        collator,
        "dpo",
        model_args,
        data_args,
        args,
        recipe,
        ref_model=ref_model,
    )
