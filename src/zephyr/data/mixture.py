"""Dataset mixtures in both alignment-handbook recipe forms, returning `train` and `test` splits.

Old form (``dataset_mixer`` + ``dataset_splits``), as the handbook's ``mix_datasets``: each train split
keeps its first ``int(fraction * len)`` rows, test splits are kept whole ("no subsampling for test
datasets to enable fair comparison across models"), and each side is concatenated then shuffled with
seed 42.

New form (``dataset_mixture``), as the handbook's ``get_dataset``: each entry is loaded, its columns
selected, and with a ``weight`` shuffled with ``seed`` and cut to ``int(weight * len)`` rows; all
entries are concatenated and shuffled with ``seed``; ``test_split_size`` then holds out a test split.

TRL's single-dataset form (``dataset_name``, ``dataset_config``, ``dataset_train_split``,
``dataset_test_split``), as the handbook's scripts use it when no mixture is given: the named splits,
unshuffled and uncut (the trainer's sampler shuffles); a source without the test split trains only.

Ids in every form are local files or directories, or hub ids (see ``load_rows``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from datasets import Dataset, DatasetDict

from zephyr.config import check_keys
from zephyr.data.loading import concat_rows, has_splits, load_rows
from zephyr.errors import ConfigError, SplitNotFound

if TYPE_CHECKING:
    from zephyr.data.config import DataArguments
    from zephyr.data.schemas import UnpairedRules

log = logging.getLogger(__name__)

MIXTURE_KEYS = ("datasets", "seed", "test_split_size")
ENTRY_KEYS = ("id", "config", "split", "columns", "weight")


def load_datasets(data_args: DataArguments, kind: str, rules: UnpairedRules | None = None) -> DatasetDict:
    """The train/test splits a recipe's data settings describe, cut to max_train/eval_samples. ``rules`` label
    rated completions read as ``unpaired`` rows."""
    if data_args.dataset_mixture is not None:
        splits = load_mixture(data_args.dataset_mixture, kind, on_error=data_args.on_error, rules=rules)
    elif data_args.dataset_name is not None:
        splits = load_named(data_args, kind, rules)
    elif data_args.dataset_mixer:
        splits = load_mixer(
            data_args.dataset_mixer,
            data_args.dataset_splits,
            kind,
            configs=data_args.dataset_configs,
            on_error=data_args.on_error,
            rules=rules,
        )
    else:
        raise ConfigError(
            "No dataset given: set `dataset_name`, `dataset_mixer` (with `dataset_splits`) or `dataset_mixture`"
        )
    for name, limit in (("train", data_args.max_train_samples), ("test", data_args.max_eval_samples)):
        if limit is not None and name in splits:
            if limit < 0:
                raise ConfigError(
                    f"`max_{'train' if name == 'train' else 'eval'}_samples` must be >= 0; got {limit}"
                )
            splits[name] = splits[name].select(range(min(limit, len(splits[name]))))
    log.info("Data: %s", ", ".join(f"{name} {len(ds)} rows" for name, ds in splits.items()))
    return splits


# --- TRL's single dataset ---------------------------------------------------------------------------


def load_named(data_args: DataArguments, kind: str, rules: UnpairedRules | None = None) -> DatasetDict:
    """``dataset_name``'s train split and, when the source has splits and that one, its test split."""
    name, config = data_args.dataset_name, data_args.dataset_config
    out = DatasetDict()
    read = dict(config=config, on_error=data_args.on_error, rules=rules)
    out["train"] = load_rows(name, kind, split=data_args.dataset_train_split, **read).dataset
    test = data_args.dataset_test_split
    if not has_splits(name):
        log.info("%s is a single table: using it as training data only", name)
    elif test:
        try:
            out["test"] = load_rows(name, kind, split=test, **read).dataset
        except SplitNotFound:
            log.info("%s has no `%s` split: nothing to evaluate on", name, test)
    return out


# --- old form --------------------------------------------------------------------------------------


def load_mixer(
    dataset_mixer: dict[str, float],
    splits: list[str],
    kind: str,
    configs: list[str] | None = None,
    columns: list[str] | None = None,
    seed: int = 42,
    on_error: str = "raise",
    rules: UnpairedRules | None = None,
) -> DatasetDict:
    """The handbook's ``dataset_mixer``: {id: fraction of each train split}; test splits are never cut."""
    configs = _check_mixer(dataset_mixer, splits, configs)
    train, test = [], []
    for (spec, fraction), config in zip(dataset_mixer.items(), configs, strict=True):
        for split in _splits_of(spec, splits):
            ds = load_rows(
                spec, kind, split=split, config=config, columns=columns, on_error=on_error, rules=rules
            ).dataset
            if "train" in split:
                train.append(ds.select(range(int(fraction * len(ds)))))
            else:
                test.append(ds)
    out = DatasetDict()
    if train:
        out["train"] = concat_rows(train).shuffle(seed=seed)
    if test:
        out["test"] = concat_rows(test).shuffle(seed=seed)
    return out


def _check_mixer(dataset_mixer, splits, configs) -> list:
    if not isinstance(dataset_mixer, dict) or not dataset_mixer:
        raise ConfigError(
            f"`dataset_mixer` must map dataset ids or paths to fractions; got {dataset_mixer!r}"
        )
    for spec, fraction in dataset_mixer.items():
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1:
            raise ConfigError(f"`dataset_mixer.{spec}` must be a fraction between 0 and 1; got {fraction!r}")
    if isinstance(splits, str) or not isinstance(splits, list) or not splits:
        raise ConfigError(f"`dataset_splits` must be a list of split names; got {splits!r}")
    for split in splits:
        if not isinstance(split, str) or ("train" not in split and "test" not in split):
            raise ConfigError(
                f"Split {split!r} in `dataset_splits` is neither a train nor a test split (its name must contain `train` or `test`)"
            )
    if not configs:
        return [None] * len(dataset_mixer)
    if len(configs) != len(dataset_mixer):
        raise ConfigError(
            f"`dataset_configs` has {len(configs)} entries but `dataset_mixer` has {len(dataset_mixer)} datasets"
        )
    return list(configs)


def _splits_of(spec: str, splits: list[str]) -> list[str]:
    """A source without splits (one file) is training data: read it once, for the first train split."""
    if has_splits(spec):
        return splits
    log.info("%s is a single table: using it as training data only", spec)
    return [s for s in splits if "train" in s][:1]


# --- new form --------------------------------------------------------------------------------------


def load_mixture(
    mixture: dict, kind: str, on_error: str = "raise", rules: UnpairedRules | None = None
) -> DatasetDict:
    """The handbook's ``dataset_mixture``: {datasets: [{id, config, split, columns, weight}], seed, test_split_size}."""
    entries, seed, test_size = _check_mixture(mixture)
    parts = []
    for entry in entries:
        ds = load_rows(
            entry["id"],
            kind,
            split=entry.get("split", "train"),
            config=entry.get("config"),
            columns=entry.get("columns"),
            on_error=on_error,
            rules=rules,
        ).dataset
        parts.append(_weighted(ds, entry.get("weight"), seed))
    combined = concat_rows(parts).shuffle(seed=seed)
    if test_size is None:
        return DatasetDict({"train": combined})
    try:
        return combined.train_test_split(test_size=test_size, seed=seed)
    except ValueError as exc:
        raise ConfigError(
            f"`dataset_mixture.test_split_size` {test_size!r} does not fit {len(combined)} rows: {exc}"
        ) from None


def _weighted(ds: Dataset, weight: float | None, seed: int) -> Dataset:
    if weight is None:
        return ds
    return ds.shuffle(seed=seed).select(range(int(weight * len(ds))))


def _check_mixture(mixture) -> tuple[list[dict], int, float | int | None]:
    if not isinstance(mixture, dict):
        raise ConfigError(
            f"`dataset_mixture` must be a mapping with a `datasets` list; got {type(mixture).__name__}"
        )
    check_keys(mixture, MIXTURE_KEYS, "`dataset_mixture`")
    entries = mixture.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            "`dataset_mixture.datasets` must be a non-empty list of {id, config, split, columns, weight}"
        )
    for i, entry in enumerate(entries):
        _check_entry(entry, f"dataset_mixture.datasets[{i}]")
    seed = mixture.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"`dataset_mixture.seed` must be an integer; got {seed!r}")
    test_size = mixture.get("test_split_size")
    if test_size is not None and (
        isinstance(test_size, bool)
        or not isinstance(test_size, (int, float))
        or test_size <= 0
        or (isinstance(test_size, float) and test_size >= 1)
    ):
        raise ConfigError(
            f"`dataset_mixture.test_split_size` must be a fraction in (0, 1) or a row count; got {test_size!r}"
        )
    return entries, seed, test_size


def _check_entry(entry, where: str) -> None:
    if not isinstance(entry, dict):
        raise ConfigError(f"`{where}` must be a mapping with keys {', '.join(ENTRY_KEYS)}; got {entry!r}")
    check_keys(entry, ENTRY_KEYS, f"`{where}`")
    if not isinstance(entry.get("id"), str) or not entry["id"]:
        raise ConfigError(
            f"`{where}.id` must name a dataset (a hub id or a local path); got {entry.get('id')!r}"
        )
    for key in ("config", "split"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise ConfigError(f"`{where}.{key}` must be a string; got {entry[key]!r}")
    columns = entry.get("columns")
    if columns is not None and (
        not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)
    ):
        raise ConfigError(f"`{where}.columns` must be a list of column names; got {columns!r}")
    weight = entry.get("weight")
    if weight is not None and (
        isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1
    ):
        raise ConfigError(f"`{where}.weight` must be a fraction between 0 and 1; got {weight!r}")
