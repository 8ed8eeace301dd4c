"""Stage ``validate``: read the source, map it onto the canonical schema, apply the data contract,
quarantine bad rows, report data quality.

The source is read in chunks (a Parquet row group; ``storage.rows_per_part`` rows of a CSV) and
checked partition by partition (``fraudlab.data.partitioned``), in this process or on a Dask
cluster (``fraudlab.scaleout.engine``): the same files either way.

The source file is named by ``source.path`` in params.yaml and read from there, never passed on
the command line: dvc.yaml's command is run by a shell, where a file name holding a space,
``$(...)``, backticks or ``;`` would split or run as a command.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from fraudlab.core.errors import UserError
from fraudlab.core.io import write_json, write_parquet
from fraudlab.core.params import FeaturesParams, ParamsError, SplitParams, load_params
from fraudlab.core.runner import run, stage_parser
from fraudlab.data.ingest import columns_to_read, read_header, text_columns
from fraudlab.data.partitioned import validate_dataset
from fraudlab.modeling.span import SpanError, check_span
from fraudlab.scaleout.engine import engine_config, partitioned_run

log = logging.getLogger(__name__)
SECTIONS = ("validate", "source", "storage")
# Read only to say at once when the data cannot hold the protocol, before the heavy stages; the
# outputs do not depend on them, so dvc.yaml does not declare them (the split stage checks again).
CHECKED = ("split", "features")


def _protocol(path: str) -> dict:
    """The split and features sections, when the params file has them (a params file written
    for the data contract alone, as some tests do, has not)."""
    try:
        return load_params(path, *CHECKED)
    except ParamsError:
        return {}


def require_span(report: dict, *, split: SplitParams, features: FeaturesParams) -> None:
    if not report["rows_kept"]:
        return
    found = check_span(
        pd.Timestamp(report["first_tx_datetime"]),
        pd.Timestamp(report["last_tx_datetime"]),
        split=split,
        features=features,
    )
    for warning in found.warnings:
        log.warning("%s", warning)
    if found.errors:
        raise SpanError("; ".join(found.errors))


def _left_as_they_were(args: argparse.Namespace) -> str:
    """What a failed run did to the outputs: nothing (dvc.yaml declares them ``persist``, so
    `dvc repro` does not delete them before the run either)."""
    outputs = [args.clean, args.rejected, args.report]
    present = [path for path in outputs if Path(path).exists()]
    if not present:
        return f"Nothing was written: {', '.join(outputs)} do not exist yet."
    return (
        f"Nothing was changed: {', '.join(present)} still hold the last successful run's "
        "outputs (and dvc.lock still records them)."
    )


def validate(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--clean", required=True, help="accepted rows (Parquet dataset directory)")
    parser.add_argument("--rejected", required=True, help="quarantined rows with reason (Parquet)")
    parser.add_argument("--report", required=True, help="data-quality metrics (JSON)")
    args = parser.parse_args(argv)
    loaded = load_params(args.params, *SECTIONS)
    protocol = _protocol(args.params)
    source = loaded["source"]
    try:
        # Only the columns the pipeline uses are read; missing ones fail before any row is.
        columns = columns_to_read(read_header(source.path), source)
        with partitioned_run(engine_config(), args.clean) as (engine, clean, scratch):
            result = validate_dataset(
                engine,
                Path(source.path),
                columns=columns,
                text=text_columns(source),
                clean_out=clean,
                scratch=scratch,
                params=loaded["validate"],
                source=source,
                rows_per_part=loaded["storage"].rows_per_part,
            )
            # inside the writer's block: a failure here leaves no clean data behind
            if protocol:
                require_span(result.report, **protocol)
    except UserError as exc:
        raise type(exc)(f"{source.path}: {exc}\n{_left_as_they_were(args)}") from None
    write_parquet(result.rejected, args.rejected)
    write_json(result.report, args.report)
    report = result.report
    log.info(
        "kept %d of %d rows; quarantined %d (%s); dropped %d exact duplicates; folded %d "
        "re-exported copies (the same values once parsed)",
        report["rows_kept"],
        report["rows_read"],
        report["rows_rejected"],
        report["rejected_by_reason"] or "none",
        report["exact_duplicates_dropped"],
        report["reexports_folded"],
    )


if __name__ == "__main__":
    run(validate)
