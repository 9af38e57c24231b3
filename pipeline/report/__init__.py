"""``pipeline report``: the latest results of every stage as one self-contained HTML file.

:mod:`~pipeline.report.page` reads the dataset view and the run folders (never a model, never
the backbone's weights) and writes the page, every figure inlined.
"""

from .page import SECTIONS, ReportResult, smooth, write_report

__all__ = ["SECTIONS", "ReportResult", "smooth", "write_report"]
