"""Atomic writers: a failed or interrupted write never leaves a file that looks complete."""

from __future__ import annotations

import pandas as pd
import pytest

from fraudlab.io import atomic_path, write_json, write_parquet


def _interrupted_write(target, error: BaseException) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text("half")
        raise error


def test_failed_write_leaves_neither_target_nor_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        _interrupted_write(tmp_path / "out.json", RuntimeError("killed"))
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_previous_version(tmp_path):
    target = tmp_path / "out.json"
    write_json({"a": 1}, target)
    with pytest.raises(KeyboardInterrupt):
        _interrupted_write(target, KeyboardInterrupt())
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_directory_is_replaced_whole(tmp_path):
    target = tmp_path / "live"
    with atomic_path(target, directory=True) as tmp:
        (tmp / "old.json").write_text("{}")
    with atomic_path(target, directory=True) as tmp:
        (tmp / "new.json").write_text("{}")
    assert [p.name for p in target.iterdir()] == ["new.json"]


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    stale = tmp_path / ".out.parquet.tmp-12345"
    stale.write_text("left by SIGKILL")
    write_parquet(pd.DataFrame({"a": [1]}), tmp_path / "out.parquet")
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


def test_parquet_bytes_are_deterministic(tmp_path):
    frame = pd.DataFrame({"a": range(1000), "b": [0.1 * i for i in range(1000)]})
    write_parquet(frame, tmp_path / "1.parquet")
    write_parquet(frame, tmp_path / "2.parquet")
    assert (tmp_path / "1.parquet").read_bytes() == (tmp_path / "2.parquet").read_bytes()
