"""Figures and an HTML page from a store's statistics: ``python -m jobs.report store=PATH [report.out=DIR]``."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from jobs._entry import require_store, run_job, store_argument
from pipeline.config import from_dict
from pipeline.report import ReportOptions, build_report


def report(config: dict) -> int:
    path = require_store(config)
    page = build_report(path, from_dict(ReportOptions, config.get("report"), "report"))
    print(f"report: {page.resolve()}")
    print(f"figures: {', '.join(sorted(p.name for p in page.parent.glob('*.png')))}")
    return 0


@dataclass
class ReportJob:
    store_path: str | None = None  # the store: give it as store=PATH
    report: ReportOptions = field(default_factory=ReportOptions)


def main() -> None:
    run_job("report", ReportJob, report, store_argument(sys.argv[1:]))


if __name__ == "__main__":
    main()
