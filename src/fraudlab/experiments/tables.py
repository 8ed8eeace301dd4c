"""The one Markdown table renderer of the reports (leaderboard, pull-request report, challenger
comparison): cells are formatted by the caller, the layout is the library's."""

from __future__ import annotations

import pandas as pd


def markdown_table(rows: list[dict[str, str]] | pd.DataFrame) -> str:
    """GitHub-flavoured Markdown of ``rows`` (column names from the first row's keys), every
    cell shown exactly as given."""
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    return frame.to_markdown(index=False, tablefmt="github", disable_numparse=True)
