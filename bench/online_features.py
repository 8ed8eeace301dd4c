"""Online features at the reference size: latency per transaction and parity with the batch.

    dvc repro && python bench/online_features.py [--n 5000]

Takes the featurized reference data (data/features/transactions.parquet) and computes the
features of the first ``n`` transactions of the test period one at a time, two ways:

* the scoring service's running state (``fraudlab.features.state``), built in bulk from every
  row before the test period as the service loads its store, then each transaction appended;
* the batch kernels on the card's and terminal's stored rows
  (``fraudlab.features.transaction_features``), the path the state replaced.

Prints for each the time per transaction (median and p99), the largest difference from the
batch features, and the time to build the states.
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
from fraudlab.features.state import States, bulk_cards, bulk_places

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
    before = batch[batch[schema.TX_DATETIME] < test_start]
    started = time.perf_counter()
    times = before[schema.TX_DATETIME].to_numpy(dtype="datetime64[ns]").view(np.int64)
    ids = before[schema.TRANSACTION_ID].to_numpy(dtype=np.int64)
    cards = bulk_cards(before[schema.CUSTOMER_ID].tolist(), times, ids,
                       before[schema.TX_AMOUNT].to_numpy(), params)  # fmt: skip
    places = bulk_places(before[schema.TERMINAL_ID].tolist(), times, ids,
                         before[schema.TX_FRAUD].to_numpy(), params)  # fmt: skip
    built = time.perf_counter() - started
    states = States(params)
    states.cards, states.places = cards, places
    seconds, state_rows = [], []
    for row in rows.itertuples(index=False):
        when = pd.Timestamp(row.tx_datetime).value
        started = time.perf_counter()
        values = states.add(when, int(row.transaction_id), row.customer_id, row.terminal_id,
                            float(row.tx_amount), int(row.tx_fraud))  # fmt: skip
        state_rows.append(states.row(values))
        seconds.append(time.perf_counter() - started)
    print(f"transactions scored: {len(rows):,} from {test_start.date()}, one at a time")
    print(f"states of {len(before):,} stored rows built in bulk in {built:.1f} s "
          f"({len(cards):,} cards, {len(places):,} terminals)")  # fmt: skip
    _report("running state", seconds, state_rows, rows, names)
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
    _report("kernels on stored rows", seconds, online, rows, names)


def _report(path: str, seconds: list[float], online: list, rows: pd.DataFrame, names) -> None:
    difference = np.abs(np.array(online) - rows[names].to_numpy(dtype=np.float64))
    micro = np.array(seconds) * 1e6
    median, p99 = np.median(micro), np.percentile(micro, 99)
    worst = names[int(difference.max(axis=0).argmax())]
    print(f"{path}: median {median:.0f} us, p99 {p99:.0f} us per transaction; largest "
          f"difference from the batch {difference.max():.3g} (in {worst}; rows differing at "
          f"all: {int((difference > 0).any(axis=1).sum()):,})")  # fmt: skip


if __name__ == "__main__":
    main()
