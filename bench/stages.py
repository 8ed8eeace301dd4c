"""Time every stage of dvc.yaml at the params given (default: the reference params.yaml).

Runs each stage's command, in pipeline order, in a scratch directory (the repository's data is
untouched), and prints wall time, rows read (all Parquet inputs; for a source, rows written),
rows/s and the stage process's peak memory.

    python bench/stages.py                  # reference size, ~1 minute on 2 cores
    python bench/stages.py --params my.yaml --keep /tmp/bench-data
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from fraudlab.core.io import parquet_rows
from fraudlab.integrity.lock import file_md5

ROOT = Path(__file__).resolve().parents[1]
_PARAM = re.compile(r"\$\{([\w.]+)\}")


def resolve(text: str, params: dict) -> str:
    """dvc.yaml's ${section.key} interpolation, from the params file."""

    def value(match: re.Match) -> str:
        found = params
        for key in match.group(1).split("."):
            found = found[key]
        return str(found)

    return _PARAM.sub(value, text)


def _rows(workdir: Path, stage: dict, params: dict) -> int:
    """Rows the stage reads from all its Parquet inputs, or (for a source) writes; 0 if none."""
    deps = [resolve(str(d), params) for d in stage.get("deps", [])]
    paths = [d for d in deps if d.endswith(".parquet")]
    if not paths:
        outs = [o if isinstance(o, str) else next(iter(o)) for o in stage.get("outs", [])]
        paths = [o for o in outs if o.endswith(".parquet")][:1]
    return sum(parquet_rows(workdir / path) for path in paths)


def _record_outputs(workdir: Path, name: str, stage: dict) -> None:
    """Record the stage's file outputs in the scratch dvc.lock, as `dvc repro` would: the
    evaluate stage refuses a model whose hash dvc.lock does not record."""
    lock_path = workdir / "dvc.lock"
    lock = yaml.safe_load(lock_path.read_text()) if lock_path.exists() else {"stages": {}}
    paths = [o if isinstance(o, str) else next(iter(o)) for o in stage.get("outs", [])]
    lock["stages"][name] = {
        "outs": [
            {"path": path, "md5": file_md5(workdir / path)}
            for path in paths
            if (workdir / path).is_file()
        ]
    }
    lock_path.write_text(yaml.safe_dump(lock))


def command_argv(cmd: str, env: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """A dvc.yaml command as an argument list and its environment, with no shell involved:
    leading ``NAME=value`` words become environment variables, nothing else is interpreted."""
    words = shlex.split(cmd)
    env = dict(env)
    while words and re.fullmatch(r"[A-Za-z_]\w*=\S*", words[0]):
        name, value = words.pop(0).split("=", 1)
        env[name] = value
    return words, env


def _run_stage(cmd: str, workdir: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of one stage process."""
    argv, env = command_argv(cmd, env)
    started = time.perf_counter()
    process = subprocess.Popen(
        argv, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"stage failed: {cmd}\n{process.stderr.read().decode()}")
    return elapsed, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--keep", help="keep the outputs in this directory")
    args = parser.parse_args()
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load(Path(args.params).read_text())
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="fraudlab-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.params, workdir / "params.yaml")
    if not (workdir / "src").exists():
        (workdir / "src").symlink_to(ROOT / "src")  # stage commands import from ./src
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"

    print(f"{'stage':<14} {'seconds':>8} {'rows':>11} {'rows/s':>11} {'peak MiB':>9}")
    total = 0.0
    for name, stage in stages.items():
        seconds, peak = _run_stage(resolve(" ".join(stage["cmd"].split()), params), workdir, env)
        _record_outputs(workdir, name, stage)
        rows = _rows(workdir, stage, params)
        total += seconds
        counted = f"{rows:>11,} {rows / seconds:>11,.0f}" if rows else f"{'-':>11} {'-':>11}"
        print(f"{name:<14} {seconds:>8.1f} {counted} {peak:>9,.0f}")
    print(f"{'total':<14} {total:>8.1f}")
    if not args.keep:
        shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
