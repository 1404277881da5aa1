"""Reading and writing the evaluation files: JSON Lines that grow one finished record at a time, and
JSON documents replaced atomically.

Judgments and answers are appended and flushed record by record, so an interrupted run keeps every
record it finished and the next run only does what is missing. A half-written last line (the
process died mid-write) is ignored with a warning rather than failing the resume.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from zephyr.errors import DataError

log = logging.getLogger(__name__)


def read_jsonl(path: str | os.PathLike, *, tolerate_torn_tail: bool = False) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for each non-blank line; a malformed line raises a DataError naming it.

    With ``tolerate_torn_tail``, a malformed *last* line (a record cut short by a crash) is skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", source=str(path))
    lines = path.read_bytes().splitlines()
    last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            if tolerate_torn_tail and i == last:
                log.warning("%s, line %d: ignoring an incomplete last record (%s)", path, i + 1, exc)
                return
            reason = (
                "is not valid UTF-8" if isinstance(exc, UnicodeDecodeError) else f"malformed JSON: {exc.msg}"
            )
            raise DataError(reason, source=str(path), line=i + 1) from None
        if not isinstance(obj, dict):
            raise DataError(f"must be a JSON object, got {type(obj).__name__}", source=str(path), line=i + 1)
        yield i + 1, obj


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", source=str(path))
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError("is not valid UTF-8", source=str(path)) from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"malformed JSON: {exc.msg} (column {exc.colno})", source=str(path), line=exc.lineno
        ) from None


def append_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append records and make them durable before returning (they count as finished work)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if not text:
        return
    _drop_torn_tail(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut off a last line with no newline: a record a crash left half-written, which was never finished."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        keep = f.read().rfind(b"\n") + 1
        log.warning("%s: dropping an incomplete last record left by an interrupted run", path)
        f.truncate(keep)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Replace ``path`` with these records, atomically."""
    _write_atomic(Path(path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Replace ``path`` with ``obj`` as indented JSON, atomically."""
    _write_atomic(Path(path), json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def safe_name(name: str) -> str:
    """A model or judge name usable as a file name (`org/model` -> `org_model`)."""
    cleaned = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name.strip())
    return cleaned.strip(".") or "model"
