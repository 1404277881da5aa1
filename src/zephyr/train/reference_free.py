"""Reference-free preference optimisation: `zephyr orpo`, `zephyr cpo`, `zephyr simpo` and their functions.

ORPO and CPO (with SimPO and AlphaPO) as TRL 1.16's experimental ORPOTrainer and CPOTrainer compute them,
on zephyr's padded, packed or prefix-shared pair batches. No reference model is loaded, copied or run,
and no reference log-probs are computed: a batch costs one forward of the policy. The data, the starting
policy (an SFT adapter merged first), LoRA, training and saving are those of `zephyr dpo`.
"""

from __future__ import annotations

from zephyr.data.config import DataArguments
from zephyr.models import ModelArguments
from zephyr.train.config import CPOConfig, ORPOConfig, ReferenceFreeConfig, SimPOConfig
from zephyr.train.preference import (
    disable_dropout,
    fit_on_pairs,
    load_policy,
    pair_collator,
    prepare_preference_data,
)
from zephyr.train.setup import load_run_tokenizer, maybe_add_lora, training_lock
from zephyr.train.sft import TrainResult
from zephyr.train.trainer import ReferenceFreeTrainer


def orpo(
    model_args: ModelArguments, data_args: DataArguments, args: ORPOConfig, recipe: dict | None = None
) -> TrainResult:
    """ORPO (Hong et al., 2024): SFT and preference in one loss, from a base or SFT model; saved with a card."""
    return _reference_free(model_args, data_args, args, recipe, "orpo")


def cpo(
    model_args: ModelArguments, data_args: DataArguments, args: CPOConfig, recipe: dict | None = None
) -> TrainResult:
    """CPO (Xu et al., 2024) and its loss types (sigmoid, hinge, ipo, simpo, alphapo); saved with a card."""
    return _reference_free(model_args, data_args, args, recipe, "cpo")


def simpo(
    model_args: ModelArguments, data_args: DataArguments, args: SimPOConfig, recipe: dict | None = None
) -> TrainResult:
    """SimPO (Meng et al., 2024): CPO's simpo loss with no NLL term and beta 2.0 by default; saved with a card."""
    return _reference_free(model_args, data_args, args, recipe, "simpo")


def _reference_free(
    model_args: ModelArguments,
    data_args: DataArguments,
    args: ReferenceFreeConfig,
    recipe: dict | None,
    stage: str,
) -> TrainResult:
    from transformers import set_seed

    with training_lock(args, f"zephyr {stage}"):  # the whole run: a second run on output_dir fails at once
        set_seed(args.seed)
        tokenizer = load_run_tokenizer(model_args, data_args)
        data = prepare_preference_data(tokenizer, data_args, args)
        model = maybe_add_lora(load_policy(model_args, tokenizer), model_args, args)
        if args.disable_dropout:  # after LoRA, as TRL does: its adapters' dropout goes too
            disable_dropout(model)
        collator = pair_collator(args, tokenizer.pad_token_id, score_context=True)
        return fit_on_pairs(
            ReferenceFreeTrainer, model, tokenizer, data, collator, stage, model_args, data_args, args, recipe
        )
