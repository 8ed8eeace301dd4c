"""Stage scripts called by dvc.yaml: thin command lines over the library's pure functions."""
