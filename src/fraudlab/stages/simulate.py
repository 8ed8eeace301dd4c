"""Stage ``simulate``: write the simulated raw transactions.

With ``simulate.customers_per_block`` set, blocks of customers are drawn by the engine's tasks
(``scaleout.engine``: this process, or a Dask cluster) and merged part by part; either way the
same files come out. Without it, the whole population is drawn here, as for the reference data.
"""

from __future__ import annotations

import logging
import time

from fraudlab.core.io import write_dataset
from fraudlab.core.params import load_params
from fraudlab.core.runner import run, stage_parser
from fraudlab.data.simulate import simulate_dataset, simulate_transactions
from fraudlab.scaleout.engine import engine_config, partitioned_run

log = logging.getLogger(__name__)
SECTIONS = ("simulate", "storage")


def simulate(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", required=True, help="raw transactions (Parquet dataset directory)")
    args = parser.parse_args(argv)
    loaded = load_params(args.params, *SECTIONS)
    params, rows_per_part = loaded["simulate"], loaded["storage"].rows_per_part
    config = engine_config()
    started = time.perf_counter()
    if params.customers_per_block is None:
        if config.kind != "local":
            log.info("simulate.customers_per_block is null: one generator, in this process")
        frame = simulate_transactions(params)
        write_dataset(frame, args.out, rows_per_part=rows_per_part)
        n_rows = len(frame)
    else:
        with partitioned_run(config, args.out) as (engine, out, scratch):
            n_rows = simulate_dataset(
                engine, out, scratch=scratch, params=params, rows_per_part=rows_per_part
            )
    elapsed = time.perf_counter() - started
    log.info(
        "wrote %d transactions to %s in %.1f s (%.0f rows/s)",
        n_rows,
        args.out,
        elapsed,
        n_rows / elapsed,
    )


if __name__ == "__main__":
    run(simulate)
