"""Stage ``validate``: read the source, map it onto the canonical schema, apply the data contract,
quarantine bad rows, report data quality."""

from __future__ import annotations

import logging

from fraudlab.cli import run, stage_parser
from fraudlab.ingest import columns_to_read, read_header, read_transactions
from fraudlab.io import write_json, write_parquet
from fraudlab.params import load_params
from fraudlab.validate import DataContractError, validate_transactions

log = logging.getLogger(__name__)
SECTIONS = ("validate", "source")


def validate(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("raw", help="source transactions (CSV or Parquet), read-only")
    parser.add_argument("--clean", required=True, help="accepted rows (Parquet)")
    parser.add_argument("--rejected", required=True, help="quarantined rows with reason (Parquet)")
    parser.add_argument("--report", required=True, help="data-quality metrics (JSON)")
    args = parser.parse_args(argv)
    loaded = load_params(args.params, *SECTIONS)
    source = loaded["source"]
    try:
        # Only the columns the pipeline uses are read; missing ones fail before any row is.
        columns = columns_to_read(read_header(args.raw), source)
        result = validate_transactions(
            read_transactions(args.raw, columns), loaded["validate"], source=source
        )
    except DataContractError as exc:
        raise DataContractError(f"{args.raw}: {exc}") from None
    write_parquet(result.clean, args.clean)
    write_parquet(result.rejected, args.rejected)
    write_json(result.report, args.report)
    log.info(
        "kept %d of %d rows; quarantined %d (%s); dropped %d exact duplicates",
        result.report["rows_kept"],
        result.report["rows_read"],
        result.report["rows_rejected"],
        result.report["rejected_by_reason"] or "none",
        result.report["exact_duplicates_dropped"],
    )


if __name__ == "__main__":
    run(validate)
