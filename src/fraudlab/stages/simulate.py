"""Stage ``simulate``: write the simulated raw transactions."""

from __future__ import annotations

import logging
import time

from fraudlab.cli import run, stage_parser
from fraudlab.io import write_parquet
from fraudlab.params import load_params
from fraudlab.simulate import simulate_transactions

log = logging.getLogger(__name__)
SECTIONS = ("simulate",)


def simulate(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", required=True, help="raw transactions (Parquet)")
    args = parser.parse_args(argv)
    params = load_params(args.params, *SECTIONS)["simulate"]
    started = time.perf_counter()
    frame = simulate_transactions(params)
    write_parquet(frame, args.out)
    elapsed = time.perf_counter() - started
    log.info(
        "wrote %d transactions (%d frauds) to %s in %.1f s (%.0f rows/s)",
        len(frame),
        frame["tx_fraud"].sum(),
        args.out,
        elapsed,
        len(frame) / elapsed,
    )


if __name__ == "__main__":
    run(simulate)
