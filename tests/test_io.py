"""zephyr.io: the one atomic writer, the one JSON Lines reader and its policies, the row log."""

from __future__ import annotations

import os
import stat

import pytest

from zephyr.errors import DataError, ZephyrError
from zephyr.io import RowLog, read_jsonl, write_atomic, write_dir_atomic


def test_atomic_outputs_get_the_permissions_a_plain_write_would(tmp_path):
    """Outputs are for other tools and users too (Ollama, a web server): not mkstemp's private 0600."""
    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "a.txt", "x")
        write_dir_atomic(tmp_path / "d", lambda built: write_atomic(built / "f.txt", "y"))
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "d" / "f.txt").stat().st_mode) == 0o644


def test_a_failed_directory_build_leaves_the_old_one(tmp_path):
    target = tmp_path / "out"
    write_dir_atomic(target, lambda built: write_atomic(built / "v", "1"))

    def broken(built):
        write_atomic(built / "v", "2")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_dir_atomic(target, broken)
    assert (target / "v").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_read_jsonl_policies(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a": 1}\nnot json\n[1, 2]\n{"b": 2}\n{"torn": ')
    with pytest.raises(DataError, match=r"x.jsonl, line 2: malformed JSON"):
        list(read_jsonl(path))
    rows = list(read_jsonl(path, bad_lines="yield", torn_tail="skip", objects=True))
    assert [loc["line"] for loc, _ in rows] == [1, 2, 3, 4]
    assert isinstance(rows[1][1], DataError) and "must be a JSON object" in str(rows[2][1])
    assert rows[3][1] == {"b": 2}


def test_row_log_repairs_a_torn_tail_and_replaces_rows_under_its_lock(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_bytes(b'{"prompt_id": "a"}\n{"prompt_id": "b"}\n{"prompt_id": "c", "tor')
    with RowLog(path) as log:
        assert [r["prompt_id"] for r in log.existing()] == ["a", "b"]
        log.replace_rows([{"prompt_id": "a"}])
        with pytest.raises(ZephyrError, match="being written by another run"):
            RowLog(path)  # the lock moved to the new file with the rows
        log.append({"prompt_id": "d"})
    assert path.read_text().splitlines() == ['{"prompt_id": "a"}', '{"prompt_id": "d"}']
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
