"""``fraudlab results``: the results page (docs/results.md) and the README's results table,
written from the committed metrics files, so no figure in the docs is typed by hand.

    fraudlab results            # rewrite both from metrics/
    fraudlab results --check    # exit 1 when either differs from what the metrics give

A test runs the check, so a commit whose metrics changed without the pages fails.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import NamedTuple

from fraudlab.core.errors import UserError
from fraudlab.core.io import read_yaml
from fraudlab.core.params import FeaturesParams
from fraudlab.experiments.report import ranking_table, threshold_table
from fraudlab.experiments.tables import markdown_table
from fraudlab.features.names import feature_names
from fraudlab.modeling.metrics import card_precision_key

log = logging.getLogger(__name__)

README_START = "<!-- results: written by `fraudlab results` from metrics/, do not edit -->"
README_END = "<!-- end of results -->"
# The handbook's published test results on its own simulated data, same protocol (AUC ROC / AP /
# CP@100, "after model selection"): the bar fraudlab's defaults are measured against.
HANDBOOK = {
    "logistic regression": (0.868, 0.623, 0.297),
    "random forest": (0.870, 0.678, 0.299),
    "XGBoost": (0.869, 0.687, 0.303),
}
# the four test weeks those are the mean over (each model refit on its own training week)
HANDBOOK_TEST_WEEKS = "2018-08-08..2018-09-04"
METRIC_KEYS = ("auc_roc", "average_precision")


class Committed(NamedTuple):
    """The committed metrics files and params."""

    evaluate: dict
    prequential: dict
    split: dict
    data: dict
    monitoring: dict
    params: dict


def read_committed(root: Path) -> Committed:
    def load(name: str) -> dict:
        return json.loads((root / name).read_text(encoding="utf-8"))

    return Committed(
        evaluate=load("metrics/evaluate/metrics.json"),
        prequential=load("metrics/prequential_test.json"),
        split=load("metrics/split.json"),
        data=load("metrics/data_quality.json"),
        monitoring=load("metrics/monitoring.json"),
        params=read_yaml(root / "params.yaml"),
    )


def _triple(found: dict, key: str) -> str:
    return " / ".join(f"{found[k]:.3f}" for k in (*METRIC_KEYS, key))


def _mean_triple(prequential: dict, key: str) -> str:
    return " / ".join(f"{prequential[k]['mean']:.3f}" for k in (*METRIC_KEYS, key))


def readme_table(committed: Committed) -> str:
    """The committed model's test week and prequential test beside the handbook's best after
    model selection (a prequential test), as the README shows it."""
    params, prequential = committed.params, committed.prequential
    top_k = params["evaluate"]["top_k"]
    key = card_precision_key(top_k)
    family = params["train"]["model"]
    week = f"test week: AUC ROC / AP / CP@{top_k}"
    weeks = f"prequential test, mean of {len(prequential['folds'])} weeks"
    rows = [
        {
            "model": f"fraudlab default ({family}, {len(_features(params))} features)",
            week: _triple(committed.evaluate["test"], key),
            weeks: _mean_triple(prequential, key) if prequential["folds"] else "not run",
        },
        *(
            {
                "model": f"handbook, {name} after selection",
                week: "—",
                weeks: " / ".join(f"{v:.3f}" for v in values),
            }
            for name, values in HANDBOOK.items()
        ),
    ]
    return markdown_table(rows)


def prequential_section(committed: Committed) -> list[str]:
    """Each prequential test period's figures and their mean ± std, and how its weeks compare
    with the handbook's."""
    prequential, params = committed.prequential, committed.params
    folds = prequential["folds"]
    if not folds:
        return ["`split.test_folds` is 0: no prequential test was run.", ""]
    top_k = params["evaluate"]["top_k"]
    key = card_precision_key(top_k)
    names = {"auc_roc": "AUC ROC", "average_precision": "AP", key: f"CP@{top_k}"}
    rows = [
        {
            "test period": period,
            "trained on": fold["train"],
            "transactions": f"{fold['transactions']:,}",
            "frauds": f"{fold['frauds']:,}",
            **{label: f"{fold[name]:.4f}" for name, label in names.items()},
        }
        for period, fold in folds.items()
    ]
    rows.append(
        {
            "test period": "mean ± std",
            "trained on": "",
            "transactions": "",
            "frauds": "",
            **{
                label: f"{prequential[name]['mean']:.4f} ± {prequential[name]['std']:.4f}"
                for name, label in names.items()
            },
        }
    )
    span = f"{next(iter(folds)).split('..')[0]}..{list(folds)[-1].split('..')[1]}"
    same = (
        "the same weeks as the handbook's table after model selection"
        if span == HANDBOOK_TEST_WEEKS
        else f"the handbook's table after model selection uses {HANDBOOK_TEST_WEEKS}"
    )
    return [
        f"The model refit on each of {len(folds)} training periods, one test period apart, "
        f"each scored on its own test period ({span}: {same}). The first is the test period "
        "above. Cards known to be compromised by the end of a training period are removed from "
        "its test period; card precision drops a card detected on an earlier day of the period "
        "(`fraudlab.modeling.metrics.card_precision_at_k`).",
        "",
        markdown_table(rows),
        "",
    ]


def _features(params: dict) -> list[str]:
    return feature_names(FeaturesParams.model_validate(params["features"]))


def results_page(committed: Committed) -> str:
    params, evaluate = committed.params, committed.evaluate
    k = params["evaluate"]["top_k"]
    data = committed.data
    threshold = evaluate["test"]["at_threshold"]["threshold"]
    periods = [
        {
            "part": name.replace("_", " "),
            "days": f"{part['first_day']}..{part['last_day']}",
            "transactions": f"{part['transactions']:,}",
            "frauds": f"{part['frauds']:,}",
            "cards": f"{part['cards']:,}",
        }
        for name, part in committed.split.items()
    ]
    monitoring = committed.monitoring
    statistic = next(
        name for name in monitoring if name.startswith("worst_") and name != "worst_level"
    )
    handbook = [
        {"model": name, "AUC ROC / AP / CP@100": " / ".join(f"{v:.3f}" for v in values)}
        for name, values in HANDBOOK.items()
    ]
    return "\n".join(
        [
            "# Results",
            "",
            "Written by `fraudlab results` from the committed metrics files (`metrics/`) and",
            "`params.yaml`; a test fails when this page differs from what they give.",
            "",
            "## Data",
            "",
            f"{data['rows_kept']:,} transactions kept of {data['rows_read']:,} read, from "
            f"{data['first_tx_datetime']} to {data['last_tx_datetime']}; fraud rate "
            f"{data['fraud_rate']:.3%}; {data['rows_rejected']:,} rejected, "
            f"{data['exact_duplicates_dropped']:,} exact duplicates dropped, "
            f"{data['reexports_folded']:,} re-exported copies folded.",
            "",
            markdown_table(periods),
            "",
            f"## The committed model: {params['train']['model']}, "
            f"{len(_features(params))} features",
            "",
            "Test: the test period, cards already known to be compromised removed. Validation: "
            f"the {params['split']['n_folds']} prequential folds.",
            "",
            ranking_table(evaluate, top_k=k),
            "",
            f"At the operating threshold {threshold:.4f} (chosen on validation, "
            f"`evaluate.threshold: {params['evaluate']['threshold']}`):",
            "",
            threshold_table(evaluate),
            "",
            "## The prequential test",
            "",
            *prequential_section(committed),
            "## The handbook's results on its own simulated data",
            "",
            "After prequential model selection (the bar to meet): the mean over four prequential",
            f"test weeks, {HANDBOOK_TEST_WEEKS}, to compare with the prequential test above:",
            "",
            markdown_table(handbook),
            "",
            "## Monitoring of the weeks after the test period",
            "",
            f"{monitoring['weeks']} weeks monitored, {monitoring['matured_weeks']} with matured "
            f"labels; alert: {'yes' if monitoring['alert'] else 'no'}; worst level "
            f"`{monitoring['worst_level']}` ({statistic.removeprefix('worst_')} "
            f"{monitoring[statistic]:.4f}); {monitoring['drifted_features']} drifted features, "
            f"{monitoring['decayed_weeks']} decayed weeks, {monitoring['label_shift_weeks']} "
            "label shifts. AP on every transaction of the test period (the baseline): "
            f"{monitoring['baseline_average_precision']:.4f}; in the latest matured week: "
            + (
                f"{monitoring['latest_matured_average_precision']:.4f}."
                if monitoring["latest_matured_average_precision"] is not None
                else "none matured yet."
            ),
            "",
        ]
    )


def with_readme_table(readme: str, table: str) -> str:
    """``readme`` with the block between the markers replaced by ``table``."""
    if README_START not in readme or README_END not in readme:
        raise UserError(f"README.md has no results block ({README_START} ... {README_END})")
    head, rest = readme.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}\n{table}\n{README_END}{tail}"


def results(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fraudlab results", description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", help="the repository (default: .)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a page is out of date")
    args = parser.parse_args(argv)
    root = Path(args.root)
    committed = read_committed(root)
    pages = {
        root / "docs" / "results.md": results_page(committed),
        root / "README.md": with_readme_table(
            (root / "README.md").read_text(encoding="utf-8"), readme_table(committed)
        ),
    }
    stale = [
        path
        for path, text in pages.items()
        if not path.is_file() or path.read_text(encoding="utf-8") != text
    ]
    if args.check:
        if stale:
            raise UserError(f"out of date: {', '.join(map(str, stale))}; run `fraudlab results`")
        return
    for path in stale:
        path.write_text(pages[path], encoding="utf-8")
        log.info("wrote %s", path)
