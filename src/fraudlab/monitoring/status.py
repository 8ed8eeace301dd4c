"""``fraudlab monitor``: the latest monitoring verdict in the terminal, week by week.

    fraudlab monitor                          # after `dvc repro monitor`
    fraudlab monitor --strict                 # exit 1 on drift past act, decay or label shift

It reads the weekly report the monitor stage wrote (nothing is recomputed) and prints what the
page's headline says, then one line per week: the worst-moved input, the score's drift, and the
matured performance or the day its labels mature.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from fraudlab.core.errors import UserError
from fraudlab.monitoring.weekly import SCORE_NAME, fired, measured_weeks, verdict


class MonitoringAlertError(UserError):
    """``--strict`` and the report holds an alert, a decay or a label shift."""


def week_table(report: dict) -> pd.DataFrame:
    """One row per monitored week with transactions."""
    statistic = report["statistic"]
    rows = []
    for label, entry in measured_weeks(report):
        inputs = {name: found for name, found in entry["drift"].items() if name != SCORE_NAME}
        worst = max(inputs, key=lambda name: inputs[name][statistic])
        performance = entry["performance"]
        rows.append(
            {
                "week": label,
                "from": entry["start"],
                "transactions": entry["transactions"],
                "worst input": worst,
                statistic: round(inputs[worst][statistic], 4),
                "level": inputs[worst]["level"],
                f"score {statistic}": round(entry["drift"][SCORE_NAME][statistic], 4),
                "AP": (
                    f"{performance['average_precision']:.4f}"
                    if performance["status"] == "mature"
                    else f"pending to {performance['labels_mature_on']}"
                ),
                "diagnosis": entry["diagnosis"]["kind"],
            }
        )
    return pd.DataFrame(rows)


def status_text(report: dict) -> str:
    found = verdict(report)
    table = week_table(report)
    lines = [f"{found['kind']}: {found['advice']}"]
    if report["drifted_features"]:
        lines.append(f"moved past act ({report['act']}): {', '.join(report['drifted_features'])}")
    if report["baseline"]:
        baseline = report["baseline"]["average_precision"]
        lines.append(f"baseline AP (every transaction of the test period): {baseline:.4f}")
    lines.append("")
    lines.append(table.to_string(index=False) if len(table) else "no whole week monitored yet")
    return "\n".join(lines)


def monitor(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fraudlab monitor", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--report",
        default="reports/monitoring.json",
        help="the monitor stage's weekly report (default: %(default)s)",
    )
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 on an alert, a decay or a label shift"
    )
    args = parser.parse_args(argv)
    path = Path(args.report)
    if not path.is_file():
        raise UserError(f"{path}: no monitoring report; run `dvc repro monitor` first")
    report = json.loads(path.read_text(encoding="utf-8"))
    print(status_text(report))
    if args.strict and fired(report):
        raise MonitoringAlertError(f"{path}: alert, decay or label shift, and --strict is set")
