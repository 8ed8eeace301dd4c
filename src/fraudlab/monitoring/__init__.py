"""Drift and performance after training: statistics, the weekly report, the page a person reads."""
