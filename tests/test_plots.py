"""Plot helpers: score histogram and the offline page template."""

from __future__ import annotations

import numpy as np
import pytest

from fraudlab.modeling.plots import offline_html_template, score_histogram


def test_score_histogram_gives_each_class_shares_summing_to_one():
    y_true = np.array([0, 0, 0, 1, 1])
    y_score = np.array([0.01, 0.02, 0.6, 0.55, 0.99])
    histogram = score_histogram(y_true, y_score, bins=4)
    assert histogram["score"].tolist() == [0.125, 0.375, 0.625, 0.875]
    assert histogram["legit"].tolist() == pytest.approx([2 / 3, 0, 1 / 3, 0])
    assert histogram["fraud"].tolist() == pytest.approx([0, 0, 0.5, 0.5])


def test_offline_template_inlines_the_libraries_and_loads_nothing_from_outside():
    page = offline_html_template("window.vegaEmbed = function () {};")
    assert "{plot_divs}" in page
    assert "{scripts}" not in page  # dvc-render would put its CDN script tags there
    assert "window.vegaEmbed" in page
    assert "<script src" not in page
