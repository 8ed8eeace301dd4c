"""The reference profile file written with the model, read back only once it is proven to be
the one ``dvc.lock`` records beside the model being used."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from fraudlab.integrity.lock import IntegrityError, recorded, verify_file
from fraudlab.monitoring.drift import ReferenceProfile


def read_reference_profile(
    path: str | Path, *, lock_path: str | Path, model_path: str | Path, features: Sequence[str]
) -> ReferenceProfile:
    """The reference profile written with the model: checked against dvc.lock (the bytes hashed
    are the bytes parsed), recorded by the model's stage, of the model's features."""
    try:
        content = Path(path).read_bytes()
    except FileNotFoundError:
        content = None  # verify_file names the stage to rerun
    entry = verify_file(path, lock_path=lock_path, content=content)
    model_stage = recorded(model_path, lock_path=lock_path).stage
    if entry.stage != model_stage:
        raise IntegrityError(
            f"{path} is recorded by stage {entry.stage}, not by {model_stage} with the model: "
            "it does not describe the model being served"
        )
    try:
        reference = ReferenceProfile.from_dict(json.loads(content))
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(
            f"{path}: not a reference profile ({exc}); rerun `dvc repro`"
        ) from None
    if sorted(reference.features) != sorted(features):
        raise IntegrityError(
            f"{path} profiles {list(reference.features)}, not the model's features "
            f"{list(features)}; rerun `dvc repro {model_stage}`"
        )
    return reference
