"""Figures and an HTML page from a store's statistics: ``python -m jobs.report store=PATH [report.out=DIR]``;
``report.stats=NAME`` reads STORE/NAME instead of STORE/stats, ``report.compare=NAME`` draws a second
statistics directory of the store beside it (e.g. one computed with ``stats.exclude_positions=[0]
stats.out=stats-nopos0``), ``report.compare_store=PATH`` another store's statistics (the same corpus through
another model, e.g. an attention-free one)."""

from __future__ import annotations

from dataclasses import dataclass, field

from embwalk.config import from_dict
from embwalk.jobs._entry import require_store, run_job, store_shorthand
from embwalk.report.options import ReportOptions


def report(config: dict) -> int:
    from embwalk.report.build import build_report  # matplotlib

    path = require_store(config)
    page = build_report(path, from_dict(ReportOptions, config.get("report"), "report"))
    print(f"report: {page.resolve()}")
    print(f"figures: {', '.join(sorted(p.name for p in page.parent.glob('*.png')))}")
    return 0


@dataclass
class ReportJob:
    store: str | None = None  # the store (a directory): store=PATH
    report: ReportOptions = field(default_factory=ReportOptions)


SCHEMA = ReportJob


def main(argv: list[str] | None = None) -> None:
    run_job("report", SCHEMA, report, store_shorthand(argv, "store"))


if __name__ == "__main__":
    main()
