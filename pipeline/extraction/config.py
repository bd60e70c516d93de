"""The extraction job's config: one section per component, each the component's own dataclass.

This is the job's composition root: ``ExtractConfig.from_dict`` is the one place
a job's options become objects (through ``embwalk.config.from_dict``, which
rejects unknown keys), and conf/extract.yaml's groups are these sections.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from embwalk.config import from_dict
from embwalk.corpus.config import CorpusConfig
from embwalk.errors import EmbwalkError
from embwalk.executors.config import ClusterConfig
from embwalk.generation.config import DecodeConfig
from embwalk.models.config import ModelConfig
from embwalk.models.sites import is_decoder_site, sites_stack
from embwalk.stats.config import StatsOptions
from embwalk.store.config import StoreConfig


@dataclass
class CaptureConfig:
    """Which sites the hooks capture (README: capture sites), and statistics computed in the pass."""

    sites: list[str] = field(default_factory=lambda: ["resid_pre.0", "resid_post", "final"])
    heads: list[int] | None = None  # attention heads to keep (all by default)
    store_arrays: bool = True  # false: keep nothing but the token table (and the statistics)
    # Walk statistics computed in the pass (None: none): a StatsOptions, given as its dict in YAML.
    # Typed Any for Hydra, which cannot merge options into a structured node that is None.
    stats: Any = None

    def __post_init__(self) -> None:
        if self.stats is not None:
            self.stats = from_dict(StatsOptions, self.stats, "capture.stats")

    def validate(self) -> None:
        if not self.store_arrays and self.stats is None:
            raise EmbwalkError(
                "capture.store_arrays=false keeps nothing: also set capture.stats (e.g. capture=stats_only)"
            )


@dataclass
class ExtractConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    # Generation (embwalk generate): how the model decodes its prompts; None: an extraction.
    # Typed Any for Hydra, like capture.stats; a DecodeConfig once built.
    decode: Any = None

    def __post_init__(self) -> None:
        if self.decode is not None and not isinstance(self.decode, DecodeConfig):
            self.decode = from_dict(DecodeConfig, self.decode, "decode")

    def two_stacks(self) -> bool:
        """Whether the sites span an encoder-decoder model's two stacks (a two-stack store)."""
        return sites_stack(list(self.capture.sites)) == "both"

    def stack_jobs(self) -> dict[str, ExtractConfig]:
        """The jobs of a two-stack store (pipeline/extraction/stacks.py): ``dec``, the decoder's
        sites into STORE/decoder, then ``enc``, the other sites into STORE/encoder over the same
        records' inputs (no target field: the encoder reads the inputs alone)."""
        from embwalk.store.stacks import stack_store_path  # lazily: pyarrow (the CLI's help imports this module)

        sites = [str(n).strip() for n in self.capture.sites]
        dec = [n for n in sites if is_decoder_site(n)]
        jobs = {}
        for stack, names in (("dec", dec), ("enc", [n for n in sites if n not in dec])):
            job = copy.deepcopy(self)
            job.capture.sites = names
            job.store.path = stack_store_path(self.store.path, stack)
            if stack == "enc":
                job.corpus.target_field = None
            jobs[stack] = job
        return jobs

    @classmethod
    def from_dict(cls, data: dict) -> ExtractConfig:
        """Build from plain dicts (Hydra's resolved config), rejecting unknown keys in one line."""
        return from_dict(cls, data)

    def validate(self) -> None:
        """Every option value checked before any work or any file."""
        # dec.* sites make a decoder store (docs/seq2seq.md): the stack is what workers and the
        # statistics load, so it lives in the model's options. Sites of both stacks make a
        # two-stack store: two jobs, each checked as its own.
        stack = sites_stack(list(self.capture.sites))
        if stack == "both":
            if self.decode is not None:
                raise EmbwalkError("embwalk generate writes one stack's store: capture dec.* sites alone")
            for job in self.stack_jobs().values():
                job.validate()
            return
        self.model.stack = stack
        self.model.validate()
        self.corpus.validate()
        self.capture.validate()
        self.store.validate()
        self.cluster.validate()
        if self.decode is not None:
            self.decode.validate()
            if self.corpus.shuffle_tokens:
                raise EmbwalkError("corpus.shuffle_tokens does not apply to generation prompts yet")
        if self.corpus.target_field is not None and self.model.stack != "dec":
            raise EmbwalkError("corpus.target_field is for decoder stores of encoder-decoder models: capture "
                               "dec.* sites (dec.resid_post, dec.final, ...)")
        if self.model.stack == "dec" and self.corpus.mode != "document":
            raise EmbwalkError("a decoder store (dec.* sites) runs one input per sequence: set corpus.mode=document "
                               "(with corpus.target_field for input-target pairs, without it for inputs alone)")
        if self.model.stack == "dec" and (self.corpus.shuffle_tokens or (self.decode and self.corpus.target_field)):
            raise EmbwalkError(
                "decoder stores (dec.* sites) do not take corpus.shuffle_tokens yet" if self.corpus.shuffle_tokens
                else "embwalk generate continues each input from the decoder's start token: drop corpus.target_field "
                "(generating after a given target is not built)")
