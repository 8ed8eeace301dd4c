"""The features of a whole frame at once: what the featurize stage computes in one process."""

from __future__ import annotations

import pandas as pd

from fraudlab.core import schema
from fraudlab.core.params import FeaturesParams
from fraudlab.features.kernels import calendar_features, customer_features, terminal_features


def build_features(frame: pd.DataFrame, params: FeaturesParams) -> pd.DataFrame:
    """Return ``frame`` sorted by (tx_datetime, transaction_id) with the feature columns added.

    ``tx_fraud`` may be absent or missing for some rows (labels not yet known): those count as
    legitimate in terminal windows.
    """
    frame = frame.sort_values(schema.SORT_KEYS, kind="stable").reset_index(drop=True)
    return frame.assign(
        **calendar_features(frame, params),
        **customer_features(frame, params),
        **terminal_features(frame, params),
    )
