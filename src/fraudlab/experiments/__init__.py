"""Comparing models: queued hyperparameter searches, the pull-request report, challenger vs
committed model."""
