"""Transactions in: the built-in simulator, ingest of any layout by params, the data contract."""
