"""The monitoring report a person reads: one self-contained HTML page, figures inline.

It says first what happened (stable, data drift, model decay, or both, and from which week),
then shows why: which features moved and by how much, whether the score distribution moved with
them, and whether the matured performance followed. Everything comes from the report dict of
``monitoring.weekly.monitoring_report``; nothing is recomputed here. Every name shown (features
come from params, so from the user) is HTML-escaped.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure

from fraudlab.modeling.metrics import card_precision_key
from fraudlab.modeling.plots import save_png
from fraudlab.monitoring.weekly import SCORE_NAME, measured_weeks, verdict

LEVEL_COLOURS = {"ok": "#e8f5e9", "warn": "#fff3cd", "act": "#f8d7da"}


def _statistics(report: dict) -> tuple[list[str], list[str], np.ndarray]:
    weeks = measured_weeks(report)
    names = list(weeks[0][1]["drift"]) if weeks else []
    values = np.array(
        [[entry["drift"][name][report["statistic"]] for _, entry in weeks] for name in names]
    )
    return names, [label for label, _ in weeks], values.reshape(len(names), len(weeks))


def drift_heatmap(report: dict) -> Figure:
    """Features and score (rows) by week (columns), coloured by level, the statistic written."""
    names, weeks, values = _statistics(report)
    # wide enough for the longest name (about 0.06 in a character at 7 pt) and the title,
    # whatever the number of weeks: with one week the labels were clipped
    label_width = 0.06 * max(map(len, names), default=0)
    width = max(5.5, label_width + 0.9 * max(len(weeks), 1) + 0.6)
    fig = Figure(figsize=(width, 1.4 + 0.32 * len(names)))
    ax = fig.subplots()
    colours = ListedColormap([LEVEL_COLOURS[level] for level in ("ok", "warn", "act")])
    norm = BoundaryNorm([0.0, report["warn"], report["act"], np.inf], colours.N)
    ax.imshow(values, cmap=colours, norm=norm, aspect="auto")
    for (row, col), value in np.ndenumerate(values):
        ax.text(col, row, f"{value:.3f}", ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(weeks)), [w.replace("week_", "w") for w in weeks])
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_title(
        f"{report['statistic'].upper()} against the reference (warn {report['warn']}, "
        f"act {report['act']})",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def performance_figure(report: dict) -> Figure:
    """AP and CP@k of the matured weeks, against the baseline AP and the decay level."""
    key = card_precision_key(report["top_k"])
    weeks = measured_weeks(report)
    fig = Figure(figsize=(6.5, 3.6))
    ax = fig.subplots()
    x = np.arange(1, len(weeks) + 1)
    mature = [
        (i, e["performance"])
        for i, (_, e) in zip(x, weeks, strict=True)
        if e["performance"]["status"] == "mature"
    ]
    if mature:
        at = [i for i, _ in mature]
        ax.plot(at, [p["average_precision"] for _, p in mature], "o-", label="AP")
        ax.plot(at, [p[key] for _, p in mature], "s--", label=f"CP@{report['top_k']}")
    baseline = report["baseline"].get("average_precision")
    if baseline is not None:
        ax.axhline(baseline, color="grey", linestyle=":", label="baseline AP (test period)")
        ax.axhline(
            baseline - report["decay"],
            color="red",
            linestyle="--",
            label=f"decay level (AP {report['decay']} below baseline)",
        )
    for i, (_, entry) in zip(x, weeks, strict=True):
        if entry["performance"]["status"] == "pending":
            ax.axvspan(i - 0.4, i + 0.4, color="#eeeeee")
            ax.text(i, 0.5, "labels\npending", ha="center", va="center", fontsize=7)
    ax.set(
        xticks=x, xticklabels=[label for label, _ in weeks], ylim=(0, 1), xlim=(0.5, len(x) + 0.5)
    )
    ax.set_title("Performance once labels matured", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def score_figure(report: dict, reference_shares: list[float]) -> Figure:
    """The share of scores in each reference decile bin: the reference's and each week's."""
    fig = Figure(figsize=(6.5, 3.4))
    ax = fig.subplots()
    weeks = measured_weeks(report)
    deciles = np.arange(1, len(reference_shares))
    ax.bar(deciles, reference_shares[:-1], color="#cccccc", label="reference (training)")
    # The last bin holds scores above the reference's highest: empty in the reference by
    # construction. A week's share there is a marker of its own, drawn only when not zero,
    # never joined to the deciles by a line (which read as a phantom eleventh bin).
    above = len(reference_shares)
    for label, entry in weeks:
        (line,) = ax.plot(deciles, entry["score_shares"][:-1], marker=".", label=label)
        if entry["score_shares"][-1]:
            ax.plot([above], entry["score_shares"][-1:], marker="o", color=line.get_color())
    labels = [str(d) for d in deciles]
    if any(entry["score_shares"][-1] for _, entry in weeks):
        ax.set_xticks([*deciles, above], [*labels, "above\nmax"])
    else:
        ax.set_xticks(deciles, labels)
    ax.set(xlabel="reference score bin (low to high)", ylabel="share of transactions")
    ax.set_title("Score distribution on the reference's bins", fontsize=9)
    ax.legend(fontsize=7, loc="lower center", ncol=4)
    fig.tight_layout()
    return fig


def png_data_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    save_png(fig, buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _cell(entry: dict, name: str, statistic: str) -> str:
    found = entry["drift"][name]
    return f'<td style="background:{LEVEL_COLOURS[found["level"]]}">{found[statistic]:.3f}</td>'


def _performance_text(performance: dict, key: str, labels: dict | None) -> str:
    if performance["status"] == "pending":
        return f"pending (labels mature on {performance['labels_mature_on']})"
    share = ""
    if labels:
        shifted = " (label shift)" if labels["shifted"] else ""
        share = f" · frauds {labels['fraud_share']:.2%}{shifted}"
    if performance["status"] != "mature":
        return f"not measurable ({performance['status']}){share}"
    return (
        f"AP {performance['average_precision']:.3f} · AUC {performance['auc_roc']:.3f} · "
        f"CP {performance[key]:.3f}{share}"
    )


def _week_rows(report: dict) -> str:
    key = card_precision_key(report["top_k"])
    rows = []
    for label, entry in report["weeks"].items():
        if not entry["transactions"]:
            rows.append(
                f"<tr><td>{label}</td><td>{entry['start']}</td><td>0</td>"
                "<td colspan=4>no transactions</td></tr>"
            )
            continue
        diagnosis = entry["diagnosis"]
        moved = ", ".join(html.escape(n) for n in diagnosis["inputs_moved"]) or "none"
        rows.append(
            f"<tr><td>{label}</td><td>{entry['start']} to {entry['end']}</td>"
            f"<td>{entry['transactions']:,}</td><td>{moved}</td>"
            f"{_cell(entry, SCORE_NAME, report['statistic'])}"
            f"<td>{html.escape(_performance_text(entry['performance'], key, entry['labels']))}</td>"
            f"<td><b>{html.escape(diagnosis['kind'])}</b></td></tr>"
        )
    return "\n".join(rows)


def _moved_rows(report: dict) -> str:
    """Per feature past warn in some week: every week's PSI, KS, Wasserstein and mean."""
    weeks = measured_weeks(report)
    names = {n for _, e in weeks for n, f in e["drift"].items() if f["level"] != "ok"}
    rows = []
    for name in [n for n in (weeks[0][1]["drift"] if weeks else {}) if n in names]:
        cells = "".join(
            f'<td style="background:{LEVEL_COLOURS[e["drift"][name]["level"]]}">'
            f"PSI {e['drift'][name]['psi']:.3f}<br>KS {e['drift'][name]['ks']:.3f}<br>"
            f"W {e['drift'][name]['wasserstein']:.3f}<br>mean {e['drift'][name]['mean']:.4g}</td>"
            for _, e in weeks
        )
        rows.append(f"<tr><th>{html.escape(name)}</th>{cells}</tr>")
    return "\n".join(rows)


_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fraudlab monitoring: {kind}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 1.5em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }}
td, th {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }}
.verdict {{ padding: 0.8em 1em; border-radius: 6px; background: {colour}; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>Model monitoring</h1>
<div class="verdict"><h2 id="verdict">{headline}</h2><p>{advice}</p></div>
<p>{facts}</p>
<h2>Weeks</h2>
<table><tr><th>week</th><th>days</th><th>transactions</th><th>inputs past act</th>
<th>score {statistic}</th><th>matured performance</th><th>diagnosis</th></tr>
{week_rows}
</table>
<h2>What moved</h2>
{heatmap}
<table><tr><th>feature</th>{week_headers}</tr>
{moved_rows}
</table>
<h2>Did the score and the performance move with it?</h2>
{score}
{performance}
</body></html>
"""


def _headline(report: dict, summary: dict) -> str:
    shifted = ", ".join(summary["label_shift_weeks"])
    if summary["kind"] == "stable" and shifted:
        return f"Label shift in {shifted}: the share of frauds moved"
    if summary["performance_unknown"]:
        return "No drift past the act level; performance unknown until labels mature"
    headline = summary["kind"].capitalize()
    if summary["first_week"]:
        start = report["weeks"][summary["first_week"]]["start"]
        headline += f" from {summary['first_week']} ({start})"
    if report["drifted_features"]:
        headline += ": " + ", ".join(report["drifted_features"]) + " moved"
    if shifted:
        headline += f"; label shift in {shifted}"
    return headline


def _facts(report: dict, summary: dict, model_md5: str) -> str:
    weeks = measured_weeks(report)
    span = f" from {weeks[0][1]['start']} to {weeks[-1][1]['end']}" if weeks else ""
    decay = f"decay when AP is {report['decay']} below the baseline"
    if report["baseline"]:
        decay += (
            f" (the baseline: AP {report['baseline']['average_precision']:.3f} on every "
            "transaction of the test period, scored as the monitored weeks are; the evaluation's "
            "test AP differs as it leaves out cards already known to be compromised)"
        )
    parts = [
        f"{len(weeks)} whole weeks monitored{span}",
        f"model MD5 {model_md5}",
        f"levels on {report['statistic']}: warn {report['warn']}, act {report['act']}",
        decay,
    ]
    if summary["pending_weeks"]:
        parts.append(f"labels pending for {', '.join(summary['pending_weeks'])}")
    return "; ".join(parts) + "."


def _figures(report: dict, reference_shares: list[float]) -> dict[str, str]:
    """The three figures as inline images; empty when no week was measured."""
    if not measured_weeks(report):
        return {"heatmap": "", "score": "", "performance": ""}
    figures = {
        "heatmap": drift_heatmap(report),
        "score": score_figure(report, reference_shares),
        "performance": performance_figure(report),
    }
    return {
        name: f'<img alt="{name} per week" src="{png_data_uri(fig)}">'
        for name, fig in figures.items()
    }


def _colour(summary: dict) -> str:
    """Green when nothing moved; amber for drift the model absorbs or frauds that shifted
    alone; red once performance fell."""
    if summary["kind"] == "stable":
        return LEVEL_COLOURS["warn" if summary["label_shift_weeks"] else "ok"]
    return LEVEL_COLOURS["warn" if summary["kind"] == "data drift" else "act"]


def render_html(report: dict, *, reference_shares: list[float], model_md5: str) -> str:
    """The page (``reference_shares``: the reference profile's score bin shares)."""
    summary = verdict(report)
    return _PAGE.format(
        kind=html.escape(summary["kind"]),
        colour=_colour(summary),
        headline=html.escape(_headline(report, summary)),
        advice=html.escape(summary["advice"]),
        facts=html.escape(_facts(report, summary, model_md5)),
        statistic=html.escape(report["statistic"]),
        week_rows=_week_rows(report),
        week_headers="".join(f"<th>{label}</th>" for label, _ in measured_weeks(report)),
        moved_rows=_moved_rows(report) or "<tr><td>none past warn</td></tr>",
        **_figures(report, reference_shares),
    )
