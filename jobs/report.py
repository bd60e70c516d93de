"""Figures and an HTML page from a store's statistics: ``python -m jobs.report store=PATH [report.out=DIR]``."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from jobs._entry import require_store, run_job, store_argument
from jobs.stats import options
from pipeline.report import ReportOptions, build_report


def report(config: dict) -> int:
    path = require_store(config)
    page = build_report(path, options(config.get("report"), ReportOptions))
    print(f"report: {page.resolve()}")
    print(f"figures: {', '.join(sorted(p.name for p in page.parent.glob('*.png')))}")
    return 0


@hydra.main(config_path="../conf", config_name="report", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_job(report, cfg)


if __name__ == "__main__":
    sys.argv = store_argument(sys.argv)
    main()
