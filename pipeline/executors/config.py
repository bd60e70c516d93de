"""Where a job's work units run (the Hydra ``cluster`` group), for extraction and statistics alike."""

from __future__ import annotations

from dataclasses import dataclass

from embwalk.errors import EmbwalkError

KINDS = ("local", "ray")


@dataclass
class ClusterConfig:
    """Where work units run: this machine or a Ray cluster, with how many workers."""

    kind: str = "local"  # local (this machine) | ray
    batch_size: int = 8  # extraction: sequences per forward pass
    threads: int | None = None  # torch threads per worker; None: torch's default (extraction), 1 (statistics)
    progress: bool = True
    address: str | None = None  # ray: None starts a local instance; "auto" or host:port joins a cluster
    workers: int | None = None  # extraction on ray: None = one per GPU, or 1 without GPUs;
    # statistics: processes (local; None = one per core, 1 = this process) or Ray tasks at once
    max_retries: int = 3  # ray: further attempts of a unit whose worker died or raised
    tokenize_workers: int | None = None  # processes (local) or Ray tasks at once tokenizing the corpus's parts;
    # None: every CPU (local: this process alone for a corpus cut at 1M tokens or fewer); 1: this process

    def validate(self) -> None:
        if self.kind not in KINDS:
            raise EmbwalkError(f"unknown cluster.kind {self.kind!r}; choose local or ray")
