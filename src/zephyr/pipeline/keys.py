"""Stage keys: what decides whether a finished stage can be reused.

A stage's key hashes its effective settings, the keys of the stages it reads from, and a digest of
every local file or directory its settings name that no earlier stage produced (prompt files, local
datasets, judge prompts, a local model). Edit one line of ``prompts.jsonl`` and the generate stage's
key changes, so it reruns, and with it everything downstream.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# Settings that name what a stage writes, not what it reads.
OUTPUT_KEYS = frozenset({"output", "output_dir", "run_dir", "ref_cache_dir", "logging_dir"})
# Files larger than this are fingerprinted by size and modification time instead of read in full
# (model weights): reading gigabytes at every `zephyr run` would cost more than the check is worth.
FULL_HASH_LIMIT = 256 << 20


def stage_key(name: str, settings: dict, upstream: dict[str, str | None], inputs: dict[str, str]) -> str:
    payload = json.dumps(
        {"stage": name, "settings": settings, "upstream": upstream, "inputs": inputs},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def is_within(path: str | os.PathLike, roots: Iterable[str | os.PathLike]) -> bool:
    """True when ``path`` is one of ``roots`` or lies inside one (whole path components: `runs/a/model2`
    is not inside `runs/a/model`)."""
    target = Path(os.path.abspath(os.path.expanduser(str(path))))
    for root in roots:
        base = Path(os.path.abspath(os.path.expanduser(str(root))))
        if target == base or base in target.parents:
            return True
    return False


def strings_in(value: Any) -> Iterator[str]:
    """Every string in a settings tree, mapping keys included (`dataset_mixer: {data.jsonl: 1.0}`)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            if key in OUTPUT_KEYS:
                continue
            if isinstance(key, str):
                yield key
            yield from strings_in(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from strings_in(item)


def local_inputs(settings: dict, produced: Iterable[str]) -> list[Path]:
    """The existing local files and directories a stage's settings name, minus upstream outputs."""
    from zephyr.resources import resolve_resource

    produced = list(produced)
    found: dict[str, Path] = {}
    for text in strings_in(settings):
        if not text or len(text) > 4096 or "\n" in text:
            continue
        try:
            path = Path(os.path.expanduser(resolve_resource(text)))
            exists = path.exists()
        except (OSError, ValueError):
            continue
        # `.` or a parent of the working directory is not an input file (it would mean hashing a tree).
        if exists and not is_within(path, produced) and not is_within(Path.cwd(), [path]):
            found[str(path.resolve())] = path
    return [found[k] for k in sorted(found)]


def input_digests(settings: dict, produced: Iterable[str]) -> dict[str, str]:
    """``{path: digest}`` of the stage's local inputs (see ``local_inputs``)."""
    return {str(path): digest_path(path) for path in local_inputs(settings, produced)}


def digest_path(path: Path) -> str:
    """A content digest of a file, or of a directory tree (relative names and contents)."""
    h = hashlib.sha256()
    if path.is_file():
        _digest_file(h, path)
    else:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(file.relative_to(path)).encode() + b"\0")
            _digest_file(h, file)
    return h.hexdigest()[:16]


def _digest_file(h, path: Path) -> None:
    stat = path.stat()
    if stat.st_size > FULL_HASH_LIMIT:
        h.update(f"size={stat.st_size} mtime={stat.st_mtime_ns}".encode())
        return
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
