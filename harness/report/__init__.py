"""The HTML report of a fuzz run: one self-contained file, readable offline.

:func:`render_report` reads a results directory (docs/results-format.md, read by
:mod:`harness.results`) and writes a single HTML file with inline CSS and inline SVG pictures.  It
references nothing outside itself: no scripts, stylesheets, fonts or images are loaded, and a
Content-Security-Policy meta tag forbids the browser from fetching any.

The package: :mod:`~harness.report.view` shapes the parsed results into the template's values,
:mod:`~harness.report.svg` draws the pictures, :mod:`~harness.report.render` fills the template.
"""

from harness.report.render import render_report

__all__ = ["render_report"]
