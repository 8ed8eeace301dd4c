"""Stage ``validate``: read the source, map it onto the canonical schema, apply the data contract,
quarantine bad rows, report data quality.

The source file is named by ``source.path`` in params.yaml and read from there, never passed on
the command line: dvc.yaml's command is run by a shell, where a file name holding a space,
``$(...)``, backticks or ``;`` would split or run as a command.
"""

from __future__ import annotations

import logging

from fraudlab.cli import run, stage_parser
from fraudlab.ingest import columns_to_read, id_columns, read_header, read_transactions
from fraudlab.io import write_dataset, write_json, write_parquet
from fraudlab.params import load_params
from fraudlab.validate import DataContractError, validate_transactions

log = logging.getLogger(__name__)
SECTIONS = ("validate", "source", "storage")


def validate(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--clean", required=True, help="accepted rows (Parquet dataset directory)")
    parser.add_argument("--rejected", required=True, help="quarantined rows with reason (Parquet)")
    parser.add_argument("--report", required=True, help="data-quality metrics (JSON)")
    args = parser.parse_args(argv)
    loaded = load_params(args.params, *SECTIONS)
    source = loaded["source"]
    try:
        # Only the columns the pipeline uses are read; missing ones fail before any row is.
        columns = columns_to_read(read_header(source.path), source)
        result = validate_transactions(
            read_transactions(source.path, columns, text=id_columns(source)),
            loaded["validate"],
            source=source,
        )
    except DataContractError as exc:
        raise DataContractError(f"{source.path}: {exc}") from None
    write_dataset(result.clean, args.clean, rows_per_part=loaded["storage"].rows_per_part)
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
