"""Trust in what DVC tracked: hashes checked against dvc.lock before use, the cache re-hashed,
a fresh clone proven to reproduce the committed results."""
