"""What every layer shares: the canonical schema, typed params, errors, file I/O, the runner."""
