"""Stage ``monitor``: score the whole weeks after the test period with the committed model and
compare them with the reference profile; write ``metrics/monitoring.json``."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd

from fraudlab import schema
from fraudlab.artifacts import verify_file
from fraudlab.cli import run, stage_parser
from fraudlab.drift import ReferenceProfile
from fraudlab.errors import UserError
from fraudlab.io import read_parquet, write_json
from fraudlab.models import load_model, predict_scores
from fraudlab.monitor import data_end, monitored_weeks, monitoring_report
from fraudlab.params import EvaluateParams, FeaturesParams, MonitorParams, SplitParams, load_params
from fraudlab.split import monitoring_start

log = logging.getLogger(__name__)
SECTIONS = ("split", "features", "evaluate", "monitor")


class DriftAlertError(UserError):
    """An alert fired and ``monitor.strict`` asks the stage to fail."""


def monitor(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("features", help="every transaction with its features (Parquet)")
    parser.add_argument("--model", required=True, help="fitted model artifact (joblib)")
    parser.add_argument("--reference", required=True, help="reference profile (JSON)")
    parser.add_argument("--output", required=True, help="monitoring report (JSON)")
    parser.add_argument(
        "--lock", default="dvc.lock", help="hashes the inputs must match (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    loaded = load_params(args.params, *SECTIONS)
    split: SplitParams = loaded["split"]
    features_params: FeaturesParams = loaded["features"]
    evaluate: EvaluateParams = loaded["evaluate"]
    params: MonitorParams = loaded["monitor"]

    model = load_model(args.model, lock_path=args.lock)
    verify_file(args.reference, lock_path=args.lock)
    with open(args.reference, encoding="utf-8") as handle:
        reference = ReferenceProfile.from_dict(json.load(handle))
    frame = read_parquet(args.features)
    start = monitoring_start(split, delay_days=features_params.label_delay_days)
    end = data_end(frame[schema.TX_DATETIME])
    weeks = monitored_weeks(start=start, end=end)
    frame = frame[frame[schema.TX_DATETIME] >= pd.Timestamp(start)].reset_index(drop=True)
    if weeks:
        scores = predict_scores(model.pipeline, frame, features=list(model.features))
    else:
        log.warning("the data end on %s: no whole week after the test period", end.date())
        scores = np.zeros(len(frame))
    report = monitoring_report(
        frame,
        scores,
        weeks=weeks,
        end=end,
        reference=reference,
        params=params,
        delay_days=features_params.label_delay_days,
        k=evaluate.top_k,
    )
    write_json(report, args.output)
    log.info(
        "%d whole weeks monitored from %s; alert %s%s",
        len(weeks),
        start,
        report["alert"],
        f" ({', '.join(report['drifted_features'])})" if report["alert"] else "",
    )
    if report["alert"] and params.strict:
        raise DriftAlertError(
            f"{args.output}: drift past monitor.act ({params.act} on {params.statistic}) in "
            f"{', '.join(report['drifted_features'])}; monitor.strict is set"
        )


if __name__ == "__main__":
    run(monitor)
