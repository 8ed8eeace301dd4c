"""Ingest-and-validate throughput and peak memory at two sizes, for three kinds of source.

Sources, built in a scratch directory from the simulator at the reference params (1.79 M rows)
and from that data tiled with shifted ids and cards to the large size:
  parquet   the canonical layout (what the simulator writes)
  csv       the upper-case layout with ISO 8601 text timestamps and label words, mapped by params
  wide      Parquet with 24 extra columns, of which the pipeline reads none (extra_columns: [])
Each runs the real validate stage as its own process; the featurize stage then runs on the clean
output, since the features need every row in memory anyway: validate should never need more.

    python bench/ingest.py                       # 1.79 M and 20 M rows, ~10 minutes
    python bench/ingest.py --large 5000000 --kinds parquet
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import yaml

from fraudlab.core import schema
from fraudlab.core.params import load_params
from fraudlab.data.simulate import simulate_transactions
from peak import PREFIX

ROOT = Path(__file__).resolve().parents[1]
UPPER = {c: c.upper() for c in schema.REQUIRED_COLUMNS}
N_EXTRA = 24


def tiled(frame: pd.DataFrame, n_rows: int) -> pd.DataFrame:
    """``frame`` repeated over disjoint customers, terminals and ids until ``n_rows``."""
    copies = -(-n_rows // len(frame))
    parts = []
    for k in range(copies):
        parts.append(
            frame.assign(
                transaction_id=frame["transaction_id"] + k * len(frame),
                customer_id=frame["customer_id"] + k * (frame["customer_id"].max() + 1),
                terminal_id=frame["terminal_id"] + k * (frame["terminal_id"].max() + 1),
            )
        )
    return pd.concat(parts, ignore_index=True).head(n_rows)


def write_source(frame: pd.DataFrame, kind: str, path: Path) -> dict:
    """Write ``frame`` as a source of ``kind``; returns the source params that read it."""
    source = {"path": str(path), "columns": {}, "extra_columns": "all"}
    if kind == "parquet":
        frame.to_parquet(path, index=False)
    elif kind == "wide":
        rng = np.random.default_rng(0)
        extra = {f"extra_{i}": rng.random(len(frame)) for i in range(N_EXTRA)}
        frame.assign(**extra).to_parquet(path, index=False)
        source["extra_columns"] = []
    else:
        text = frame.assign(
            tx_datetime=frame["tx_datetime"].dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
            tx_fraud=np.where(frame["tx_fraud"] == 1, "fraud", "legit"),
        ).rename(columns=UPPER)
        pacsv.write_csv(pa.Table.from_pandas(text, preserve_index=False), path)
        source["columns"] = UPPER
    return source


def run_stage(args: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MiB) of one stage process (see bench/peak.py:
    this process holds the data, so the child's ru_maxrss would count it too)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "peak.py"), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"failed: {args}\n{done.stderr}")
    peak = [line for line in done.stderr.splitlines() if line.startswith(PREFIX)][-1]
    return elapsed, int(peak.split()[1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", type=int, default=20_000_000, help="rows of the large size")
    parser.add_argument("--kinds", nargs="+", default=["parquet", "csv", "wide"])
    parser.add_argument("--no-featurize", action="store_true", help="skip the featurize runs")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="fraudlab-ingest-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    reference = simulate_transactions(load_params(ROOT / "params.yaml", "simulate")["simulate"])
    baseline = run_stage(["fraudlab.stages.validate", "--help"], env)[1]
    print(f"stage process before reading any row (imports): {baseline:,.0f} MiB")
    print(
        f"{'rows':>11} {'source':<8} {'file MiB':>9} {'stage':<10} {'seconds':>8} "
        f"{'rows/s':>11} {'peak MiB':>9}"
    )
    try:
        for n_rows in (len(reference), args.large):
            frame = reference if n_rows == len(reference) else tiled(reference, n_rows)
            for kind in args.kinds:
                raw = workdir / f"{kind}.{'csv' if kind == 'csv' else 'parquet'}"
                source = write_source(frame, kind, raw)
                case = workdir / kind
                case.mkdir(exist_ok=True)
                (case / "params.yaml").write_text(
                    yaml.safe_dump(params | {"source": params["source"] | source})
                )
                clean = case / "clean.parquet"
                runs = {
                    "validate": [
                        "fraudlab.stages.validate",
                        "--params",
                        str(case / "params.yaml"),
                        "--clean",
                        str(clean),
                        "--rejected",
                        str(case / "rejected.parquet"),
                        "--report",
                        str(case / "dq.json"),
                    ]
                }
                if not args.no_featurize and kind == "parquet":
                    runs["featurize"] = [
                        "fraudlab.stages.featurize",
                        str(clean),
                        "--params",
                        str(case / "params.yaml"),
                        "--out",
                        str(case / "features.parquet"),
                    ]
                size = raw.stat().st_size / 2**20
                for stage, stage_args in runs.items():
                    seconds, peak = run_stage(stage_args, env)
                    print(
                        f"{n_rows:>11,} {kind:<8} {size:>9,.0f} {stage:<10} {seconds:>8.1f} "
                        f"{n_rows / seconds:>11,.0f} {peak:>9,.0f}",
                        flush=True,
                    )
                shutil.rmtree(case)
                raw.unlink()
            del frame
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
