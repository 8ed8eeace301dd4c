"""The model artifact: what the model file holds, and the one function that loads it.

The saved ``ModelArtifact`` holds the fitted Pipeline with the feature list, the train and feature
params it was trained with and the library versions that produced it; ``load_model`` (hash
checked against dvc.lock first) is what evaluation, monitoring and the scoring service use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from sklearn.pipeline import Pipeline

from fraudlab.core.errors import UserError
from fraudlab.core.params import FeaturesParams, TrainParams
from fraudlab.features.names import feature_names
from fraudlab.integrity.lock import load_verified_pickle

# Libraries whose objects are inside the pickle (fraudlab's own code is versioned by dvc.lock),
# named by module: a version read from the imported module compares cleanly whichever install
# provides it (`xgboost` or `xgboost-cpu`, the same library).
_VERSIONED_LIBRARIES = ("sklearn", "xgboost", "numpy", "pandas", "joblib")


def library_versions() -> dict[str, str]:
    # The Python version is left out on purpose: it would make the artifact's hash differ
    # between Python 3.11 and 3.12 installs of the same pinned libraries.
    return {name: importlib.import_module(name).__version__ for name in _VERSIONED_LIBRARIES}


@dataclass(frozen=True)
class ModelArtifact:
    """What the model file holds: the fitted Pipeline and everything a loader needs to score
    exactly as training did, without reading today's params.yaml (which may have changed)."""

    pipeline: Pipeline
    features: tuple[str, ...]  # model input columns, in order
    family: str  # train.model
    train_params: dict  # params.yaml's train section as trained
    feature_params: dict  # params.yaml's features section the features were computed with
    versions: dict[str, str]  # libraries whose objects are pickled inside

    @property
    def features_config(self) -> FeaturesParams:
        """The feature params the model was trained with (windows, label delay, night hour)."""
        return FeaturesParams.model_validate(self.feature_params)


def model_artifact(
    pipeline: Pipeline, *, params: TrainParams, features: FeaturesParams
) -> ModelArtifact:
    return ModelArtifact(
        pipeline=pipeline,
        features=tuple(feature_names(features)),
        family=params.model,
        train_params=params.model_dump(mode="json"),
        feature_params=features.model_dump(mode="json"),
        versions=library_versions(),
    )


class ModelVersionError(UserError):
    """The model file is not a model artifact, or was written by other library versions."""


def check_artifact(artifact: object, *, source: str = "model file") -> ModelArtifact:
    """Refuse anything but a model artifact, and a model pickled by other library versions:
    unpickling across versions can give silently different predictions."""
    if not isinstance(artifact, ModelArtifact):
        raise ModelVersionError(
            f"{source} is not a fraudlab model artifact (a {type(artifact).__name__}, not a "
            "ModelArtifact): rerun the train stage"
        )
    installed = library_versions()
    mismatched = {
        name: (saved, installed.get(name))
        for name, saved in artifact.versions.items()
        if saved != installed.get(name)
    }
    if mismatched:
        raise ModelVersionError(
            f"{source} was saved with other library versions (saved, installed): "
            f"{mismatched}; install requirements.lock or rerun the train stage"
        )
    return artifact


def load_model(path: str | Path, *, lock_path: str | Path) -> ModelArtifact:
    """The one way to load a model file: its hash is checked against dvc.lock before anything is
    unpickled, then its type and library versions."""
    return check_artifact(load_verified_pickle(path, lock_path=lock_path), source=str(path))
