"""``cmedl report``: the papers' tables and figures for a user's own study as one self-contained HTML page
(:mod:`.build`; sources in :mod:`.sources`, one module per section)."""

from cmedl.report.build import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]
