"""XGBoost's boosting rounds through ``xgboost.dask`` (``train.dask_workers`` = N > 0).

The rows to fit are cut into N equal ranges in their order, one per worker, each range placed
on its own worker (workers sorted by address); xgboost.dask ranks the workers by the ranges they
hold, so the same rows and the same N give the same model, whichever cluster runs it. Another N
gives another model: each worker sketches its own range's histogram bins, and the merged sketch
differs from one process's. ``bench/train_dask.py`` reports by how much.

The preprocessing steps (the scaler) are fitted in the stage's process, and the fitted booster
is loaded into a plain ``XGBClassifier``: the artifact is the same kind of Pipeline as one
process's, scored the same way by evaluate, the service and monitoring, with no cluster.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
from xgboost import XGBClassifier

from fraudlab.core.errors import UserError
from fraudlab.scaleout.engine import EngineConfig, EngineError, open_engine

log = logging.getLogger(__name__)


class ClusterTrainingError(UserError):
    """The cluster or the rows cannot train with ``train.dask_workers``."""


@contextlib.contextmanager
def training_client(dask_workers: int, engine: EngineConfig) -> Iterator[Any | None]:
    """None when ``dask_workers`` is 0; otherwise a client of the Dask engine's scheduler
    (``DASK_SCHEDULER_ADDRESS`` with ``FRAUDLAB_ENGINE=dask``) or of a local cluster of
    ``dask_workers`` workers started for the stage and stopped after it."""
    if not dask_workers:
        yield None
        return
    address = engine.address if engine.kind == "dask" else None
    with open_engine(EngineConfig(kind="dask", address=address, workers=dask_workers)) as dask:
        yield dask.client


def _worker_addresses(client: Any, workers: int) -> list[str]:
    addresses = sorted(client.scheduler_info(n_workers=-1)["workers"])
    if len(addresses) < workers:
        raise EngineError(
            f"train.dask_workers is {workers} but the Dask cluster has {len(addresses)} "
            "worker(s): start more workers or lower train.dask_workers"
        )
    return addresses[:workers]


def fit_on_workers(
    client: Any, estimator: XGBClassifier, inputs: np.ndarray, labels: np.ndarray, *, workers: int
) -> XGBClassifier:
    """``estimator`` (unfitted, for its params) fitted on ``inputs`` through xgboost.dask, the
    rows cut into ``workers`` ranges, one per worker; returned as a plain fitted XGBClassifier."""
    import dask.array as da
    import xgboost.dask as dxgb
    from dask import delayed

    if len(inputs) < workers:
        raise ClusterTrainingError(
            f"{len(inputs)} training rows cannot be cut into train.dask_workers={workers} "
            "ranges: lower train.dask_workers"
        )
    addresses = _worker_addresses(client, workers)
    bounds = np.linspace(0, len(inputs), workers + 1).astype(np.int64)
    blocks_x, blocks_y = [], []
    for address, start, stop in zip(addresses, bounds[:-1], bounds[1:], strict=True):
        rows_x = client.scatter(inputs[start:stop], workers=[address])
        rows_y = client.scatter(labels[start:stop], workers=[address])
        blocks_x.append(
            da.from_delayed(delayed(rows_x), shape=(stop - start, inputs.shape[1]), dtype="f8")
        )
        blocks_y.append(da.from_delayed(delayed(rows_y), shape=(stop - start,), dtype=labels.dtype))
    matrix = dxgb.DaskDMatrix(client, da.concatenate(blocks_x), da.concatenate(blocks_y))
    booster_params = {k: v for k, v in estimator.get_xgb_params().items() if v is not None}
    trained = dxgb.train(
        client, booster_params, matrix, num_boost_round=estimator.get_params()["n_estimators"]
    )
    fitted = XGBClassifier(**estimator.get_params())
    fitted.load_model(bytearray(trained["booster"].save_raw("json")))
    log.info("boosted on %d Dask workers (%s rows each)", workers, np.diff(bounds).tolist())
    return fitted
