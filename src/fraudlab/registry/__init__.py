"""The model registry: versions and stages of the served model as Git tags (GTO's convention),
each version's files checked against its commit's dvc.lock before they are served."""
