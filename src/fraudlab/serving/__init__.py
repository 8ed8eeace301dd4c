"""The scoring service: history store, scorer, tree prediction, HTTP app, metrics, launcher."""
