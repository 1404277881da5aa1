"""Files that survive a crash: one atomic writer, one JSON Lines reader, append-only row logs.

Every stage writes through here, so there is one answer to "what does a kill -9 leave behind?":

- whole files (``write_atomic``, ``write_json``, ``write_jsonl``) and whole directories
  (``write_dir_atomic``) are built beside their target, fsynced and renamed into place: readers see the
  old content or the new, never a mix;
- growing outputs (``append_jsonl``, ``RowLog``) gain one whole, flushed line per finished record; a
  line torn by a crash is cut off by the next writer, so it is redone, never half-read; writers that
  share a file (the server's votes file) pass ``lock=True`` to ``append_jsonl``;
- ``read_jsonl`` yields ``(location, row)`` with ``location = {"source": path, "line": n}``, ready to be
  passed to ``DataError(..., **location)``; its keywords choose what a bad line or a torn last line does;
- ``output_lock`` keeps two runs from writing one output at the same time.

Nothing here imports torch, transformers or datasets.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from zephyr.errors import DataError, ZephyrError

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
_UMASK = os.umask(0o022)  # read once, at import (reading it means setting it), and put back at once
os.umask(_UMASK)


def cache_dir() -> Path:  # converted models, reference log-probs: $ZEPHYR_CACHE, else ~/.cache/zephyr
    return Path(os.environ.get("ZEPHYR_CACHE") or Path.home() / ".cache" / "zephyr").expanduser()


def safe_name(name: str) -> str:  # a model or judge name as a file name: `org/model` -> `org_model`
    cleaned = "".join(c if c.isalnum() or c in "-_.+" else "_" for c in name.strip())
    return cleaned.strip(".") or "model"


def write_atomic(path: PathLike, data: str | bytes | Callable[[Path], None]) -> None:
    """Replace ``path`` with ``data`` (text, bytes, or a callback that writes the file it is given)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would; mkstemp's 0600 hides outputs from other users
        if callable(data):
            os.close(fd)
            data(Path(tmp))
            fd = os.open(tmp, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: PathLike, obj: Any) -> None:
    write_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_jsonl(path: PathLike, rows: Iterable[dict]) -> None:
    write_atomic(path, jsonl_text(rows))


def staging_dir(target: PathLike) -> Path:
    """An empty directory beside ``target`` to build it in (same filesystem, so the final rename is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))


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


def write_dir_atomic(target: PathLike, build: Callable[[Path], None]) -> Path:
    """Build a directory with ``build(staging)`` and swap it in whole; a failure leaves ``target`` as it was."""
    target = Path(target)
    built = staging_dir(target)
    try:
        os.chmod(built, 0o777 & ~_UMASK)  # what mkdir() would give, not mkdtemp's 0700
        build(built)
        fsync_tree(built)
        replace_dir(built, target)
    except BaseException:
        shutil.rmtree(built, ignore_errors=True)
        raise
    return target


def fsync_paths(*paths: Path) -> None:
    """Flush files and directories to disk (a directory's fsync makes the renames into it durable)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(root: Path) -> None:  # every file and directory below root, and root
    fsync_paths(*root.rglob("*"), root)


def read_json(path: PathLike) -> Any:
    """A JSON document; a DataError names the file (and line) of anything unreadable."""
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


def parse_line(raw: bytes, loc: dict) -> Any:
    """One JSON Lines line, or the DataError saying why it cannot be read."""
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return DataError("is not valid UTF-8", **loc)
    except json.JSONDecodeError as exc:
        return DataError(f"malformed JSON: {exc.msg} (column {exc.colno})", **loc)


def read_jsonl(
    path: PathLike,
    *,
    bad_lines: Literal["raise", "yield"] = "raise",
    torn_tail: Literal["raise", "skip"] = "raise",
    objects: bool = False,
) -> Iterator[tuple[dict, Any]]:
    """``(location, row)`` for every non-blank line of a JSON Lines file.

    ``bad_lines="yield"`` hands an unreadable line over as ``(location, DataError)`` for the caller to
    report; ``torn_tail="skip"`` drops an unreadable *last* line (a record a crash cut short) with a
    warning; ``objects=True`` requires every row to be a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", source=str(path))
    lines = path.read_bytes().splitlines()
    last = max((i for i, raw in enumerate(lines) if raw.strip()), default=-1)
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        loc = {"source": str(path), "line": i + 1}
        row = parse_line(raw, loc)
        if not isinstance(row, DataError) and objects and not isinstance(row, dict):
            row = DataError(f"must be a JSON object, got {type(row).__name__}", **loc)
        if isinstance(row, DataError):
            if torn_tail == "skip" and i == last:
                log.warning("%s, line %d: ignoring an incomplete last record (%s)", path, i + 1, row.reason)
                return
            if bad_lines == "raise":
                raise row
        yield loc, row


def drop_torn_tail(path: Path) -> None:
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


def append_jsonl(path: PathLike, records: Iterable[dict], *, lock: bool = False) -> None:
    """Append records and make them durable before returning (they count as finished work).

    ``lock=True`` holds an exclusive ``flock`` on the file from the torn-tail repair to the fsync, so
    writers that all lock (threads of one process or other processes) never interleave their lines or
    cut off a line another writer is still writing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = jsonl_text(records)
    if not text:
        return
    with open(path, "a", encoding="utf-8") as f:
        if lock:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        drop_torn_tail(path)  # O_APPEND: the write below lands at the end as repaired
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


class RowLog:
    """An append-only JSONL output that a stage resumes: one line per finished row, written whole and
    flushed at once. Holds an exclusive lock, so two runs can never interleave rows in one file.

    ``existing()`` repairs a torn last line (a run killed mid-write) and returns the rows already there.
    """

    def __init__(self, path: PathLike, sync_every: float = 2.0):
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
                row = parse_line(raw, {"source": str(self.path), "line": number})
                if isinstance(row, DataError):
                    raise DataError(f"{row.reason}; fix or remove the line to resume", **row.location())
                rows.append(row)
        return rows

    def replace_rows(self, rows: list[dict]) -> None:
        """Rewrite the file with only ``rows``: built beside it, locked before it is renamed into place (so
        no other run can slip in between), fsynced, then swapped in whole; a crash leaves the old file."""
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.fchmod(fd, 0o644)  # as the file it replaces (mkstemp makes 0600)
            data = memoryview(jsonl_text(rows).encode("utf-8"))
            while data:
                data = data[os.write(fd, data) :]
            os.fsync(fd)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            Path(tmp).unlink(missing_ok=True)
            raise
        os.close(self._fd)
        self._fd = fd
        os.lseek(self._fd, 0, os.SEEK_END)

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

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.count = 0
        self._file = None

    def add(self, event: dict) -> None:
        if self._file is None:
            self._file = open(self.path, "w", encoding="utf-8")
        self._file.write(json.dumps({"time": round(time.time(), 3), **event}, ensure_ascii=False) + "\n")
        self._file.flush()
        self.count += 1

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        elif self.path.exists():
            self.path.unlink()  # a clean run leaves no stale failures behind


# ---- output locks ----------------------------------------------------------------------------------


class OutputLocked(ZephyrError):  # another live process is writing the same output
    pass


def lock_path(target: PathLike) -> Path:
    """``.NAME.lock`` beside an output: it outlives the output being swapped, and stays out of model dirs."""
    target = Path(target).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent / f".{target.name}.lock"


def _lock_holder(fd: int, tries: int = 3) -> dict:
    for _ in range(tries):  # a new holder truncates, then writes: give it a moment when the file reads empty
        raw = os.pread(fd, 4096, 0)
        if raw.strip():
            holder = parse_line(raw, {})
            return holder if isinstance(holder, dict) else {}
        time.sleep(0.05)
    return {}


def _is_running(pid: int) -> bool:
    try:
        return os.kill(pid, 0) is None  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True


@contextmanager
def output_lock(target: PathLike, what: str) -> Iterator[Path]:
    """Hold the exclusive lock on an output for the ``with`` block; a second holder fails at once, naming the
    PID in the lock file. An ``flock``: the kernel drops it when its holder dies, however it dies."""
    path = lock_path(target)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _lock_holder(fd)
        os.close(fd)
        who = f"{holder.get('what', 'another run')} (PID {holder.get('pid', 'unknown')})"
        raise OutputLocked(f"{target} is in use by {who}; wait for it to finish or stop it") from None
    try:
        stale = _lock_holder(fd, tries=1)
        if isinstance(stale.get("pid"), int) and not _is_running(stale["pid"]):
            log.warning(
                "%s: taking over the lock of PID %d, which is no longer running", target, stale["pid"]
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "what": what}).encode() + b"\n", 0)
        yield path
    finally:
        # Released cleanly: nothing stale to report. Never deleted: two runs could lock two files of one name.
        os.ftruncate(fd, 0)
        os.close(fd)
