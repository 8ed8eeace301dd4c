"""Stage ``validate``: apply the data contract, quarantine bad rows, report data quality."""

from __future__ import annotations

import logging

from fraudlab.cli import run, stage_parser
from fraudlab.io import read_parquet, write_json, write_parquet
from fraudlab.params import load_params
from fraudlab.validate import DataContractError, validate_transactions

log = logging.getLogger(__name__)
SECTIONS = ("validate",)


def validate(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("raw", help="raw transactions in the canonical schema (Parquet)")
    parser.add_argument("--clean", required=True, help="accepted rows (Parquet)")
    parser.add_argument("--rejected", required=True, help="quarantined rows with reason (Parquet)")
    parser.add_argument("--report", required=True, help="data-quality metrics (JSON)")
    args = parser.parse_args(argv)
    params = load_params(args.params, *SECTIONS)["validate"]
    try:
        result = validate_transactions(read_parquet(args.raw), params)
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
