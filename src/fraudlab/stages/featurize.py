"""Stage ``featurize``: add point-in-time correct window features to clean transactions."""

from __future__ import annotations

import logging
import time

from fraudlab.cli import run, stage_parser
from fraudlab.features import build_features
from fraudlab.io import read_parquet, write_parquet
from fraudlab.params import load_params

log = logging.getLogger(__name__)
SECTIONS = ("features",)


def featurize(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("clean", help="clean transactions (Parquet)")
    parser.add_argument("--out", required=True, help="transactions with features (Parquet)")
    args = parser.parse_args(argv)
    params = load_params(args.params, *SECTIONS)["features"]
    frame = read_parquet(args.clean)
    started = time.perf_counter()
    features = build_features(frame, params)
    elapsed = time.perf_counter() - started
    log.info(
        "computed features of %d transactions in %.1f s (%.0f rows/s)",
        len(features),
        elapsed,
        len(features) / elapsed,
    )
    write_parquet(features, args.out)


if __name__ == "__main__":
    run(featurize)
