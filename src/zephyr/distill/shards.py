"""One stage's rows split across processes or nodes (`--shard I/N`), and the shards joined again.

A row belongs to shard ``I`` of ``N`` when a stable hash of its key (the prompt or dialogue id) is ``I``
modulo ``N``. Not its position: N processes reading the same input agree on the split without talking to
each other, and a row stays in its shard when the input is reordered or a run is extended
(``max_prompts``). Each shard is an ordinary resumable output of its own, ``NAME.shard-I-of-N.jsonl``,
with its settings, failures and lock beside it, plus a manifest (``NAME.shard-I-of-N.shard.json``) that
says whether the shard finished.

``merge_shards(NAME.jsonl)`` joins them after checking that all N are there and finished, that none is
still being written, that they were made with the same settings from the same input, and that no row
is in two shards or in the wrong one. The merged file gets the settings file an unsharded run would
have written, so rerunning the stage unsharded on it finds every row done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from zephyr.config import setting
from zephyr.errors import ConfigError, DataError
from zephyr.io import output_lock, read_jsonl, write_json, write_jsonl

log = logging.getLogger(__name__)

KEY = "prompt_id"  # the key field of every row the row-by-row stages write
# Side files that are rows too (finished, but kept apart from the output) and are merged with it.
ROW_SIDE_FILES = ("rejected.jsonl",)


def shard_setting() -> object:
    """The `shard` recipe key, spelled the same in every row-by-row stage."""
    return setting(
        "Work only on shard I of N (`I/N`, 0 <= I < N), split by a stable hash of each row's id, writing "
        "`OUTPUT.shard-I-of-N.jsonl`; join the N shards with `zephyr merge-shards OUTPUT`. Unset: "
        "`RANK`/`WORLD_SIZE` from a launcher when WORLD_SIZE > 1, else the whole input. `0/1`: never shard.",
        default=None,
    )


@dataclass(frozen=True)
class Shard:
    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def holds(self, key: str) -> bool:
        return shard_of(key, self.count) == self.index


def shard_of(key: str, count: int) -> int:
    """The shard of a row key: a hash of the key alone (Python's ``hash`` differs between processes)."""
    digest = hashlib.sha256(f"shard\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % count


def parse_shard(value: object) -> Shard | None:
    """``"I/N"`` -> Shard; None stays None. A clear error for anything else."""
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(value))
    index, count = (int(match.group(1)), int(match.group(2))) if match else (-1, 0)
    if not match or count < 1 or index >= count:
        raise ConfigError(
            f"`shard` must be I/N with N >= 1 and 0 <= I < N (e.g. 0/4 for the first of four); got {value!r}",
            key="shard",
        )
    return Shard(index, count)


def resolve_shard(value: object, env: dict | None = None) -> Shard | None:
    """The shard a run works on: the `shard` setting, else a launcher's RANK/WORLD_SIZE; None for all rows."""
    env = os.environ if env is None else env
    shard = parse_shard(value)
    if shard is None and env.get("WORLD_SIZE") not in (None, "", "1"):
        try:
            shard = parse_shard(f"{env['RANK']}/{env['WORLD_SIZE']}")
        except (KeyError, ConfigError):
            raise ConfigError(
                f"WORLD_SIZE={env.get('WORLD_SIZE')!r} and RANK={env.get('RANK')!r} do not name a shard: "
                "RANK must be a whole number below WORLD_SIZE. Set `shard: I/N` (or `0/1` to ignore them)"
            ) from None
        log.info("shard %s from the launcher's RANK and WORLD_SIZE", shard)
    return None if shard is None or shard.count == 1 else shard


def shard_path(output: Path, shard: Shard) -> Path:
    """``runs/x/dialogues.jsonl`` -> ``runs/x/dialogues.shard-0-of-4.jsonl``."""
    return output.with_name(f"{output.stem}.shard-{shard.index}-of-{shard.count}{output.suffix}")


def side_path(output: Path, suffix: str) -> Path:
    """``runs/x/completions.jsonl`` -> ``runs/x/completions.<suffix>``."""
    return output.with_name(f"{output.stem}.{suffix}")


def write_manifest(output: Path, record: dict) -> None:
    write_json(side_path(output, "shard.json"), record)


# ---- merging ----------------------------------------------------------------------------------------


@dataclass
class MergeResult:
    output: Path
    stage: str
    shards: int
    rows: int
    side_rows: dict[str, int]

    def summary(self) -> str:
        extra = "".join(f", {n} in {side_path(self.output, s)}" for s, n in self.side_rows.items() if n)
        return f"merge-shards: {self.shards} {self.stage} shards -> {self.rows} rows in {self.output}{extra}"


def find_shards(output: Path) -> dict[int, Path]:
    """Every ``NAME.shard-I-of-N.EXT`` beside ``output``, all with one N, keyed by I."""
    pattern = re.compile(rf"{re.escape(output.stem)}\.shard-(\d+)-of-(\d+){re.escape(output.suffix)}")
    found: dict[int, dict[int, Path]] = {}
    for path in sorted(output.parent.glob(f"{output.stem}.shard-*")) if output.parent.is_dir() else []:
        if match := pattern.fullmatch(path.name):
            found.setdefault(int(match.group(2)), {})[int(match.group(1))] = path
    if not found:
        raise ConfigError(
            f"No shards of {output} found (looked for {output.stem}.shard-I-of-N{output.suffix})"
        )
    if len(found) > 1:
        raise ConfigError(
            f"Shards of {output} from different splits are mixed: of {', '.join(map(str, sorted(found)))}; "
            "remove the ones from the old split"
        )
    ((count, shards),) = found.items()
    missing = [i for i in range(count) if i not in shards]
    if missing:
        raise ConfigError(
            f"{output}: shard(s) {', '.join(f'{i}/{count}' for i in missing)} of {count} are missing; run "
            f"them with `--shard I/{count}`"
        )
    return shards


def _manifest(path: Path, index: int, count: int) -> dict:
    manifest = side_path(path, "shard.json")
    try:
        record = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = {}
    if not record.get("complete"):
        state = (
            f"{record.get('done', 0)} of {record.get('shard_items', '?')} rows done, {record.get('failed', 0)} failed"
            if record
            else "it never finished"
        )
        raise ConfigError(
            f"Shard {index}/{count} ({path}) is not complete ({state}); rerun it with `--shard {index}/{count}`"
        )
    return record


def _settings(path: Path) -> dict:
    try:
        settings = json.loads(side_path(path, "settings.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise ConfigError(
            f"{path} has no readable settings file beside it; it was not written by a stage"
        ) from None
    settings.pop("shard", None)
    return settings


def _rows(path: Path, index: int, count: int, seen: dict[str, str]) -> list[dict]:
    """The rows of one shard file, checked: each has a key, in this shard, seen nowhere before."""
    rows = []
    if not path.is_file():
        return rows
    for loc, row in read_jsonl(path, objects=True):
        key = row.get(KEY)
        if not isinstance(key, str):
            raise DataError(f"has no `{KEY}` string", field=KEY, **loc)
        if shard_of(key, count) != index:
            raise DataError(
                f"holds row {key}, which belongs to shard {shard_of(key, count)}/{count}, not {index}/{count}: "
                "the file was renamed or written with another split",
                **loc,
            )
        if key in seen:
            raise DataError(f"repeats row {key}, already in {seen[key]}", field=KEY, **loc)
        seen[key] = f"{path.name}, line {loc['line']}"
        rows.append(row)
    return rows


def merge_shards(output: str | Path, *, overwrite: bool = False) -> MergeResult:
    """Join the N shards of ``output`` into it (rows sorted by key), after the checks in the module docstring."""
    output = Path(output)
    if output.exists() and output.stat().st_size and not overwrite:
        raise ConfigError(f"{output} already exists; pass --overwrite to replace it with the merged shards")
    shards = find_shards(output)
    count = len(shards)
    with contextlib.ExitStack() as locks:
        # Held to the end: no shard may be written (or the output resumed) while it is being merged.
        locks.enter_context(output_lock(output, "zephyr merge-shards"))
        for path in shards.values():
            locks.enter_context(output_lock(path, "zephyr merge-shards"))
        manifests = {i: _manifest(path, i, count) for i, path in shards.items()}
        settings = {i: _settings(path) for i, path in shards.items()}
        _check_agree(output, settings, manifests)
        seen: dict[str, str] = {}
        merged: dict[str, list[dict]] = {"": []}
        for i, path in shards.items():
            own = _rows(path, i, count, seen)
            sides = {s: _rows(side_path(path, s), i, count, seen) for s in ROW_SIDE_FILES}
            done = len(own) + sum(map(len, sides.values()))
            if done != manifests[i]["done"]:
                raise ConfigError(
                    f"Shard {i}/{count} ({path}) holds {done} rows but its manifest says {manifests[i]['done']}; "
                    f"it changed after it finished: rerun it with `--shard {i}/{count}`"
                )
            merged[""] += own
            for s, rows in sides.items():
                merged.setdefault(s, []).extend(rows)
        for suffix, rows in merged.items():
            target = side_path(output, suffix) if suffix else output
            if rows or not suffix or target.exists():  # an old side file must not outlive an overwrite
                write_jsonl(target, sorted(rows, key=lambda r: r[KEY]))
        write_json(side_path(output, "settings.json"), settings[0])
    log.info("merged %d shards of %s", count, output)
    return MergeResult(
        output,
        str(settings[0].get("stage", "?")),
        count,
        len(merged[""]),
        {s: len(rows) for s, rows in merged.items() if s},
    )


def _check_agree(output: Path, settings: dict[int, dict], manifests: dict[int, dict]) -> None:
    for i in sorted(settings)[1:]:
        changed = sorted(
            k for k in set(settings[0]) | set(settings[i]) if settings[0].get(k) != settings[i].get(k)
        )
        if changed:
            raise ConfigError(
                f"Shards 0 and {i} of {output} were made with different settings "
                f"({', '.join(f'`{k}`' for k in changed)}); they are not parts of one dataset"
            )
        if manifests[i].get("all_items") != manifests[0].get("all_items"):
            raise ConfigError(
                f"Shards 0 and {i} of {output} were split from inputs of different sizes "
                f"({manifests[0].get('all_items')} and {manifests[i].get('all_items')} rows): check "
                "`max_prompts`/`max_dialogues` and the input file"
            )
