"""Figures and one HTML page from a store's walk statistics (``python -m jobs.report``)."""

from embwalk.report.build import ReportOptions, build_report

__all__ = ["ReportOptions", "build_report"]
