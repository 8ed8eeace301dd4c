"""Stage ``plots_template``: the page template that makes ``dvc plots show`` work offline.

DVC's default page loads Vega from a CDN and stays blank without network; this one carries the
libraries inline (bundled by vl-convert-python, which ships them). ``.dvc/config`` points
``plots.html_template`` at the output.
"""

from __future__ import annotations

import logging

import vl_convert

from fraudlab.core.io import atomic_path
from fraudlab.core.runner import run, stage_parser
from fraudlab.modeling.plots import offline_html_template

log = logging.getLogger(__name__)
SECTIONS = ()


def plots_template(argv: list[str] | None = None) -> None:
    parser = stage_parser(__doc__)
    parser.add_argument("--out", required=True, help="HTML template for dvc plots show/diff")
    args = parser.parse_args(argv)
    html = offline_html_template(vl_convert.javascript_bundle())
    with atomic_path(args.out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    log.info(
        "wrote %s (Vega %s, Vega-Embed %s inline, %d bytes)",
        args.out,
        vl_convert.get_vega_version(),
        vl_convert.get_vega_embed_version(),
        len(html),
    )


if __name__ == "__main__":
    run(plots_template)
