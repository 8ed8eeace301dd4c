"""Challenger against the committed model, on the weeks neither has seen (docs/monitoring.md).

    dvc exp run -n challenger -S split.train_start=2018-09-03   # the workspace: the challenger
    fraudlab compare --baseline HEAD --out reports/challenge.md

The challenger is the model in the workspace (``models/model.joblib``, checked against the
workspace's ``dvc.lock``); the current model is the one committed at ``--baseline`` (its bytes
from DVC's cache or remote, checked against that commit's ``dvc.lock`` before they are
unpickled). Both score the same rows: every transaction of each whole week from the challenger's
test period on, as the monitor stage counts them (no removal of known-compromised cards), so the
weeks are after both training windows. A week is compared once its labels have matured; later
weeks are listed as pending. Each model gets the features it was trained with: when the
challenger changed the feature params, the current model's are recomputed from the clean data.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fraudlab.core import schema
from fraudlab.core.errors import UserError
from fraudlab.core.io import read_parquet
from fraudlab.core.params import EvaluateParams, FeaturesParams, SplitParams, load_params
from fraudlab.experiments.tables import markdown_table
from fraudlab.features.batch import build_features
from fraudlab.integrity.committed import (
    committed_lock,
    committed_output,
    locked_entry,
    resolve_commit,
)
from fraudlab.integrity.lock import recorded, unpickle_checked
from fraudlab.modeling.artifact import ModelArtifact, check_artifact, load_model
from fraudlab.modeling.metrics import SCORE, card_precision_key, ranking_metrics
from fraudlab.modeling.pipeline import predict_scores
from fraudlab.modeling.split import test_start
from fraudlab.monitoring.weekly import Week, data_end, monitored_weeks, week_performance

log = logging.getLogger(__name__)

MODEL = "models/model.joblib"


# --- I/O: the committed model ---------------------------------------------------------------


def resolve_revision(revision: str) -> str:
    """The commit a user-given revision names (a branch, tag, HEAD~1, a hash), or a UserError."""
    return resolve_commit(revision, what="--baseline")


def committed_model(commit: str) -> tuple[ModelArtifact, str]:
    """The model recorded in ``commit``'s dvc.lock and its MD5; its bytes are hashed before they
    are unpickled."""
    entry = locked_entry(committed_lock(commit), MODEL, commit=commit)
    content = committed_output(commit, entry)
    source = f"{MODEL} at {commit[:7]}"
    artifact = unpickle_checked(content, entry, source=source, origin=f"dvc.lock at {commit[:7]}")
    return check_artifact(artifact, source=source), entry.md5


# --- pure: the comparison ---------------------------------------------------------------------


@dataclass(frozen=True)
class Contender:
    name: str
    md5: str
    scores: np.ndarray  # over the compared rows


def comparison(
    rows: pd.DataFrame,
    contenders: list[Contender],
    *,
    weeks: list[Week],
    end: pd.Timestamp,
    delay_days: int,
    k: int,
) -> dict:
    """Per week and over all matured weeks together: each contender's AP, AUC ROC and CP@k."""
    times = rows[schema.TX_DATETIME]
    report_weeks, matured = {}, np.zeros(len(rows), dtype=bool)
    for week in weeks:
        inside = ((times >= week.start) & (times < week.end)).to_numpy()
        entry = {"start": str(week.start.date()), "transactions": int(inside.sum())}
        for contender in contenders:
            entry[contender.name] = week_performance(
                rows.loc[inside],
                contender.scores[inside],
                week=week,
                end=end,
                delay_days=delay_days,
                k=k,
            )
        if all(entry[c.name]["status"] == "mature" for c in contenders):
            matured |= inside
        report_weeks[week.label] = entry
    pooled = {}
    if matured.any() and rows.loc[matured, schema.TX_FRAUD].nunique() == 2:
        for contender in contenders:
            scored = rows.loc[matured].assign(**{SCORE: contender.scores[matured]})
            pooled[contender.name] = ranking_metrics(scored, k)
    return {
        "models": {c.name: c.md5 for c in contenders},
        "top_k": k,
        "weeks": report_weeks,
        "matured": pooled,
    }


def verdict(report: dict) -> str:
    pooled = report["matured"]
    if len(pooled) < 2:
        return "No matured week to compare yet: wait for the labels, or move the window back."
    (first, a), (second, b) = pooled.items()
    better = first if a["average_precision"] > b["average_precision"] else second
    return (
        f"Over the matured weeks the {better} ranks better: AP {a['average_precision']:.4f} "
        f"({first}) against {b['average_precision']:.4f} ({second})."
    )


def markdown(report: dict) -> str:
    names = list(report["models"])
    key = card_precision_key(report["top_k"])
    measures = {"AP": "average_precision", "AUC": "auc_roc", f"CP@{report['top_k']}": key}
    rows = []
    for label, entry in report["weeks"].items():
        row = {"week": label, "from": entry["start"], "transactions": f"{entry['transactions']:,}"}
        for name in names:
            found = entry[name]
            mature = found["status"] == "mature"
            for i, (short, measure) in enumerate(measures.items()):
                pending = found.get("labels_mature_on", found["status"]) if i == 0 else ""
                row[f"{name} {short}"] = f"{found[measure]:.4f}" if mature else pending
        rows.append(row)
    if report["matured"]:
        row = {"week": "**all matured**", "from": "", "transactions": ""}
        for name, found in report["matured"].items():
            row |= {f"{name} {short}": f"{found[m]:.4f}" for short, m in measures.items()}
        rows.append(row)
    models = "\n".join(f"- **{name}**: model MD5 `{md5}`" for name, md5 in report["models"].items())
    return (
        f"# Challenger against the committed model\n\n{models}\n\n**{verdict(report)}**\n\n"
        f"{markdown_table(rows)}\n"
    )


# --- the command ------------------------------------------------------------------------------


def _features_for(
    model: ModelArtifact, frame: pd.DataFrame, *, frame_params: dict, clean: str
) -> pd.DataFrame:
    """``frame`` (computed with ``frame_params``) when the model was trained on those features;
    else its own, recomputed from the clean data."""
    if model.feature_params == frame_params:
        return frame
    log.info("recomputing the features the current model was trained with from %s", clean)
    return build_features(read_parquet(clean), model.features_config)


def compare(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="fraudlab compare", description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="HEAD", help="commit of the current model (HEAD)")
    parser.add_argument("--params", default="params.yaml", help="the challenger's params")
    parser.add_argument("--lock", default="dvc.lock", help="the challenger's hashes")
    parser.add_argument("--features", default="data/features/transactions.parquet")
    parser.add_argument("--clean", default="data/clean/transactions.parquet")
    parser.add_argument("--out", help="write the Markdown report here too")
    parser.add_argument("--json", help="write the report as JSON here")
    args = parser.parse_args(argv)

    commit = resolve_revision(args.baseline)
    loaded = load_params(args.params, "split", "features", "evaluate")
    split: SplitParams = loaded["split"]
    features: FeaturesParams = loaded["features"]
    evaluate: EvaluateParams = loaded["evaluate"]
    challenger = load_model(MODEL, lock_path=args.lock)
    challenger_md5 = recorded(MODEL, lock_path=args.lock).md5
    current, current_md5 = committed_model(commit)

    frame = read_parquet(args.features)
    end = data_end(frame[schema.TX_DATETIME])
    begins = test_start(split, delay_days=features.label_delay_days)  # the challenger's
    weeks = monitored_weeks(start=begins, end=end)
    if not weeks:
        raise UserError(
            f"no whole week from the challenger's test period ({begins}) to the end of the "
            f"data ({end.date()}): move split.train_start back"
        )
    keep = (frame[schema.TX_DATETIME] >= pd.Timestamp(begins)).to_numpy()
    current_frame = _features_for(
        current, frame, frame_params=challenger.feature_params, clean=args.clean
    )
    current_keep = (current_frame[schema.TX_DATETIME] >= pd.Timestamp(begins)).to_numpy()
    rows = frame.loc[keep].reset_index(drop=True)
    current_rows = current_frame.loc[current_keep].reset_index(drop=True)
    if not rows[schema.TRANSACTION_ID].equals(current_rows[schema.TRANSACTION_ID]):
        raise UserError("the two feature tables do not hold the same transactions in order")
    contenders = [
        Contender(
            "current",
            current_md5,
            predict_scores(current.pipeline, current_rows, features=list(current.features)),
        ),
        Contender(
            "challenger",
            challenger_md5,
            predict_scores(challenger.pipeline, rows, features=list(challenger.features)),
        ),
    ]
    report = comparison(
        rows,
        contenders,
        weeks=weeks,
        end=end,
        delay_days=features.label_delay_days,
        k=evaluate.top_k,
    )
    text = markdown(report)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True), encoding="utf-8")
