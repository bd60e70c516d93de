"""Figures and one HTML page from a store's walk statistics (``embwalk report``)."""

from __future__ import annotations

from embwalk.lazy import lazy_attributes

_WHERE = {"embwalk.report.options": ["ReportOptions"], "embwalk.report.build": ["build_report"]}  # matplotlib: on use
__all__ = ["ReportOptions", "build_report"]
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
