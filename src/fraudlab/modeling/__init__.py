"""The model: time-aware split and folds, the Pipeline, its saved artifact, metrics, plots."""
