"""The rows the distillation stages pass on disk, and the file handling that keeps them safe.

One row per prompt, in JSON Lines, with UltraFeedback's field names where it has them::

    {"schema_version": 1, "prompt_id": "<sha256>", "prompt": "<last user turn>", "messages": [...],
     "category": "...", "completions": [
        {"model", "teacher", "principle", "custom_system_prompt", "temperature", "response",
         "finish_reason", "prompt_tokens", "completion_tokens",
         # added by `feedback`:
         "annotations": {aspect: {"rating": 1-5 | null, "rationale", "type", "error", "raw"}},
         "fine-grained_score": mean of the aspect ratings | null, "overall_score": 1-10 | null, "critique"}],
     # added by `feedback`:
     "judge": "<model id>", "judgments": [{"aspect", "order", "reply", "repair_reply", "error"}]}

Streaming outputs are appended one whole line per row and flushed as each row finishes (``RowLog``),
so a killed run leaves at most one torn last line, which the next run cuts off before resuming.
Whole-file outputs are written to a temporary file and renamed into place (``write_atomic``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zephyr.errors import DataError, ZephyrError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# Prompt-row columns carried from the input to every later stage when present.
CARRIED = ("category", "source", "source_prompt_id", "question_id")


@dataclass
class Rating:
    """One aspect's verdict on one completion. ``rating`` None means the judge's reply could not be read:
    ``error`` says why and ``raw`` holds the judge's reply (and the repair reply), never a guess."""

    rating: int | None
    rationale: str | None = None
    type: list[int] | None = None  # truthfulness: hallucination types; helpfulness: informativeness types
    error: str | None = None
    raw: str | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None or k == "rating"}


@dataclass
class Completion:
    """One teacher reply, and after `feedback` its ratings and scores."""

    model: str
    teacher: str
    principle: str
    custom_system_prompt: str | None
    temperature: float
    response: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    annotations: dict[str, Rating] = field(default_factory=dict)
    fine_grained_score: float | None = None  # mean of the aspect ratings
    overall_score: float | None = None  # the 1-10 critique score
    critique: str | None = None

    def to_json(self) -> dict:
        out = {k: getattr(self, k) for k in _COMPLETION_KEYS}
        if self.annotations:
            out["annotations"] = {aspect: r.to_json() for aspect, r in self.annotations.items()}
            out["fine-grained_score"] = self.fine_grained_score
            out["overall_score"] = self.overall_score
            out["critique"] = self.critique
        return out


_COMPLETION_KEYS = (
    "model",
    "teacher",
    "principle",
    "custom_system_prompt",
    "temperature",
    "response",
    "finish_reason",
    "prompt_tokens",
    "completion_tokens",
)


@dataclass
class Judgment:
    """One judge call: ``order[k]`` is the completion shown as text k+1."""

    aspect: str
    order: list[int]
    reply: str
    repair_reply: str | None = None
    error: str | None = None


@dataclass
class PromptRecord:
    """A prompt with its completions (the `generate` output; `feedback` fills the ratings)."""

    prompt_id: str
    prompt: str
    messages: list[dict]
    completions: list[Completion]
    extra: dict[str, Any] = field(default_factory=dict)
    judge: str | None = None
    judgments: list[Judgment] = field(default_factory=list)

    def to_json(self) -> dict:
        out = {
            "schema_version": SCHEMA_VERSION,
            "prompt_id": self.prompt_id,
            "prompt": self.prompt,
            "messages": self.messages,
            **self.extra,
            "completions": [c.to_json() for c in self.completions],
        }
        if self.judge is not None:
            out["judge"] = self.judge
            out["judgments"] = [j.__dict__ for j in self.judgments]
        return out

    @classmethod
    def from_json(cls, row: Any, loc: dict) -> PromptRecord:
        """Read a `generate` row back; a DataError names the line and field of anything malformed."""
        check_schema(row, loc)
        for key, kind in (("prompt_id", str), ("prompt", str), ("messages", list), ("completions", list)):
            if not isinstance(row.get(key), kind):
                raise DataError(
                    f"must be a {kind.__name__}, got {type(row.get(key)).__name__}", field=key, **loc
                )
        completions = [_completion(c, i, loc) for i, c in enumerate(row["completions"])]
        extra = {k: row[k] for k in CARRIED if row.get(k) is not None}
        return cls(row["prompt_id"], row["prompt"], row["messages"], completions, extra)


def _completion(raw: Any, i: int, loc: dict) -> Completion:
    if not isinstance(raw, dict) or not isinstance(raw.get("response"), str):
        raise DataError("must be an object with a `response` string", field=f"completions[{i}]", **loc)
    values = {k: raw.get(k) for k in _COMPLETION_KEYS}
    values["model"] = str(values["model"] or "unknown")
    values["teacher"] = str(values["teacher"] or values["model"])
    values["principle"] = str(values["principle"] or "none")
    values["temperature"] = float(values["temperature"] or 0.0)
    values["finish_reason"] = str(values["finish_reason"] or "stop")
    values["prompt_tokens"] = int(values["prompt_tokens"] or 0)
    values["completion_tokens"] = int(values["completion_tokens"] or 0)
    return Completion(**values)


def check_schema(row: Any, loc: dict) -> None:
    """Rows must be objects; one written by a newer zephyr is refused rather than misread."""
    if not isinstance(row, dict):
        raise DataError(f"must be a JSON object, got {type(row).__name__}", **loc)
    version = row.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise DataError(
            f"has schema_version {version!r}; this zephyr reads versions up to {SCHEMA_VERSION}: "
            "upgrade zephyr to read it",
            field="schema_version",
            **loc,
        )


# ---- reading ----------------------------------------------------------------------------------------


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[dict, Any]]:
    """``(location, row)`` for each non-blank line; a line that is not JSON comes as a DataError naming it,
    for the caller to raise or report."""
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", source=str(path))
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            loc = {"source": str(path), "line": number}
            try:
                yield loc, json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                yield loc, DataError(f"malformed JSON ({exc})", **loc)


def source_rows(
    spec: str, *, split: str | None = None, config: str | None = None
) -> Iterator[tuple[dict, Any, list[str]]]:
    """``(location, raw row or DataError, the part's column names)`` for every row of any data source that
    ``zephyr.data.read_source`` reads, so a stage can report each bad row instead of stopping at the first."""
    from zephyr.data import read_source

    for part in read_source(spec, split=split, config=config):
        if hasattr(part, "items"):  # text files, parsed line by line (bad lines come as DataErrors)
            names = sorted({k for _, raw in part.items if isinstance(raw, dict) for k in raw})
            for loc, raw in part.items:
                yield loc, raw, names
        else:  # Arrow-backed: Parquet, saved datasets, the hub
            names = part.dataset.column_names
            for i, raw in enumerate(part.dataset):
                yield {"source": part.label, "row": i}, raw, names


# ---- streaming output -------------------------------------------------------------------------------


class RowLog:
    """An append-only JSONL output that a stage resumes: one line per finished row, written whole and
    flushed at once. Holds an exclusive lock, so two runs can never interleave rows in one file.

    Opening it repairs a torn last line (a run killed mid-write) and returns the rows already there.
    """

    def __init__(self, path: str | os.PathLike, sync_every: float = 2.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise ZephyrError(
                f"{self.path} is being written by another run; wait for it or use another output"
            ) from None
        self._sync_every, self._last_sync = sync_every, time.monotonic()

    def existing(self) -> list[dict]:
        """The complete rows already written, after cutting off a torn last line."""
        data = self._read_all()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            log.warning(
                "%s: dropping an incomplete last line (%d bytes) left by an interrupted run; its row "
                "will be redone",
                self.path,
                len(data) - end,
            )
            os.ftruncate(self._fd, end)
        rows = []
        for number, raw in enumerate(data[:end].split(b"\n"), start=1):
            if raw.strip():
                try:
                    rows.append(json.loads(raw))
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise DataError(
                        f"malformed JSON ({exc}); fix or remove the line to resume",
                        source=str(self.path),
                        line=number,
                    ) from None
        return rows

    def _read_all(self) -> bytes:
        size = os.fstat(self._fd).st_size
        chunks, offset = [], 0
        while offset < size:
            chunk = os.pread(self._fd, min(1 << 24, size - offset), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)

    def append(self, row: dict) -> None:
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(line)
        while view:  # one write for all but enormous rows; loop in case the kernel takes less
            view = view[os.write(self._fd, view) :]
        if time.monotonic() - self._last_sync > self._sync_every:
            os.fsync(self._fd)
            self._last_sync = time.monotonic()

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)  # also releases the lock
            self._fd = -1

    def __enter__(self) -> RowLog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class EventLog:
    """A small JSONL side file (failures, skipped input), rewritten per run and flushed per line."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.count = 0
        self._file = None

    def add(self, event: dict) -> None:
        if self._file is None:
            self._file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._file.write(json.dumps({"time": round(time.time(), 3), **event}, ensure_ascii=False) + "\n")
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        elif self.path.exists():
            self.path.unlink()  # a clean run leaves no stale failures behind


# ---- whole-file output ------------------------------------------------------------------------------


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Write a whole file so readers see the old or the new content, never a mix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def replace_dir(built: Path, target: Path) -> None:
    """Move a fully built directory into place, replacing an older one (the swap is two renames)."""
    target = Path(target)
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(built, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def staging_dir(target: Path) -> Path:
    """An empty directory beside ``target`` to build it in (same filesystem, so the final rename is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))


def write_dataset_dir(
    output_dir: str | os.PathLike, splits: dict[str, list[dict]], features, report_name: str, report: dict
) -> None:
    """Write splits as a `datasets` DatasetDict plus ``jsonl/<split>.jsonl`` and a JSON report, built in a
    staging directory beside ``output_dir`` and swapped in whole (readers never see half an output)."""
    from datasets import Dataset, DatasetDict

    output_dir = Path(output_dir)
    built = staging_dir(output_dir)
    try:
        empty = {k: [] for k in features}
        DatasetDict(
            {
                name: Dataset.from_list(rows, features=features)
                if rows
                else Dataset.from_dict(empty, features=features)
                for name, rows in splits.items()
            }
        ).save_to_disk(str(built))
        for name, rows in splits.items():
            write_atomic(built / "jsonl" / f"{name}.jsonl", jsonl_text(rows))
        write_json(built / report_name, report)
        replace_dir(built, output_dir)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
