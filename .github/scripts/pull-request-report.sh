#!/usr/bin/env bash
# What the pull-request workflow runs on a checkout of the pull request (and what
# tests/test_pipeline_e2e.py runs on a fresh clone of a tiny repository, so the two cannot drift):
#   1. a fresh clone must reproduce the committed dvc.lock and metrics bit for bit;
#   2. the model report against the base revision (metrics, threshold, params and metrics diffs);
#   3. the plots diff against the base, as an offline HTML page.
# Usage: .github/scripts/pull-request-report.sh BASE_REVISION OUT_DIR
set -euo pipefail
base="$1"
out="$2"
fraudlab check-reproducible --rev HEAD
fraudlab report --out "$out" --base "$base"
dvc repro -q plots_template  # the offline page template the plots render into
dvc plots diff "$base" HEAD -o "$out/plots_diff"
