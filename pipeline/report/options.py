"""The report's options (``embwalk report --help``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReportOptions:
    """The ``report`` section of conf/report.yaml."""

    out: str | None = None  # directory; default STORE/report
    doc: int | None = None  # document of the trajectory and similarity map; default: the first of >= 12 tokens
    max_tokens: int = 48  # tokens of that document shown
    walks: int = 4  # token walks drawn in the trajectory
    labels: bool = True  # label the trajectory with nearest vocabulary tokens (loads the model)
    max_offset: int = 256  # position kernels: offsets shown
