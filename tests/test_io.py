"""Atomic writers: a failed or interrupted write never leaves a file that looks complete."""

from __future__ import annotations

import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fraudlab.core.io import atomic_path, read_days, write_days, write_json, write_parquet


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


def test_a_writer_killed_with_sigkill_leaves_nothing_at_all(tmp_path):
    """SIGKILL cannot be caught: the temporary must be one the kernel frees by itself, since the
    next `dvc repro` may restore the stage from the run cache and never run it to clean up."""
    script = (
        "import os, signal, sys\n"
        "from fraudlab.core.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    with open(tmp, 'wb') as out:\n"
        "        out.write(b'x' * 1_000_000)\n"
        "        out.flush()\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "model.joblib")], check=False
    )
    assert done.returncode == -signal.SIGKILL
    assert list(tmp_path.iterdir()) == []


def test_without_unnamed_files_a_sibling_temporary_is_used(tmp_path, monkeypatch):
    monkeypatch.setattr("fraudlab.core.io._open_unnamed", lambda directory: None)
    with atomic_path(tmp_path / "out.json") as tmp:
        assert tmp.parent == tmp_path
        assert tmp.name.startswith(".out.json.tmp-")
        tmp.write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    with pytest.raises(RuntimeError):
        _interrupted_write(tmp_path / "out.json", RuntimeError("killed"))
    assert (tmp_path / "out.json").read_text() == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_frames_appended_in_row_groups_are_the_bytes_of_their_concatenation(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fraudlab.core.io import RowGroupWriter

    frames = [
        pd.DataFrame({"id": range(start, start + n), "name": [f"x{i}" for i in range(n)]})
        for start, n in ((0, 3), (3, 5), (8, 7), (15, 2))
    ]
    writer = RowGroupWriter(tmp_path / "appended.parquet", row_group_size=4)
    for frame in frames:
        writer.write(frame)
    writer.close()
    whole = pa.Table.from_pandas(pd.concat(frames, ignore_index=True), preserve_index=False)
    pq.write_table(whole, tmp_path / "whole.parquet", compression="zstd", row_group_size=4)
    assert pq.ParquetFile(tmp_path / "whole.parquet").metadata.num_row_groups == 5
    assert (tmp_path / "appended.parquet").read_bytes() == (tmp_path / "whole.parquet").read_bytes()


def test_a_day_range_reads_those_days_rows_alone(tmp_path):
    # days 3, 3, 5, 5, 5, 8: day 4 and days 6-7 are empty batches, still counted
    frame = pd.DataFrame({"day": [3, 3, 5, 5, 5, 8], "value": list("abcdef")})
    path = tmp_path / "days.arrow"
    write_days(pa.Table.from_pandas(frame), path, days=frame["day"].to_numpy())
    for first, last, expected in [
        (0, 2, ""),
        (3, 3, "ab"),
        (4, 4, ""),
        (4, 5, "cde"),
        (5, 9, "cdef"),
        (0, 100, "abcdef"),
        (9, 12, ""),
    ]:
        read = read_days(path, first, last).to_pandas()
        assert "".join(read["value"]) == expected, (first, last)
        assert list(read.columns) == ["day", "value"]
    write_days(pa.Table.from_pandas(frame.iloc[:0]), path, days=np.zeros(0, dtype=np.int64))
    assert read_days(path, 0, 10).num_rows == 0
