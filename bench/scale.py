"""The data stages at scale on each engine: simulate -> validate -> featurize -> split.

    python bench/scale.py --rows 20M                      # both engines, ~10 minutes
    python bench/scale.py --rows 200M --engines dask      # the Dask engine only
    python bench/scale.py --rows 2M --keep /tmp/scale     # keep the data and the report
    python bench/scale.py --rows 20M --repeat 3           # medians of 3 runs per engine

The simulator's world grows with ``--rows`` at the reference density (customers and terminals
x f, the reach radius / sqrt(f), compromises per day x f), drawn in independent blocks of
customers (``simulate.customers_per_block``), so both engines draw the same data. Each stage's
command from dvc.yaml runs in a scratch directory (the repository's data is untouched, and no
DVC cache copies the data); with the Dask engine the stages use a ``LocalCluster`` this script
starts (``--workers`` processes of one thread each).

Printed per stage and in total: wall time; CPU seconds (user + system) and cores busy on
average (CPU s / wall s); rows/s; rows/s per core (local: one core; Dask: one per worker);
rows per CPU second; and the peak memory of the whole run. Memory and CPU cover every process
this script started (stage processes, the cluster's workers and nannies, and this process,
which runs the scheduler), summed, sampled every 0.1 s. The local engine is counted as one core
though Arrow's threads use both at times: rows per CPU second compares the engines' work
whatever the threads. The same run's time varies by 10-20 % on this machine: with
``--repeat N`` the engines take turns N times, and the last tables show each stage's median time
and CPU seconds and the largest peak; the per-core ratio of every run is printed. When both
engines run, their outputs are compared file by file. Dask's performance report (task stream,
worker profiles, bandwidth) is saved as HTML beside the data (``--keep``) or in the temporary
directory.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

from fraudlab.core.io import parquet_rows
from fraudlab.scaleout.engine import local_cluster
from stages import ROOT, command_argv, resolve

STAGES = ("simulate", "validate", "featurize", "split")
_REFERENCE_ROWS = 1_788_956  # the reference params' transactions
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9}


def row_count(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)", text.strip().upper())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of rows such as 20M or 2000000")
    return round(float(match.group(1)) * _UNITS[match.group(2)])


def scaled_params(rows: int, *, customers_per_block: int, rows_per_part: int) -> dict:
    """params.yaml with the simulated world grown to about ``rows`` transactions."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    factor = rows / _REFERENCE_ROWS
    simulate = params["simulate"]
    simulate.update(
        n_customers=round(simulate["n_customers"] * factor),
        n_terminals=round(simulate["n_terminals"] * factor),
        radius=simulate["radius"] / factor**0.5,
        compromised_terminals_per_day=round(simulate["compromised_terminals_per_day"] * factor),
        compromised_customers_per_day=round(simulate["compromised_customers_per_day"] * factor),
        customers_per_block=customers_per_block,
    )
    params["storage"]["rows_per_part"] = rows_per_part
    return params


class Usage:
    """Over a block: the largest sum of resident memory over this process and all its
    descendants, and the CPU seconds (user + system) they spent, sampled every ``interval``
    seconds (a process that ends between two samples loses at most its last interval)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval, self.peak = interval, 0
        self._start: dict[int, float] = {}
        self._latest: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_until_stopped, daemon=True)

    def _sample(self) -> dict[int, float]:
        me = psutil.Process()
        total, cpu = 0, {}
        for process in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
                times = process.cpu_times()
                cpu[process.pid] = times.user + times.system
        self.peak = max(self.peak, total)
        self._latest.update(cpu)
        return cpu

    def _sample_until_stopped(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    @property
    def cpu_seconds(self) -> float:
        return sum(cpu - self._start.get(pid, 0.0) for pid, cpu in self._latest.items())

    def __enter__(self) -> Usage:
        self._start = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


def _run(cmd: str, workdir: Path, env: dict[str, str]) -> float:
    argv, env = command_argv(cmd, env)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"stage failed: {cmd}\n{done.stderr}")
    return time.perf_counter() - started


def _digest(path: Path) -> str:
    """MD5 over a file, or over a directory's files (names and bytes) in name order."""
    md5 = hashlib.md5()
    for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
        if file.is_file():
            md5.update(file.name.encode())
            with open(file, "rb") as handle:
                while block := handle.read(1 << 24):
                    md5.update(block)
    return md5.hexdigest()


_OUTPUTS = (
    "data/raw/transactions.parquet",
    "data/clean/transactions.parquet",
    "data/clean/rejected.parquet",
    "data/features/transactions.parquet",
    "data/split/train.parquet",
    "data/split/test.parquet",
    "data/split/folds.parquet",
)


def run_engine(
    engine: str, workdir: Path, params: dict, *, env: dict[str, str], stages: list[str]
) -> list[tuple]:
    """Each stage's (name, seconds, rows, peak bytes, CPU seconds); the outputs stay in
    ``workdir``."""
    commands = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    (workdir / "params.yaml").write_text(yaml.safe_dump(params))
    if not (workdir / "src").exists():
        (workdir / "src").symlink_to(ROOT / "src")  # stage commands import from ./src
    env = env | {"FRAUDLAB_ENGINE": engine}
    results = []
    for name in stages:
        cmd = resolve(" ".join(commands[name]["cmd"].split()), params)
        with Usage() as usage:
            seconds = _run(cmd, workdir, env)
        source = {
            "simulate": "data/raw/transactions.parquet",
            "validate": "data/raw/transactions.parquet",
            "featurize": "data/clean/transactions.parquet",
            "split": "data/features/transactions.parquet",
        }[name]
        rows = parquet_rows(workdir / source)
        results.append((name, seconds, rows, usage.peak, usage.cpu_seconds))
        print(f"  {engine} {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return results


def _with_total(results: list[tuple]) -> list[tuple]:
    """A run's stages and an "all" row: their seconds and CPU seconds added, the largest peak."""
    _, seconds, rows, peaks, cpu = zip(*results, strict=True)
    return [*results, ("all", sum(seconds), rows[0], max(peaks), sum(cpu))]


def _medians(runs: list[list[tuple]]) -> list[tuple]:
    """Per stage and for the whole run, over runs: the median seconds and CPU seconds, and the
    largest peak."""
    return [
        (
            rows[0][0],
            statistics.median(r[1] for r in rows),
            rows[0][2],
            max(r[3] for r in rows),
            statistics.median(r[4] for r in rows),
        )
        for rows in zip(*(_with_total(run) for run in runs), strict=True)
    ]


def _per_core(results: list[tuple], cores: int) -> float:
    """Rows per second per core over all stages of one run."""
    _, seconds, rows, _, _ = _with_total(results)[-1]
    return rows / seconds / cores


def _table(engine: str, results: list[tuple], cores: int, runs: int = 1) -> None:
    """``results``: stage rows and the "all" row."""
    gib = 1024**3
    medians = f", medians of {runs} runs" if runs > 1 else ""
    print(f"\n{engine} engine ({cores} core{'s' if cores > 1 else ''}{medians}):")
    print(
        f"{'stage':<10} {'seconds':>8} {'CPU s':>8} {'busy':>5} {'rows':>13} {'rows/s':>11} "
        f"{'/core':>10} {'/CPU s':>10} {'peak GiB':>9}"
    )
    for name, seconds, stage_rows, peak, cpu in results:
        print(
            f"{name:<10} {seconds:>8.1f} {cpu:>8.1f} {cpu / seconds:>5.2f} {stage_rows:>13,} "
            f"{stage_rows / seconds:>11,.0f} {stage_rows / seconds / cores:>10,.0f} "
            f"{stage_rows / cpu:>10,.0f} {peak / gib:>9.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=row_count, default=row_count("20M"))
    parser.add_argument("--engines", default="local,dask", help="local, dask or both (a,b)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--customers-per-block", type=int, default=10_000)
    parser.add_argument("--rows-per-part", type=int, default=1_000_000)
    parser.add_argument("--keep", help="keep the data (one directory per engine) here")
    parser.add_argument("--repeat", type=int, default=1, help="runs per engine, taking turns")
    parser.add_argument(
        "--stages", default=",".join(STAGES), help="a later part of the run, on kept data"
    )
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",")]
    stages = [s.strip() for s in args.stages.split(",")]
    params = scaled_params(
        args.rows,
        customers_per_block=args.customers_per_block,
        rows_per_part=args.rows_per_part,
    )
    base = Path(args.keep or tempfile.mkdtemp(prefix="fraudlab-scale-"))
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.pop("DASK_SCHEDULER_ADDRESS", None)
    print(
        f"~{args.rows:,} transactions: {params['simulate']['n_customers']:,} customers, "
        f"{params['simulate']['n_terminals']:,} terminals, blocks of "
        f"{args.customers_per_block:,} customers, parts of {args.rows_per_part:,} rows"
    )
    digests, runs = {}, {engine: [] for engine in engines}
    cores = {"local": 1, "dask": args.workers}
    try:
        for _ in range(args.repeat):
            for engine in engines:
                workdir = base / engine
                workdir.mkdir(parents=True, exist_ok=True)
                if engine == "local":
                    results = run_engine("local", workdir, params, env=env, stages=stages)
                else:
                    report = Path(args.keep or tempfile.gettempdir()) / "fraudlab-dask-report.html"
                    results = _run_on_cluster(
                        workdir, params, env=env, workers=args.workers, report=report, stages=stages
                    )
                _table(engine, _with_total(results), cores=cores[engine])
                runs[engine].append(results)
                digests[engine] = {out: _digest(workdir / out) for out in _OUTPUTS}
                if not args.keep:
                    shutil.rmtree(workdir / "data")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    if args.repeat > 1:
        for engine in engines:
            _table(engine, _medians(runs[engine]), cores=cores[engine], runs=args.repeat)
    if len(engines) == 2 and "local" in engines:
        other = next(e for e in engines if e != "local")
        ratios = [
            _per_core(theirs, cores[other]) / _per_core(local, 1)
            for local, theirs in zip(runs["local"], runs[other], strict=True)
        ]
        listed = ", ".join(f"{r:.2f}" for r in ratios)
        print(
            f"\nrows/s per core, {other} against local: {listed}"
            + (f" (median {statistics.median(ratios):.2f})" if len(ratios) > 1 else "")
        )
    if len(digests) == 2:
        first, second = digests.values()
        same = [out for out in _OUTPUTS if first[out] == second[out]]
        print(f"\noutputs identical on both engines: {len(same)} of {len(_OUTPUTS)}")
        for out in _OUTPUTS:
            if first[out] != second[out]:
                print(f"  DIFFERENT: {out}")


def _run_on_cluster(
    workdir: Path,
    params: dict,
    *,
    env: dict[str, str],
    workers: int,
    report: Path,
    stages: list[str],
) -> list[tuple]:
    from dask.distributed import Client, get_task_stream, performance_report

    with (
        local_cluster(workers) as cluster,  # the one a stage starts for itself
        Client(cluster),
        performance_report(filename=str(report)),  # every client's tasks in the meantime
        get_task_stream() as stream,
    ):
        address = {"DASK_SCHEDULER_ADDRESS": cluster.scheduler_address}
        results = run_engine("dask", workdir, params, env=env | address, stages=stages)
    print(f"Dask performance report: {report}")
    _where_the_time_goes(stream.data)
    return results


def _where_the_time_goes(records: list[dict]) -> None:
    """Worker seconds per kind of task (computing, and moving data between workers)."""
    from dask.utils import key_split

    seconds: dict[str, dict[str, float]] = {}
    for record in records:
        kind = key_split(record["key"])
        for part in record["startstops"]:
            spent = seconds.setdefault(kind, {"n": 0, "compute": 0.0, "transfer": 0.0})
            if part["action"] in ("compute", "transfer"):
                spent[part["action"]] += part["stop"] - part["start"]
        seconds[kind]["n"] += 1
    print(f"\n{'task':<22} {'tasks':>6} {'compute s':>10} {'transfer s':>11}")
    for kind, spent in sorted(seconds.items(), key=lambda item: -item[1]["compute"]):
        print(f"{kind:<22} {spent['n']:>6} {spent['compute']:>10.1f} {spent['transfer']:>11.1f}")


if __name__ == "__main__":
    main()
