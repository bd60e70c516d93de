"""An extraction job: resolve its config, plan it, and describe its store.

Everything here runs before any shard is computed and is deterministic, so
the local executor, a Ray driver and a rerun that resumes all derive the same
plan and the same store identity from the same config.
"""

from __future__ import annotations

import platform
import sys
import zlib
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata

import torch

from pipeline.corpus import CorpusConfig, TokenizedCorpus, read_documents, tokenize_corpus
from pipeline.errors import EmbwalkError, SiteError
from pipeline.models.capture import CaptureLayout
from pipeline.models.loading import LoadedModel, ModelConfig
from pipeline.models.sites import parse_sites
from pipeline.plan import Plan, make_plan, shard_tokens_for
from pipeline.store import layout as store_layout
from pipeline.store.fs import open_fs, require_local
from pipeline.store.verify import check_level
from pipeline.store.writer import check_compressor

STORE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


@dataclass
class CaptureConfig:
    sites: list[str] = field(default_factory=lambda: ["resid_pre.0", "resid_post", "final"])
    heads: list[int] | None = None  # attention heads to keep (all by default)
    store_arrays: bool = True  # false: keep nothing but the token table (and the statistics)
    stats: dict | None = None  # walk statistics computed in the pass (pipeline.stats.run.StatsOptions)

    def stats_options(self):
        if self.stats is None:
            return None
        from pipeline.stats.run import StatsOptions

        unknown = sorted(set(self.stats) - {f.name for f in fields(StatsOptions)})
        if unknown:
            raise EmbwalkError(f"unknown capture.stats option(s): {', '.join(unknown)}")
        return StatsOptions(**self.stats)


@dataclass
class StoreConfig:
    path: str = "stores/default"
    dtype: str = "float16"  # float16 | float32 (bfloat16 is not a Zarr v3 data type)
    shard_tokens: int = 4096  # the unit of scheduling, writing, commit and retry
    chunk_tokens: int = 256  # rows per Zarr chunk (what a reader decodes at once)
    compressor: str = "none"  # none | zstd
    verify: str = "quick"  # how a rerun checks committed shards before skipping them: quick | full


@dataclass
class ClusterConfig:
    kind: str = "local"  # local (this process) | ray
    batch_size: int = 8
    threads: int | None = None  # torch intra-op threads (per Ray worker); None = torch's default
    progress: bool = True
    address: str | None = None  # ray: None starts a local instance; "auto" or host:port joins a cluster
    workers: int | None = None  # ray: None = one per GPU, or 1 without GPUs
    max_retries: int = 3  # ray: further attempts of a shard whose worker died or raised


@dataclass
class ExtractConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    capture: CaptureConfig = field(default_factory=CaptureConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @classmethod
    def from_dict(cls, data: dict) -> ExtractConfig:
        """Build from plain dicts (Hydra's resolved config), rejecting unknown keys in one line."""
        parts = {}
        for f in fields(cls):
            section = dict(data.get(f.name) or {})
            allowed = {g.name for g in fields(f.default_factory())}
            unknown = sorted(set(section) - allowed)
            if unknown:
                raise EmbwalkError(f"unknown {f.name} option(s): {', '.join(unknown)}")
            parts[f.name] = f.default_factory().__class__(**section)
        return cls(**parts)


@dataclass
class PreparedJob:
    config: ExtractConfig
    corpus: TokenizedCorpus
    plan: Plan
    layout: CaptureLayout
    sites: list[str]
    specs: list[store_layout.ArraySpec]
    manifest: dict

    @property
    def dtype(self) -> torch.dtype:
        return STORE_DTYPES[self.config.store.dtype]


def prepare(cfg: ExtractConfig, loaded: LoadedModel) -> PreparedJob:
    """Validate, tokenize, plan and describe the store; no activations are computed."""
    if not cfg.capture.store_arrays and cfg.capture.stats is None:
        raise EmbwalkError("capture.store_arrays=false keeps nothing: also set capture.stats (e.g. capture=stats_only)")
    open_fs(cfg.store.path)  # an unknown protocol or a missing fsspec backend fails here, before any work
    if cfg.capture.stats is not None:  # the statistics partials are written with local file operations
        require_local(cfg.store.path, "statistics computed in the pass (capture.stats)")
    if cfg.store.dtype not in STORE_DTYPES:
        raise EmbwalkError(f"unknown store.dtype {cfg.store.dtype!r}; choose float16 or float32")
    check_compressor(cfg.store.compressor)
    check_level(cfg.store.verify)
    cfg.capture.stats_options()  # unknown statistics options fail here, before the store exists
    if loaded.max_positions and cfg.corpus.seq_len > loaded.max_positions:
        raise EmbwalkError(
            f"corpus.seq_len={cfg.corpus.seq_len} is above the model's limit of "
            f"{loaded.max_positions} positions ({loaded.model_id})"
        )
    sites = parse_sites(list(cfg.capture.sites), loaded.n_layers)
    heads = _heads(cfg.capture.heads, loaded.n_heads)
    layout = CaptureLayout.from_sites(sites, heads)
    corpus = tokenize_corpus(read_documents(cfg.corpus), loaded.tokenizer, cfg.corpus)
    shard_tokens = shard_tokens_for(
        cfg.store.shard_tokens, cfg.store.chunk_tokens, cfg.corpus.seq_len, cfg.corpus.mode
    )
    plan = make_plan(corpus, shard_tokens)
    specs = [] if not cfg.capture.store_arrays else store_layout.array_specs(
        n_tokens=plan.n_tokens,
        n_sequences=plan.n_sequences,
        seq_len=cfg.corpus.seq_len,
        d_model=loaded.d_model,
        shard_tokens=shard_tokens,
        chunk_tokens=cfg.store.chunk_tokens,
        per_token_layers=layout.array_layers(),
        final=layout.final,
        pattern_layers=layout.pattern_layers,
        heads=tuple(heads) if heads is not None else tuple(range(loaded.n_heads)),
        dtype=cfg.store.dtype,
    )
    manifest = _manifest(cfg, loaded, corpus, plan, [s.name for s in sites])
    return PreparedJob(cfg, corpus, plan, layout, [s.name for s in sites], specs, manifest)


def _heads(heads: list[int] | None, n_heads: int) -> list[int] | None:
    if heads is None:
        return None
    for h in heads:
        if not 0 <= int(h) < n_heads:
            raise SiteError(f"attention head {h} is out of range: the model has {n_heads} heads (0..{n_heads - 1})")
    return sorted({int(h) for h in heads})


def _manifest(cfg: ExtractConfig, loaded: LoadedModel, corpus: TokenizedCorpus, plan: Plan, sites: list[str]) -> dict:
    tokenizer = loaded.tokenizer
    model = loaded.describe()
    identity = {
        # Everything that decides what the arrays hold; a resume must match it all.
        "model.weights_fingerprint": model["weights_fingerprint"],
        "model.dtype": model["dtype"],
        "tokenizer.vocab_size": len(tokenizer),
        "corpus": asdict(cfg.corpus),
        "corpus.token_checksum": zlib.crc32(corpus.token_ids.tobytes()),
        "corpus.n_tokens": plan.n_tokens,
        "capture.sites": sites,
        "capture.heads": cfg.capture.heads,
        "capture.store_arrays": cfg.capture.store_arrays,
        "capture.stats": cfg.capture.stats,
        "store.dtype": cfg.store.dtype,
        "store.shard_tokens": plan.shard_tokens,
        "store.chunk_tokens": cfg.store.chunk_tokens,
        "store.compressor": cfg.store.compressor,
    }
    return {
        "format": store_layout.FORMAT,
        "format_version": store_layout.FORMAT_VERSION,
        "model": model,
        "tokenizer": {
            "name_or_path": getattr(tokenizer, "name_or_path", None),
            "class": type(tokenizer).__name__,
            "vocab_size": len(tokenizer),
            "eos_token_id": tokenizer.eos_token_id,
        },
        "config": {
            "model": asdict(cfg.model), "corpus": asdict(cfg.corpus),
            "capture": asdict(cfg.capture), "store": asdict(cfg.store),
        },
        "sites": sites,
        "dtype": cfg.store.dtype,
        "seq_len": cfg.corpus.seq_len,
        "mode": cfg.corpus.mode,
        "causal": loaded.family.causal,
        "n_tokens": plan.n_tokens,
        "n_sequences": plan.n_sequences,
        "n_documents": corpus.n_documents,
        "shard_tokens": plan.shard_tokens,
        "shards": [{**s.to_dict(), "status": "pending"} for s in plan.shards],
        "identity": identity,
        "versions": _versions(),
    }


def _versions() -> dict:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("embwalk", "torch", "transformers", "zarr", "pyarrow", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions
