"""What an executor is, to the code that hands it work: the interfaces, and nothing else.

The job driver (pipeline/extraction/driver.py) and every stage that fans work out
(tokenizing the corpus's parts, the statistics' shards) depend on this module
only; the executors themselves (pipeline/executors/local.py, ray.py) depend on
the driver, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from tqdm.auto import tqdm

    from embwalk.extraction.config import ExtractConfig
    from embwalk.extraction.job import PreparedJob
    from embwalk.models.loading import LoadedModel
    from embwalk.plan import Shard
    from embwalk.store.writer import StoreWriter

U = TypeVar("U")
R = TypeVar("R")

# Runs fn(unit, *shared) for every unit, yielding results in unit order (pipeline/executors/units.py).
UnitMapper = Callable[[Callable[..., R], Iterable[U], tuple], Iterator[R]]


class Executor(Protocol):
    def start(self, cfg: ExtractConfig) -> None:
        """Get ready (a Ray connection, torch threads); refuse what it cannot run, before any work."""

    def parts_mapper(self, cfg: ExtractConfig) -> UnitMapper | None:
        """Where the corpus's parts are tokenized (None: in this process)."""

    def extract(self, cfg: ExtractConfig, job: PreparedJob, writer: StoreWriter, todo: list[Shard],
                loaded: LoadedModel | None, bar: tqdm) -> int:
        """Extract and commit ``todo``; returns the tokens written. A shard that fails for good
        raises once the others are done."""
