"""Reading rows from files, saved datasets and the hub into one of the normal schemas.

A source is a ``.jsonl``/``.json``/``.parquet`` file, a directory written by ``save_to_disk``, a
directory of data files named after their split (``train_sft.jsonl``, ``data/test-00000-of-00001.parquet``)
or a hub id. Text files are parsed here rather than by ``datasets`` so that a bad row is reported by its
line number; Arrow-backed sources report the 0-based row index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets import Dataset, DatasetDict, Features, concatenate_datasets, load_from_disk
from tqdm.auto import tqdm

from zephyr.data.schemas import (
    FEATURES,
    UnpairedRules,
    check_kind,
    extra_columns,
    normalise_rows,
    settle_types,
)
from zephyr.errors import ConfigError, DataError, SplitNotFound, ZephyrError
from zephyr.io import read_jsonl, write_dir_atomic, write_json, write_jsonl
from zephyr.resources import resolve_resource

log = logging.getLogger(__name__)

DATA_SUFFIXES = (".jsonl", ".json", ".parquet")
ON_ERROR = ("raise", "skip")
# `train_sft-00000-of-00003-1a2b.parquet` (the hub's shard names) belongs to split `train_sft`.
_SHARD = re.compile(r"^(.+?)(?:-\d+-of-\d+.*)?$")


@dataclass
class LoadResult:
    """Normalised rows, and what was skipped with ``on_error="skip"``."""

    dataset: Dataset
    skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)  # the first few error messages


@dataclass
class _Records:
    """Rows parsed here from a text file, each with its location (a DataError for an unreadable line)."""

    label: str
    items: list[tuple[dict, Any]]


@dataclass
class _Table:
    """Rows already in Arrow (Parquet, saved datasets, the hub)."""

    label: str
    dataset: Dataset


class _Skips:
    """Raises each DataError, or (``on_error="skip"``) counts it and keeps the first few messages."""

    def __init__(self, on_error: str, keep: int = 5):
        self.on_error, self.keep = on_error, keep
        self.count, self.examples = 0, []

    def add(self, err: DataError) -> None:
        if self.on_error == "raise":
            raise err
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(str(err))


def load_rows(
    spec: str | os.PathLike,
    kind: str,
    *,
    split: str | None = None,
    config: str | None = None,
    columns: list[str] | None = None,
    on_error: str = "raise",
    rules: UnpairedRules | None = None,
) -> LoadResult:
    """Read ``spec`` and normalise every row to ``kind`` (see ``zephyr.data.schemas``).

    ``split`` picks a split of a saved DatasetDict, a directory of split files, a JSON object of split
    name -> rows, or a hub dataset; a single JSONL/Parquet file is one table and ignores it. ``columns``
    keeps only those raw columns before normalising. A bad row raises a DataError naming the file,
    line (or row) and field, or with ``on_error="skip"`` is skipped and counted. ``rules`` label the rated
    completions read as ``unpaired`` rows (default ``UnpairedRules()``).
    """
    check_kind(kind)
    if on_error not in ON_ERROR:
        raise ConfigError(f"`on_error` must be `raise` or `skip`; got {on_error!r}")
    if columns is not None and (
        not isinstance(columns, list) or not all(isinstance(c, str) for c in columns)
    ):
        raise ConfigError(f"`columns` must be a list of column names; got {columns!r}")
    skips = _Skips(on_error)
    rules = rules or UnpairedRules()
    parts = [
        _normalise(part, kind, columns, skips, rules)
        for part in read_source(spec, split=split, config=config)
    ]
    dataset = concat_rows(parts)
    if skips.count:
        log.warning("Skipped %d malformed row(s) of %s; the first: %s", skips.count, spec, skips.examples[0])
    return LoadResult(dataset, skips.count, skips.examples)


def concat_rows(parts: list[Dataset]) -> Dataset:
    """Concatenate normalised datasets, keeping the columns they all have with the same type (the kind's
    own columns always qualify; a pass-through column one source lacks is dropped)."""
    nonempty = [p for p in parts if len(p)] or parts[:1]
    if len(nonempty) == 1:
        return nonempty[0]
    first = nonempty[0]
    common = [c for c in first.column_names if all(p.features.get(c) == first.features[c] for p in nonempty)]
    return concatenate_datasets([p.select_columns(common) for p in nonempty])


def has_splits(spec: str | os.PathLike) -> bool:
    """False when ``spec`` is one table with no split names (a JSONL/Parquet file, a JSON array, a saved
    Dataset), so asking it for a `test` split would only repeat its rows."""
    path = Path(os.path.expanduser(resolve_resource(str(spec))))
    if path.is_dir():
        return not (path / "state.json").is_file()
    if not path.is_file():
        return True
    if path.suffix.lower() != ".json":
        return False
    try:
        return isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
    except (ValueError, UnicodeDecodeError):
        return False  # JSON Lines under a .json name, or broken: load_rows reports it


# --- sources ---------------------------------------------------------------------------------------


def read_source(spec: str | os.PathLike, *, split: str | None = None, config: str | None = None) -> list:
    """The raw parts of a source, before any row is checked."""
    text = resolve_resource(str(spec))
    path = Path(os.path.expanduser(text))
    if path.is_file():
        return [_read_file(path, split)]
    if path.is_dir():
        return _read_dir(path, split)
    if _looks_local(text):
        raise DataError("no such file or directory", source=text)
    return [_Table(text if split is None else f"{text} [{split}]", _read_hub(text, config, split))]


def _looks_local(spec: str) -> bool:
    # Hub ids are `name` or `org/name`; anything else path-like is a path that does not exist.
    return spec.startswith((".", "/", "~")) or spec.lower().endswith(DATA_SUFFIXES) or spec.count("/") > 1


def _read_file(path: Path, split: str | None):
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _Records(str(path), list(_jsonl_items(path)))
    if suffix == ".json":
        return _read_json(path, split)
    if suffix == ".parquet":
        try:
            return _Table(str(path), Dataset.from_parquet(str(path)))
        except (pa.lib.ArrowException, OSError) as exc:
            raise DataError(f"cannot be read as Parquet: {exc}", source=str(path)) from None
    raise DataError(
        f"unsupported file type `{suffix or path.name}`; use .jsonl, .json or .parquet, or a saved dataset directory",
        source=str(path),
    )


def _jsonl_items(path: Path):
    return read_jsonl(path, bad_lines="yield")


def _read_json(path: Path, split: str | None) -> _Records:
    label = str(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError("is not valid UTF-8", source=label) from None
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON Lines saved under a .json name
            return _Records(label, list(_jsonl_items(path)))
        raise DataError(
            f"malformed JSON: {exc.msg} (column {exc.colno})", source=label, line=exc.lineno
        ) from None
    if isinstance(data, dict):
        tables = {k: v for k, v in data.items() if isinstance(v, list)}
        name = choose_split(list(tables), split, label)
        data, label = tables[name], f"{label} [{name}]"
    if not isinstance(data, list):
        raise DataError(
            f"must hold a JSON array of rows, or an object of split name -> rows; got {type(data).__name__}",
            source=label,
        )
    return _Records(label, [({"source": label, "row": i}, row) for i, row in enumerate(data)])


def _read_dir(path: Path, split: str | None) -> list:
    if (path / "dataset_dict.json").is_file():
        splits = load_from_disk(str(path))
        name = choose_split(list(splits), split, str(path))
        return [_Table(f"{path} [{name}]", splits[name])]
    if (path / "state.json").is_file():
        return [_Table(str(path), load_from_disk(str(path)))]
    if split and (path / split).is_dir():  # the handbook's fallback: DIR/SPLIT saved with save_to_disk
        return _read_dir(path / split, None)
    return [_read_file(f, split) for f in _split_files(path, split)]


def _split_files(path: Path, split: str | None) -> list[Path]:
    found: dict[str, list[Path]] = {}
    for folder in (path, path / "data"):
        if not folder.is_dir():
            continue
        for f in sorted(folder.iterdir()):
            if f.is_file() and f.suffix.lower() in DATA_SUFFIXES:
                found.setdefault(_SHARD.match(f.stem).group(1), []).append(f)
    if not found:
        raise DataError("holds no saved dataset and no .jsonl, .json or .parquet files", source=str(path))
    return found[choose_split(list(found), split, str(path))]


def choose_split(names: list[str], split: str | None, label: str) -> str:
    """``split`` if the source has it; without one, the only split or `train`."""
    if split is not None:
        if split in names:
            return split
        raise SplitNotFound(
            f"{label} has no split `{split}`; its splits are: {', '.join(sorted(names)) or 'none'}"
        )
    if len(names) == 1:
        return names[0]
    if "train" in names:
        return "train"
    raise ConfigError(f"{label} has several splits ({', '.join(sorted(names))}); choose one with `split`")


def _read_hub(spec: str, config: str | None, split: str | None) -> Dataset:
    try:
        loaded = datasets.load_dataset(spec, config, split=split)
    except ZephyrError:
        raise
    except Exception as exc:  # offline, unknown id, gated repo, missing split: all reach the user as one line
        raise ZephyrError(
            f"Could not load dataset `{spec}` (config {config!r}, split {split!r}): no such local path, and the "
            f"Hugging Face hub failed with {type(exc).__name__}: {exc}. Check the path or id; offline, use a local "
            "file or directory instead."
        ) from exc
    if isinstance(loaded, DatasetDict):
        loaded = loaded[choose_split(list(loaded), split, spec)]
    return loaded


# --- normalising -----------------------------------------------------------------------------------


def _normalise(part, kind: str, columns: list[str] | None, skips: _Skips, rules: UnpairedRules) -> Dataset:
    if isinstance(part, _Records):
        return _normalise_records(part, kind, columns, skips, rules)
    return _normalise_table(part, kind, columns, skips, rules)


def _normalise_records(part: _Records, kind: str, columns, skips: _Skips, rules: UnpairedRules) -> Dataset:
    items = part.items
    if columns is not None:
        items = [
            (loc, {k: raw[k] for k in columns if k in raw} if isinstance(raw, dict) else raw)
            for loc, raw in items
        ]
    extras = extra_columns(kind, {k for _, raw in items if isinstance(raw, dict) for k in raw})
    rows = []
    progress = tqdm(items, desc=f"Checking {Path(part.label).name}", unit=" rows", disable=len(items) < 20000)
    for loc, raw in progress:
        try:
            if isinstance(raw, DataError):
                raise raw
            rows.extend(normalise_rows(kind, raw, loc, extras, rules))
        except DataError as err:
            skips.add(err)
    if not rows:
        return Dataset.from_dict({k: [] for k in FEATURES[kind]}, features=FEATURES[kind])
    features = settle_types(kind, extras, rows)
    try:  # straight to Arrow: several times faster than Dataset.from_list, which encodes row by row
        return Dataset(pa.Table.from_pylist(rows, schema=features.arrow_schema))
    except (pa.lib.ArrowException, TypeError, ValueError) as exc:
        raise DataError(
            f"a column holds values of different types in different rows ({exc})", source=part.label
        ) from None


def _normalise_table(part: _Table, kind: str, columns, skips: _Skips, rules: UnpairedRules) -> Dataset:
    ds = part.dataset
    if columns is not None:
        missing = [c for c in columns if c not in ds.column_names]
        if missing:
            raise DataError(
                f"has no column `{missing[0]}`; its columns are: {', '.join(ds.column_names)}",
                source=part.label,
            )
        ds = ds.select_columns(columns)
    extras = extra_columns(kind, ds.column_names)
    features = Features({**FEATURES[kind], **{k: ds.features[k] for k in extras}})
    key = (ds._fingerprint, kind, extras, skips.on_error) + ((rules,) if kind == "unpaired" else ())
    fingerprint = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
    check = partial(
        _normalise_batch,
        kind=kind,
        label=part.label,
        extras=extras,
        keys=tuple(features),
        skips=skips,
        rules=rules,
    )
    return ds.map(
        check,
        batched=True,
        with_indices=True,
        remove_columns=ds.column_names,
        features=features,
        load_from_cache_file=False,  # the skip count is gathered while mapping, so always map
        keep_in_memory=not _cache_writable(ds),
        new_fingerprint=fingerprint,
        desc=f"Checking {part.label}",
    )


def _normalise_batch(
    batch: dict, indices: list[int], *, kind, label, extras, keys, skips: _Skips, rules: UnpairedRules
) -> dict:
    out = {k: [] for k in keys}
    for j, index in enumerate(indices):
        raw = {name: values[j] for name, values in batch.items()}
        try:
            rows = normalise_rows(kind, raw, {"source": label, "row": index}, extras, rules)
        except DataError as err:
            skips.add(err)
            continue
        for row in rows:
            for k in keys:
                out[k].append(row[k])
    return out


def _cache_writable(ds: Dataset) -> bool:
    # map() writes its result next to the source's Arrow files; a read-only source is mapped in memory.
    return all(os.access(os.path.dirname(f["filename"]), os.W_OK) for f in ds.cache_files)


def source_rows(
    spec: str, *, split: str | None = None, config: str | None = None
) -> Iterator[tuple[dict, Any, list[str]]]:
    """``(location, raw row or DataError, the part's column names)`` for every row of any source that
    ``read_source`` reads, so a stage can report each bad row instead of stopping at the first."""
    for part in read_source(spec, split=split, config=config):
        if hasattr(part, "items"):  # text files, parsed line by line (bad lines come as DataErrors)
            names = sorted({k for _, raw in part.items if isinstance(raw, dict) for k in raw})
            for loc, raw in part.items:
                yield loc, raw, names
        else:  # Arrow-backed: Parquet, saved datasets, the hub
            names = part.dataset.column_names
            for i, raw in enumerate(part.dataset):
                yield {"source": part.label, "row": i}, raw, names


def write_dataset_dir(
    output_dir: str | os.PathLike, splits: dict[str, list[dict]], features, report_name: str, report: dict
) -> None:
    """Write splits as a `datasets` DatasetDict plus ``jsonl/<split>.jsonl`` and a JSON report, built in a
    staging directory beside ``output_dir`` and swapped in whole (readers never see half an output)."""

    def build(built: Path) -> None:
        empty = {k: [] for k in features}
        # One shard for an empty split: datasets' default of none makes the whole dict fail to load.
        DatasetDict(
            {
                name: Dataset.from_list(rows, features=features)
                if rows
                else Dataset.from_dict(empty, features=features)
                for name, rows in splits.items()
            }
        ).save_to_disk(str(built), num_shards={name: 1 for name, rows in splits.items() if not rows})
        for name, rows in splits.items():
            write_jsonl(built / "jsonl" / f"{name}.jsonl", rows)
        write_json(built / report_name, report)

    write_dir_atomic(output_dir, build)
