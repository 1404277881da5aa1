"""Data: reading sources, checking and normalising rows, and mixing datasets into train/test splits."""

from zephyr.data.loading import (
    LoadResult,
    concat_rows,
    has_splits,
    load_rows,
    read_source,
    source_rows,
    write_dataset_dir,
)
from zephyr.data.mixture import load_datasets, load_mixer, load_mixture
from zephyr.data.schemas import FEATURES, KINDS, MESSAGES, normalise_row, prompt_id_of

__all__ = [
    "FEATURES",
    "KINDS",
    "MESSAGES",
    "LoadResult",
    "concat_rows",
    "has_splits",
    "load_datasets",
    "load_mixer",
    "load_mixture",
    "load_rows",
    "normalise_row",
    "prompt_id_of",
    "read_source",
    "source_rows",
    "write_dataset_dir",
]
