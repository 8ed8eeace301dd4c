"""Online features at the reference size: latency per transaction and parity with the batch.

    dvc repro && python bench/online_features.py [--n 5000]

Takes the featurized reference data (data/features/transactions.parquet), builds each customer's
and terminal's stored rows (History) as a store would serve them, and computes the features of
the first ``n`` transactions of the test period one at a time with
``fraudlab.features.transaction_features`` (the batch kernels on those few rows). Prints the time
per transaction (median and p99) and the largest difference from the batch features.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fraudlab.core import schema
from fraudlab.core.params import load_params
from fraudlab.features.names import feature_names
from fraudlab.features.online import histories, transaction_features

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="transactions to score")
    args = parser.parse_args()
    loaded = load_params(ROOT / "params.yaml", "features", "split")
    params, split = loaded["features"], loaded["split"]
    batch = pd.read_parquet(ROOT / "data" / "features" / "transactions.parquet")
    customers = histories(batch, schema.CUSTOMER_ID, batch[schema.TX_AMOUNT].to_numpy())
    terminals = histories(batch, schema.TERMINAL_ID, batch[schema.TX_FRAUD].to_numpy())
    test_start = pd.Timestamp(split.train_start) + pd.Timedelta(
        days=split.train_days + params.label_delay_days
    )
    rows = batch[batch[schema.TX_DATETIME] >= test_start].head(args.n)
    names = feature_names(params)
    seconds, online = [], []
    for row in rows.itertuples(index=False):
        started = time.perf_counter()
        online.append(
            transaction_features(
                time=pd.Timestamp(row.tx_datetime).value,
                transaction_id=int(row.transaction_id),
                amount=float(row.tx_amount),
                customer=customers[row.customer_id],
                terminal=terminals[row.terminal_id],
                params=params,
            )
        )
        seconds.append(time.perf_counter() - started)
    difference = np.abs(np.array(online) - rows[names].to_numpy(dtype=np.float64))
    micro = np.array(seconds) * 1e6
    print(f"transactions scored: {len(rows):,} from {test_start.date()}")
    median, p99 = np.median(micro), np.percentile(micro, 99)
    print(f"time per transaction: median {median:.0f} us, p99 {p99:.0f} us")
    print(f"largest difference from the batch features: {difference.max():.3g}")
    worst = names[int(difference.max(axis=0).argmax())]
    print(f"  in {worst}; rows differing at all: {int((difference > 0).any(axis=1).sum()):,}")


if __name__ == "__main__":
    main()
