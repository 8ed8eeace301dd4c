"""`fraudlab verify` finds what DVC does not: cache objects and workspace outputs whose bytes no
longer match their recorded hash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fraudlab.integrity.verify import verify_repo
from helpers import run_stage

pytestmark = pytest.mark.slow  # real DVC repositories and commands


def _dvc(repo: Path, *args: str) -> None:
    dvc = Path(sys.executable).parent / "dvc"
    subprocess.run([str(dvc), *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path) -> Path:
    """A DVC repository with an added file and an added directory, and an empty dvc.lock."""
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    _dvc(tmp_path, "init", "-q")
    (tmp_path / "data.csv").write_bytes(b"a,b\n1,2\n" * 1000)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "one.png").write_bytes(bytes(range(256)) * 10)
    (tmp_path / "images" / "two.png").write_bytes(b"two")
    _dvc(tmp_path, "add", "-q", "data.csv", "images")
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    return tmp_path


def _cache_object(repo: Path, md5: str) -> Path:
    return repo / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]


def _md5_in(dvc_file: Path) -> str:
    return dvc_file.read_text().split("md5: ")[1].split()[0]


def _flip_a_bit(path: Path) -> None:
    """Change one bit, keeping mode and mtime, as silent disk corruption would."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    path.chmod(stat.st_mode)


def _verify(repo: Path, caplog) -> int:
    return run_stage(verify_repo, ["--repo", str(repo)], caplog)


def test_an_intact_repository_verifies(repo, caplog):
    assert _verify(repo, caplog) == 0, caplog.text
    # data.csv and the two images, each in the cache and the workspace, and the listing
    assert "hashed 7 files" in caplog.text
    assert "0 damaged" in caplog.text


def test_a_flipped_bit_in_a_cached_file_is_found_with_its_origin(repo, caplog):
    _flip_a_bit(_cache_object(repo, _md5_in(repo / "data.csv.dvc")))
    assert _verify(repo, caplog) == 1
    assert "1 damaged file(s)" in caplog.text
    assert "for data.csv (stage data.csv.dvc)" in caplog.text
    assert "Repair: remove each damaged cache object" in caplog.text


def test_a_damaged_file_inside_a_cached_directory_is_found(repo, caplog):
    listing = _cache_object(repo, _md5_in(repo / "images.dvc"))
    one = next(e for e in listing.read_text().split('"md5": "')[1:] if "one.png" in e)
    _flip_a_bit(_cache_object(repo, one.split('"')[0]))
    assert _verify(repo, caplog) == 1
    assert "for images/one.png (stage images.dvc)" in caplog.text


def test_a_damaged_directory_listing_is_found(repo, caplog):
    _flip_a_bit(_cache_object(repo, _md5_in(repo / "images.dvc")))
    assert _verify(repo, caplog) == 1
    assert "for images (stage images.dvc)" in caplog.text


def test_a_changed_workspace_output_is_found(repo, caplog):
    (repo / "data.csv").write_bytes(b"other")
    assert _verify(repo, caplog) == 1
    assert f"workspace {repo / 'data.csv'}" in caplog.text


def test_an_object_missing_from_the_cache_is_reported_not_damage(repo, caplog):
    cached = _cache_object(repo, _md5_in(repo / "data.csv.dvc"))
    cached.chmod(0o644)
    cached.unlink()
    assert _verify(repo, caplog) == 0, caplog.text
    assert "missing, for data.csv" in caplog.text
    assert "1 missing, 0 damaged" in caplog.text


def test_an_uncached_directory_output_is_hashed_as_dvc_hashes_it(repo, caplog):
    """Plots are `cache: false`: their listing is not in the cache, so the workspace directory
    is hashed whole, the way DVC computes a directory's hash."""
    plots = repo / "plots"
    (plots / "sub").mkdir(parents=True)
    (plots / "a.json").write_text("{}")
    (plots / "sub" / "b.png").write_bytes(b"png")
    (repo / "dvc.yaml").write_text(
        "stages:\n  s:\n    cmd: 'true'\n    outs:\n    - plots:\n        cache: false\n"
    )
    _dvc(repo, "commit", "-q", "-f", "s")  # records DVC's own hash of the directory
    assert _verify(repo, caplog) == 0, caplog.text

    (plots / "sub" / "b.png").write_bytes(b"PNG")
    assert _verify(repo, caplog) == 1
    assert f"workspace {plots}: MD5" in caplog.text
    assert "for plots (stage s)" in caplog.text
