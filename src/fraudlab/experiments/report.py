"""A model-comparison report in Markdown, written to read well as a pull-request comment.

    fraudlab report --out report                 # report/README.md and its plots
    fraudlab report --out report --base origin/main

Sections: the committed model's metrics (test, validation mean ± std across folds, and the
operating threshold with its precision, recall and cost); the best experiment of each model family
on this commit (`dvc exp show`), with its precision-recall and ROC plots; and, with ``--base``,
`dvc metrics diff` and `dvc params diff` against that revision.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

from fraudlab.core.io import read_yaml
from fraudlab.experiments.search import (
    METRICS_FILE,
    card_precision_cell,
    card_precision_label,
    dvc,
    experiments,
    git,
    leaderboard,
)
from fraudlab.experiments.tables import markdown_table
from fraudlab.modeling.metrics import card_precision_key

log = logging.getLogger(__name__)

IMAGES = "metrics/evaluate/plots/images"
SHOWN_PLOTS = ("precision_recall.png", "roc.png")
DATA_METRICS = ("metrics/data_quality.json", "metrics/split.json")


def ranking_table(metrics: dict, *, top_k: int) -> str:
    """Test metrics beside validation mean ± std over the folds (metrics/evaluate's file)."""
    test, validation = metrics["test"], metrics["validation"]
    names = {
        "average_precision": "Average precision",
        "auc_roc": "AUC ROC",
        card_precision_key(top_k): f"Card precision@{top_k}",
    }
    return markdown_table(
        [
            {
                "metric": label,
                "test": f"{test[key]:.4f}",
                "validation (mean ± std over folds)": f"{validation[key]['mean']:.4f} ± "
                f"{validation[key]['std']:.4f}",
            }
            for key, label in names.items()
            if key in test
        ]
    )


def threshold_table(metrics: dict) -> str:
    """What the operating threshold does on test and validation."""
    at_test, at_validation = metrics["test"]["at_threshold"], metrics["validation"]["at_threshold"]
    return markdown_table(
        [
            {
                "": label,
                "test": f"{at_test[key]:{fmt}}",
                "validation": f"{at_validation[key]:{fmt}}",
            }
            for key, label, fmt in (
                ("precision", "Precision", ".4f"),
                ("recall", "Recall", ".4f"),
                ("f1", "F1", ".4f"),
                ("alerted_cards_per_day", "Cards alerted a day", ".1f"),
                ("cost_per_day", "Cost a day", ",.0f"),
                ("tp", "Frauds caught", ","),
                ("fp", "False alerts", ","),
            )
        ]
    )


def current_section(metrics: dict, model: str, *, top_k: int) -> str:
    """The committed model: test metrics beside validation mean ± std, then the threshold."""
    threshold = metrics["test"]["at_threshold"]["threshold"]
    return (
        f"## Committed model: {model}\n\n{ranking_table(metrics, top_k=top_k)}\n\n"
        f"At the operating threshold **{threshold:.4f}** (chosen on validation):\n\n"
        f"{threshold_table(metrics)}\n"
    )


def best_per_family(table: pd.DataFrame) -> pd.DataFrame:
    """The committed model's row, and the leaderboard's best successful experiment of each
    family, in leaderboard order."""
    board = leaderboard(table)
    committed = board["state"] == "committed"
    best = board[board["state"] == "success"].drop_duplicates("family", keep="first")
    return board[committed | board.index.isin(best.index)].reset_index(drop=True)


def _changes(params: dict, committed: dict) -> str:
    changed = {k: v for k, v in params.items() if committed.get(k) != v}
    return ", ".join(f"{k}={v}" for k, v in changed.items()) or "as committed"


def families_section(best: pd.DataFrame, plots: dict[str, list[str]], committed: dict) -> str:
    """``best``: the committed model's row and each family's best experiment (leaderboard
    order); ``committed``: params.yaml's train section, to show what each experiment changed."""
    if not (best["state"] == "success").any():
        return (
            "## Model families\n\nNo experiments were found on this commit (a fresh clone has "
            "none): run `fraudlab search grid` to compare families.\n"
        )
    cp = card_precision_label(best)
    rows = [
        {
            "family": row.family,
            "experiment": row.experiment,
            "params changed": _changes(row.params, committed.get(row.family, {}))
            if row.state == "success"
            else "as committed",
            "val AP (± std)": f"{row.validation_average_precision:.4f} ± "
            f"{row.validation_average_precision_std:.4f}",
            "test AP": f"{row.test_average_precision:.4f}",
            "test AUC": f"{row.test_auc_roc:.4f}",
            f"test {cp}": card_precision_cell(row.test_card_precision, row.top_k, cp, digits=4),
        }
        for row in best.itertuples(index=False)
    ]
    lines = [
        "## Model families (the committed model and the best experiment of each family, by "
        "validation AP)\n",
        markdown_table(rows),
    ]
    for row in best.itertuples(index=False):
        images = " ".join(f"![{row.family} {p}]({p})" for p in plots.get(row.experiment, []))
        if images:
            lines += ["", f"**{row.family}** ({row.experiment}): {images}"]
    return "\n".join(lines) + "\n"


def changes_section(base: str) -> str:
    """Model metrics and params against ``base``; data and split metrics folded away."""
    model = dvc("metrics", "diff", base, "--md", "--targets", METRICS_FILE)
    data = dvc("metrics", "diff", base, "--md", "--targets", *DATA_METRICS)
    params = dvc("params", "diff", base, "--md")
    return (
        f"## Changes against {base}\n\n### Model metrics\n\n{model or 'No change.'}\n\n"
        f"### Params\n\n{params or 'No change.'}\n\n<details><summary>Data and split "
        f"metrics</summary>\n\n{data or 'No change.'}\n\n</details>\n"
    )


def _export_plots(best: pd.DataFrame, out: Path) -> dict:
    """Copy each winner's PNGs out of its experiment commit; paths relative to ``out``."""
    plots: dict[str, list[str]] = {}
    for row in best.itertuples(index=False):
        plots[row.experiment] = []
        for image in SHOWN_PLOTS:
            # a folder name safe in a Markdown link: the committed row's name has a space
            folder = "committed" if row.state == "committed" else row.experiment
            target = Path("plots") / folder / image
            (out / target).parent.mkdir(parents=True, exist_ok=True)
            (out / target).write_bytes(git("show", f"{row.rev}:{IMAGES}/{image}", binary=True))
            plots[row.experiment].append(target.as_posix())
    return plots


def report(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fraudlab report", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory for README.md and plots")
    parser.add_argument("--base", help="revision to diff metrics and params against")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    metrics = json.loads(Path(METRICS_FILE).read_text())
    commit = git("rev-parse", "--short", "HEAD").strip()
    params = read_yaml("params.yaml")
    train, top_k = params["train"], params["evaluate"]["top_k"]
    best = best_per_family(experiments(json.loads(dvc("exp", "show", "--json"))))
    plots = _export_plots(best, out)
    sections = [
        f"# fraudlab model report ({commit})\n",
        current_section(metrics, train["model"], top_k=top_k),
    ]
    sections.append(families_section(best, plots, train))
    if args.base:
        sections.append(changes_section(args.base))
    (out / "README.md").write_text("\n".join(sections))
    log.info("wrote %s", out / "README.md")
