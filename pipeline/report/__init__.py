"""Figures and one HTML page from a store's walk statistics (``embwalk report``)."""

from __future__ import annotations

from embwalk.lazy import lazy_attributes

_WHERE = {"ReportOptions": "embwalk.report.options", "build_report": "embwalk.report.build"}  # matplotlib: on use
__all__ = sorted(_WHERE)
__getattr__, __dir__ = lazy_attributes(__name__, _WHERE)
