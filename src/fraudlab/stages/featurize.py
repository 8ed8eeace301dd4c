"""Stage ``featurize``: add point-in-time correct window features to clean transactions.

On the local engine the whole dataset is featurized in this process; on the Dask engine
(``FRAUDLAB_ENGINE=dask``, see ``fraudlab.scaleout.engine``), or with ``FRAUDLAB_PARTITIONS`` set,
partition by partition. Both write the same bytes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fraudlab.core.io import read_parquet, write_dataset
from fraudlab.core.params import load_params
from fraudlab.core.runner import run, stage_parser
from fraudlab.features.batch import build_features
from fraudlab.features.partitioned import featurize_dataset
from fraudlab.scaleout.engine import engine_config, partitioned_run

log = logging.getLogger(__name__)
SECTIONS = ("features", "storage")


def featurize(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("clean", help="clean transactions (Parquet dataset directory)")
    parser.add_argument("--out", required=True, help="transactions with features (directory)")
    args = parser.parse_args(argv)
    loaded = load_params(args.params, *SECTIONS)
    params, rows_per_part = loaded["features"], loaded["storage"].rows_per_part
    config = engine_config()
    started = time.perf_counter()
    if config.kind == "local" and config.partitions is None:  # whole, in memory
        features = build_features(read_parquet(args.clean), params)
        write_dataset(features, args.out, rows_per_part=rows_per_part)
        n_rows = len(features)
    else:
        with partitioned_run(config, args.out) as (engine, out, scratch):
            n_rows = featurize_dataset(
                engine,
                Path(args.clean),
                out,
                scratch=scratch,
                params=params,
                rows_per_part=rows_per_part,
            )
    elapsed = time.perf_counter() - started
    log.info(
        "computed features of %d transactions in %.1f s (%.0f rows/s)",
        n_rows,
        elapsed,
        n_rows / elapsed,
    )


if __name__ == "__main__":
    run(featurize)
