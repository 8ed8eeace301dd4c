"""Feature names: the model's input columns in their fixed order, by group, and how far back
in time the configured features look.

Every path that computes features (the batch stage, the online scorer, the Dask engine) and every
reader of a model's inputs takes its column names from here.
"""

from __future__ import annotations

import pandas as pd

from fraudlab.core import schema
from fraudlab.core.params import FeaturesParams


def customer_feature_names(windows_days: list[int]) -> list[str]:
    return [
        name
        for n in windows_days
        for name in (f"customer_id_nb_tx_{n}day_window", f"customer_id_avg_amount_{n}day_window")
    ]


def terminal_feature_names(windows_days: list[int]) -> list[str]:
    return [
        name
        for n in windows_days
        for name in (f"terminal_id_nb_tx_{n}day_window", f"terminal_id_risk_{n}day_window")
    ]


# The groups beyond the handbook's 15 features, in the order their columns come
GROUPS = ("amount_ratios", "last_payments", "anomaly_counts", "known_labels")
KNOWN_LABEL_FEATURES = [
    "terminal_id_last_known_fraud",
    "terminal_id_known_fraud_run_length",
    "terminal_id_known_fraud_run_age_days",
    "terminal_id_days_since_known_fraud",
]


def group_feature_names(params: FeaturesParams) -> dict[str, list[str]]:
    """Every group's feature columns (whether ``params.groups`` selects it or not)."""
    last = params.last_payments
    return {
        "amount_ratios": [
            name
            for n in params.amount_windows_days
            for name in (
                f"customer_id_amount_over_mean_{n}day_window",
                f"customer_id_amount_over_max_{n}day_window",
            )
        ],
        "last_payments": [
            f"customer_id_amount_over_median_last_{last}",
            f"customer_id_amount_zscore_last_{last}",
        ],
        "anomaly_counts": [
            f"customer_id_nb_anomalies_{n}day_window" for n in params.anomaly_windows_days
        ],
        "known_labels": list(KNOWN_LABEL_FEATURES),
    }


def feature_names(params: FeaturesParams) -> list[str]:
    """Model input columns, in a fixed order: the handbook's 15, then the selected groups."""
    by_group = group_feature_names(params)
    return [
        schema.TX_AMOUNT,
        "tx_during_weekend",
        "tx_during_night",
        *customer_feature_names(params.customer_windows_days),
        *terminal_feature_names(params.terminal_windows_days),
        *(name for group in GROUPS if group in params.groups for name in by_group[group]),
    ]


def history_needed(params: FeaturesParams) -> tuple[pd.Timedelta, pd.Timedelta]:
    """How far back the online scorer must look: (customer history, terminal history). The
    anomaly counts read earlier rows' medians, each looking back the longest amount window;
    the known labels look back no further than the terminal windows."""
    day = pd.Timedelta(days=1)
    customer = max(params.customer_windows_days)
    if {"amount_ratios", "last_payments"} & set(params.groups):
        customer = max(customer, max(params.amount_windows_days))
    if "anomaly_counts" in params.groups:
        customer = max(customer, max(params.amount_windows_days) + max(params.anomaly_windows_days))
    return (
        customer * day,
        (params.label_delay_days + max(params.terminal_windows_days)) * day,
    )
