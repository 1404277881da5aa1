"""Kahneman-Tversky optimisation (KTO) on unpaired rows: `zephyr kto` and the ``kto`` function.

KTO as TRL 1.16's KTOTrainer computes it, on zephyr's prefix-shared, packed or padded batches. Each row is
one completion labelled desirable or undesirable: TRL's unpaired rows, preference pairs (one row per side)
or rated completions (the `zephyr feedback` output, labelled by ``kto_threshold``), all read by the
``unpaired`` row kind of ``zephyr.data``.

The KL term. KTO's reference point z0 estimates KL(pi || pi_ref) from mismatched prompt/completion pairs.
As in TRL, each row's KL completion is fixed in the data: within consecutive chunks of
``per_device_train_batch_size`` rows, row i takes the completion of row i-1 (the first row the last one's),
cut to fit ``max_length`` after its own prompt. With the sequential sampler (TRL's and our default) each
training batch is exactly one chunk, so its KL completions are its own completions paired with other
prompts, which is what the KTO paper asks for. Because the pairing lives in the data, a precomputed
reference needs no particular batch order to be right: the reference log-probs of each row's KL sequence
are cached with the row, and the cache key (the data's token ids, KL completions included) changes whenever
the pairing does (another batch size, seed or data).

Two choices differ from TRL and are deliberate: the rows are shuffled once with ``seed`` before pairing
(TRL keeps the dataset order, and unpairs preference data block-wise, chosen rows first, so its sequential
batches mostly hold one class; adjacent rows of one pair would also make a row's "mismatched" KL completion
its own prompt's other reply); and a lone last row of a chunk takes the previous chunk's last completion
instead of its own.
"""

from __future__ import annotations

import logging

from zephyr.data.config import DataArguments
from zephyr.errors import ConfigError, DataError
from zephyr.models import ModelArguments
from zephyr.train.collate import PairCollator
from zephyr.train.config import KTOConfig
from zephyr.train.dpo import with_reference
from zephyr.train.dpo_data import tokenize_preferences
from zephyr.train.preference import disable_dropout, fit_on_pairs, load_policy
from zephyr.train.setup import load_run_tokenizer, training_lock
from zephyr.train.sft import TrainResult
from zephyr.train.trainer import KTOTrainer

log = logging.getLogger(__name__)

# TRL's advice (from the KTO paper's Eq. 8): desirable_weight * n_D / (undesirable_weight * n_U) in [1, 4/3].
BALANCE = (1.0, 4 / 3)


def kl_partners(n: int, batch_size: int) -> list[int]:
    """For each of ``n`` rows, the row whose completion becomes its KL completion: a rotation by one within
    consecutive chunks of ``batch_size`` rows (TRL's), except that a chunk of one row (the last, when
    ``batch_size`` does not divide ``n``) takes the row before it rather than itself.

    >>> kl_partners(7, 3)
    [2, 0, 1, 5, 3, 4, 5]
    """
    out: list[int] = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        if stop - start == 1 and start > 0:
            out.append(start - 1)
        else:
            out += [stop - 1, *range(start, stop - 1)]
    return out


def add_kl_completions(dataset, batch_size: int, max_length: int):
    """The token rows with a ``kl_completion_ids`` column: each row's partner's completion (``kl_partners``),
    cut so that the row's prompt plus it fits ``max_length`` (TRL cuts the KL sequence the same way)."""
    prompts, completions = dataset["prompt_ids"], dataset["completion_ids"]
    partners = kl_partners(len(dataset), batch_size)
    kl = [completions[j][: max_length - len(prompts[i])] for i, j in enumerate(partners)]
    return dataset.add_column("kl_completion_ids", kl)


def balance_warning(n_desirable: int, n_undesirable: int, desirable_weight: float, undesirable_weight: float):
    """The warning for data whose weighted class ratio is outside TRL's advised range, or None when it is in.
    TRL checks only when the two counts differ; this checks the weighted ratio whatever the counts."""
    ratio = desirable_weight * n_desirable / (undesirable_weight * n_undesirable)
    low, high = BALANCE
    if low <= ratio <= high:
        return None
    d_low = undesirable_weight * n_undesirable / n_desirable
    u_high = desirable_weight * n_desirable / n_undesirable
    return (
        f"KTO: the training data has {n_desirable} desirable and {n_undesirable} undesirable rows, so "
        f"desirable_weight * n_desirable / (undesirable_weight * n_undesirable) = {desirable_weight:g} * "
        f"{n_desirable} / ({undesirable_weight:g} * {n_undesirable}) = {ratio:.3f}, outside [1, 4/3], the range "
        "TRL advises (after the KTO paper's Eq. 8). To bring it in, set `desirable_weight` to "
        f"{d_low:.3f}-{d_low * high:.3f} (keeping undesirable_weight {undesirable_weight:g}), or "
        f"`undesirable_weight` to {u_high / high:.3f}-{u_high:.3f} (keeping desirable_weight {desirable_weight:g})"
    )


def check_classes(labels: list[bool], scores: list, args: KTOConfig) -> None:
    """Both classes must be present in the training rows (else a clear error, before any model loads); an
    unbalanced mix gets TRL's weighting advice."""
    n_desirable = sum(labels)
    n_undesirable = len(labels) - n_desirable
    log.info("KTO train: %d desirable and %d undesirable rows", n_desirable, n_undesirable)
    if not n_desirable or not n_undesirable:
        missing = "undesirable (label false)" if n_desirable else "desirable (label true)"
        rated = [s for s in scores if s is not None]
        hint = (
            f"; its rated completions score {min(rated):g}-{max(rated):g} on `{args.kto_score_field}`, and "
            f"`kto_threshold` is {args.unpaired_rules().cut():g} (desirable at or above it): move it between "
            "those scores"
            if rated
            else ""
        )
        raise DataError(
            f"KTO needs both desirable and undesirable rows, and the train split has no {missing} rows "
            f"({n_desirable} desirable, {n_undesirable} undesirable){hint}",
            source="train split",
        )
    warning = balance_warning(n_desirable, n_undesirable, args.desirable_weight, args.undesirable_weight)
    if warning:
        log.warning(warning)


def prepare_kto_data(tokenizer, data_args: DataArguments, args: KTOConfig) -> dict:
    """The train (and, when there is one, test) split as token rows ``{prompt_ids, completion_ids, label}``,
    shuffled once with ``seed``, with their KL completions when the loss needs them."""
    from zephyr.data import load_datasets

    splits = load_datasets(data_args, kind="unpaired", rules=args.unpaired_rules())
    out = {}
    for name in ("train", "test"):
        if name not in splits or not len(splits[name]):
            continue
        with args.main_process_first(desc=f"tokenizing {name}"):
            rows, _, _ = tokenize_preferences(
                splits[name],
                tokenizer,
                args.max_length,
                args.max_prompt_length,
                data_args.on_error,
                data_args.auto_insert_empty_system_msg,
                split=name,
                unpaired=True,
            )
        if name == "train":
            check_classes(rows["label"], splits[name]["score"], args)
        rows = rows.shuffle(seed=args.seed).flatten_indices()
        if args.uses_kl:  # TRL pairs the eval rows in chunks of the training batch size too
            rows = add_kl_completions(rows, args.per_device_train_batch_size, args.max_length)
        out[name] = rows
    if "train" not in out:
        raise ConfigError("The KTO data has no training rows; check the dataset settings and splits")
    return out


def kto_collator(args: KTOConfig, pad_token_id: int) -> PairCollator:
    """The run's layout, each row scored as its completion and (for the loss types with a KL term) its KL
    completion, which shares the row's prompt in the prefix-shared layout."""
    completions = ("completion_ids", "kl_completion_ids") if args.uses_kl else ("completion_ids",)
    return PairCollator(args.pair_layout, pad_token_id, completions=completions, passthrough=("label",))


def kto(
    model_args: ModelArguments, data_args: DataArguments, args: KTOConfig, recipe: dict | None = None
) -> TrainResult:
    """Align a model with KTO on unpaired rows; save a ready-to-load checkpoint with a model card."""
    from transformers import set_seed

    with training_lock(args, "zephyr kto"):  # the whole run: a second run on output_dir fails at once
        set_seed(args.seed)
        tokenizer = load_run_tokenizer(model_args, data_args)
        data = prepare_kto_data(tokenizer, data_args, args)
        collator = kto_collator(args, tokenizer.pad_token_id)
        model, ref_model = with_reference(
            data, load_policy(model_args, tokenizer), model_args, args, tokenizer, collator
        )
        if args.disable_dropout:  # after LoRA, as TRL does: its adapters' dropout goes too
            for module in (model, ref_model):
                if module is not None:
                    disable_dropout(module)
        return fit_on_pairs(
            KTOTrainer,
            model,
            tokenizer,
            data,
            collator,
            "kto",
            model_args,
            data_args,
            args,
            recipe,
            unit="rows",
            ref_model=ref_model,
        )
