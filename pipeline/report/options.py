"""The report's options (``embwalk report --help``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from embwalk.errors import EmbwalkError


@dataclass
class ReportOptions:
    """The ``report`` section of conf/report.yaml."""

    out: str | None = None  # directory; default STORE/report (STORE/report-<stats> for another stats)
    stats: str = "stats"  # the statistics directory the report reads (STORE/<stats>, stats.out of the stats job)
    compare: str | None = None  # a second statistics directory of the store, drawn beside (e.g. stats-nopos0)
    compare_store: str | None = None  # another store (a path) whose statistics are drawn beside (another model)
    survive_factor: float = 2.0  # with compare: a finding survives within this factor, same sign
    doc: int | None = None  # document of the trajectory and similarity map; default: the first of >= 12 tokens
    max_tokens: int = 48  # tokens of that document shown
    walks: int = 4  # token walks drawn in the trajectory
    labels: bool = True  # label the trajectory with nearest vocabulary tokens (loads the model)
    max_offset: int = 256  # position kernels: offsets shown
    stores: list[str] = field(default_factory=list)  # other generation stores to compare (strategies.png): [PATH,...]

    def validate(self) -> None:
        if not self.survive_factor > 1:
            raise EmbwalkError(f"report.survive_factor must be > 1, got {self.survive_factor}")
        for key in ("stats", "compare"):
            name = getattr(self, key)
            if name is not None and (not name or "/" in name or name in (".", "..")):
                raise EmbwalkError(f"report.{key} names a statistics directory under the store, got {name!r}")
        if self.compare_store is not None and (not isinstance(self.compare_store, str) or not self.compare_store):
            raise EmbwalkError(f"report.compare_store is the path of another store, got {self.compare_store!r}")
        if isinstance(self.stores, str) or not all(isinstance(p, str) and p for p in self.stores or []):
            raise EmbwalkError(f"report.stores is a list of store paths, report.stores=[PATH,...], got {self.stores!r}")
