"""Evaluation plots that open offline: PNG images, and a page template for DVC's Vega plots.

Images are built with matplotlib's object API (no pyplot global state) and saved without the
software/date metadata, so the bytes depend only on the data and library versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from sklearn.metrics import precision_recall_curve, roc_curve

_SIZE = (5.5, 4.5)


def roc_figure(y_true: np.ndarray, y_score: np.ndarray, *, auc: float) -> Figure:
    fpr, tpr, _ = roc_curve(y_true, y_score)
    fig = Figure(figsize=_SIZE)
    ax = fig.subplots()
    ax.plot(fpr, tpr, label=f"model (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="random")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    ax.legend(loc="lower right")
    return fig


def precision_recall_figure(y_true: np.ndarray, y_score: np.ndarray, *, ap: float) -> Figure:
    precision, recall, _ = precision_recall_curve(y_true, y_score)
    fig = Figure(figsize=_SIZE)
    ax = fig.subplots()
    ax.step(recall, precision, where="post", label=f"model (AP {ap:.3f})")
    ax.axhline(y_true.mean(), linestyle="--", color="grey", label="random")
    ax.set(xlabel="recall", ylabel="precision", title="Precision-recall curve", ylim=(0, 1.02))
    ax.legend(loc="upper right")
    return fig


def confusion_matrix_figure(counts: dict[str, int], threshold: float) -> Figure:
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    fig = Figure(figsize=_SIZE)
    ax = fig.subplots()
    shade = np.log10(matrix + 1)
    ax.imshow(shade, cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        dark = shade[row, col] > (shade.min() + shade.max()) / 2  # imshow spans min..max
        ax.text(
            col,
            row,
            f"{value:,}",
            ha="center",
            va="center",
            fontsize=12,
            color="white" if dark else "black",
        )
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=["legit", "fraud"],
        yticklabels=["legit", "fraud"],
        xlabel="predicted",
        ylabel="actual",
        title=f"Confusion matrix at threshold {threshold:.3f}",
    )
    return fig


def feature_importance_figure(importance: pd.Series) -> Figure:
    fig = Figure(figsize=(7, 5))
    ax = fig.subplots()
    ordered = importance.iloc[::-1]
    ax.barh(ordered.index, ordered.to_numpy())
    ax.set(xlabel="share of importance", title="Feature importance")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    return fig


def score_histogram(y_true: np.ndarray, y_score: np.ndarray, *, bins: int) -> pd.DataFrame:
    """Share of each class's transactions per score bin (bins of equal width on [0, 1])."""
    edges = np.linspace(0, 1, bins + 1)
    rows = {"score": np.round((edges[:-1] + edges[1:]) / 2, 6)}
    for label, name in ((0, "legit"), (1, "fraud")):
        counts, _ = np.histogram(y_score[y_true == label], bins=edges)
        rows[name] = counts / max(counts.sum(), 1)
    return pd.DataFrame(rows)


def score_distribution_figure(histogram: pd.DataFrame) -> Figure:
    fig = Figure(figsize=_SIZE)
    ax = fig.subplots()
    width = histogram["score"].iloc[1] - histogram["score"].iloc[0]
    for name in ("legit", "fraud"):
        ax.bar(histogram["score"], histogram[name], width=width, alpha=0.6, label=name)
    ax.set(
        xlabel="fraud score",
        ylabel="share of class",
        yscale="log",
        title="Score distribution by class",
    )
    ax.legend()
    return fig


def save_png(fig: Figure, path: str | Path | BinaryIO) -> None:
    """Write ``fig`` (callers write inside an atomic directory, so no temp file here)."""
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})


# The placeholders dvc-render fills in; "{scripts}" is left out on purpose, since it would bring
# back the script tags that load Vega from a CDN.
_OFFLINE_PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>fraudlab plots</title>
    <script type="text/javascript">
JAVASCRIPT
    </script>
    <style>
        body { font-family: sans-serif; }
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def offline_html_template(javascript: str) -> str:
    """An HTML template for ``dvc plots show/diff --html-template`` that carries the Vega,
    Vega-Lite and Vega-Embed libraries inline (``javascript`` defines ``vegaEmbed``)."""
    return _OFFLINE_PAGE.replace("JAVASCRIPT", javascript)
