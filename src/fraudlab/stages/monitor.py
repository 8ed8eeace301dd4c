"""Stage ``monitor``: score the whole weeks after the test period with the committed model and
compare them with the reference profile; write the weekly report (JSON), its summary (the few
figures ``dvc metrics diff`` compares), the weekly series for DVC plots and a one-page HTML
report."""

from __future__ import annotations

import logging

import pandas as pd

from fraudlab.core import schema
from fraudlab.core.errors import UserError
from fraudlab.core.io import atomic_path, read_parquet, write_json
from fraudlab.core.params import (
    EvaluateParams,
    FeaturesParams,
    MonitorParams,
    SplitParams,
    load_params,
)
from fraudlab.core.runner import run, stage_parser
from fraudlab.integrity.lock import recorded
from fraudlab.modeling.artifact import load_model
from fraudlab.modeling.pipeline import predict_scores
from fraudlab.modeling.split import monitoring_start, test_start
from fraudlab.monitoring.page import render_html
from fraudlab.monitoring.reference import read_reference_profile
from fraudlab.monitoring.weekly import (
    baseline_performance,
    data_end,
    fired,
    monitored_weeks,
    monitoring_report,
    monitoring_summary,
    plot_tables,
)

log = logging.getLogger(__name__)
SECTIONS = ("split", "features", "evaluate", "monitor")


class DriftAlertError(UserError):
    """An alert fired and ``monitor.strict`` asks the stage to fail."""


def monitor(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("features", help="every transaction with its features (Parquet)")
    parser.add_argument("--model", required=True, help="fitted model artifact (joblib)")
    parser.add_argument("--reference", required=True, help="reference profile (JSON)")
    parser.add_argument("--report", required=True, help="the weekly report, whole (JSON)")
    parser.add_argument("--summary", required=True, help="its summary, the metrics (JSON)")
    parser.add_argument("--plots", required=True, help="directory for the weekly series (JSON)")
    parser.add_argument("--html", required=True, help="the report a person reads (HTML)")
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
    reference = read_reference_profile(
        args.reference, lock_path=args.lock, model_path=args.model, features=model.features
    )
    test_begins = pd.Timestamp(test_start(split, delay_days=features_params.label_delay_days))
    # only the parts from the test period on are read
    frame = read_parquet(args.features, filters=[(schema.TX_DATETIME, ">=", test_begins)])
    start = monitoring_start(split, delay_days=features_params.label_delay_days)
    end = data_end(frame[schema.TX_DATETIME])
    weeks = monitored_weeks(start=start, end=end)
    scores = predict_scores(model.pipeline, frame, features=list(model.features))
    if not weeks:
        log.warning("the data end on %s: no whole week after the test period", end.date())
    in_test = (frame[schema.TX_DATETIME] < pd.Timestamp(start)).to_numpy()
    baseline = baseline_performance(frame.loc[in_test], scores[in_test], k=evaluate.top_k)
    frame, scores = frame.loc[~in_test].reset_index(drop=True), scores[~in_test]
    report = monitoring_report(
        frame,
        scores,
        weeks=weeks,
        end=end,
        reference=reference,
        params=params,
        delay_days=features_params.label_delay_days,
        k=evaluate.top_k,
        baseline=baseline,
    )
    page = render_html(
        report,
        reference_shares=list(reference.score.shares),
        model_md5=recorded(args.model, lock_path=args.lock).md5,
    )
    with atomic_path(args.plots, directory=True) as tmp:
        for name, rows in plot_tables(report).items():
            write_json(rows, tmp / name)
    with atomic_path(args.html) as tmp:
        tmp.write_text(page, encoding="utf-8")
    write_json(report, args.report)
    write_json(monitoring_summary(report), args.summary)
    log.info(
        "%d whole weeks monitored from %s; alert %s%s",
        len(weeks),
        start,
        report["alert"],
        f" ({', '.join(report['drifted_features'])})" if report["alert"] else "",
    )
    if report["decayed_weeks"]:
        log.warning("performance decay in %s", ", ".join(report["decayed_weeks"]))
    if report["label_shift_weeks"]:
        log.warning("label shift in %s", ", ".join(report["label_shift_weeks"]))
    if fired(report) and params.strict:
        raise DriftAlertError(strict_message(report, path=args.report, params=params))


def strict_message(report: dict, *, path: str, params: MonitorParams) -> str:
    found = []
    if report["alert"]:
        found.append(
            f"drift past monitor.act ({params.act} on {params.statistic}) in "
            f"{', '.join(report['drifted_features'])}"
        )
    if report["decayed_weeks"]:
        found.append(
            f"AP {params.decay} or more below the baseline in {', '.join(report['decayed_weeks'])}"
        )
    if report["label_shift_weeks"]:
        found.append(
            f"the share of frauds moved (Fisher p < {params.label_shift_p}) in "
            f"{', '.join(report['label_shift_weeks'])}"
        )
    return f"{path}: {'; '.join(found)}; monitor.strict is set"


if __name__ == "__main__":
    run(monitor)
