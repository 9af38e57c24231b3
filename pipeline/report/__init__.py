"""``pipeline report``: the latest results of every stage as one self-contained HTML file.

:mod:`~pipeline.report.page` reads the dataset view, the run folders and the features the best
head reads (never a model, never the backbone's weights) and renders ``report.html.j2`` (a
Jinja2 template, autoescaped); :mod:`~pipeline.report.figures` draws the figures and the
thumbnails it inlines.
"""

from .figures import smooth
from .page import SECTIONS, ReportResult, write_report

__all__ = ["SECTIONS", "ReportResult", "smooth", "write_report"]
