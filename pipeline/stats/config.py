"""Configuration of the walk-statistics accumulators.

Everything that changes the *meaning* of a partial result (bin edges, the
tracked token types, the nucleus mass, ...) is part of ``StatsConfig.fingerprint``;
partials are only merged when their fingerprints agree, so a histogram never
adds counts binned on different edges.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embwalk.errors import EmbwalkError

FAMILIES = ("encoding", "logit_lens", "decoding", "attention", "geometry", "bias_share", "generation")
# Families that read a generation store's step records (embwalk generate): in the defaults only there.
GENERATION_FAMILIES = ("generation",)
# Families of a model with a learned relative position bias (T5): in the defaults only for one.
POSITION_BIAS_FAMILIES = ("bias_share",)
DEFAULT_FAMILIES = tuple(f for f in FAMILIES if f not in GENERATION_FAMILIES + POSITION_BIAS_FAMILIES)
# Integer-valued kinds (ranks, nucleus sizes): their quantiles are the sample's own (inverted CDF)
# where the bins are single integers, up to EXACT_INTEGERS.
INTEGER_KINDS = ("rank", "nucleus")
EXACT_INTEGERS = 256
# The default statistics directory: embwalk.store.layout.STATS_DIR (not imported: pyarrow would
# load with every --help)
STATS_DIR = "stats"


@dataclass(frozen=True)
class Bins:
    """Fixed, increasing histogram edges.

    Values below the first edge or above the last are counted in an underflow and
    an overflow bin. Bins are half-open ``[lo, hi)`` except the last, which is
    closed, so that e.g. a cosine of exactly 1 lands in the top bin.
    """

    edges: tuple[float, ...]

    def __post_init__(self) -> None:
        e = np.asarray(self.edges, dtype=np.float64)
        if e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e)) or np.any(np.diff(e) <= 0):
            raise ValueError(f"bin edges must be >= 2 finite increasing numbers: {self.edges!r}")
        object.__setattr__(self, "edges", tuple(float(v) for v in e))

    @classmethod
    def linear(cls, lo: float, hi: float, n: int) -> Bins:
        return cls(tuple(np.linspace(lo, hi, int(n) + 1)))

    @classmethod
    def log(cls, lo: float, hi: float, n: int) -> Bins:
        """``n`` bins evenly spaced in log(value) on [lo, hi] (lo > 0)."""
        if lo <= 0:
            raise ValueError(f"log bins need lo > 0, got {lo}")
        return cls(tuple(np.geomspace(lo, hi, int(n) + 1)))

    @classmethod
    def pow2(cls, max_exp: int, zero: bool = True) -> Bins:
        """Integer bins [0,1), [1,2), [2,4), ... [2^(max_exp-1), 2^max_exp] (ranks, sizes)."""
        edges = [2.0**k for k in range(int(max_exp) + 1)]
        return cls(tuple(([0.0] if zero else []) + edges))

    @classmethod
    def integers(cls, exact_below: int, max_exp: int, zero: bool = True) -> Bins:
        """Integer values: one bin per integer [k, k+1) up to ``exact_below`` (quantiles there are
        exact), then powers of two up to 2^max_exp (ranks, sizes: within a factor of 2 above)."""
        first = 0 if zero else 1
        powers = [2.0**k for k in range(int(max_exp) + 1) if 2.0**k > exact_below]
        return cls(tuple(float(k) for k in range(first, int(exact_below) + 1)) + tuple(powers))

    @classmethod
    def from_spec(cls, spec: Any) -> Bins:
        """Accept a Bins, a list of edges, or ``{"linear"|"log": [lo, hi, n]}`` /
        ``{"pow2": [max_exp, zero]}`` (the form a Hydra/YAML config gives)."""
        if isinstance(spec, Bins):
            return spec
        if isinstance(spec, Mapping):
            if len(spec) != 1 or next(iter(spec)) not in ("linear", "log", "pow2", "integers", "edges"):
                raise ValueError(f"bin spec must be one of linear/log/pow2/integers/edges, got {spec!r}")
            (kind, args), = spec.items()
            if kind == "edges":
                return cls(tuple(args))
            return getattr(cls, kind)(*args)
        if isinstance(spec, Sequence) and not isinstance(spec, str):
            return cls(tuple(spec))
        raise ValueError(f"cannot read bins from {spec!r}")

    @property
    def array(self) -> np.ndarray:
        return np.asarray(self.edges, dtype=np.float64)


def default_bins() -> dict[str, Bins]:
    """Bins per kind of quantity. Ranges are generous so real models rarely hit
    the under/overflow bins (residual norms of large models reach 1e3-1e4)."""
    return {
        "cos": Bins.linear(-1.0, 1.0, 200),
        "norm": Bins.log(1e-3, 1e5, 160),
        "step": Bins.log(1e-3, 1e5, 160),
        "rank": Bins.integers(EXACT_INTEGERS, 24),
        "prob": Bins.log(1e-12, 1.0, 240),
        "logprob": Bins.linear(-40.0, 0.0, 400),
        "entropy": Bins.linear(0.0, 16.0, 320),
        "kl": Bins.log(1e-8, 1e3, 220),
        "dot": Bins.linear(-200.0, 200.0, 800),
        "nucleus": Bins.integers(EXACT_INTEGERS, 24, zero=False),
        "ratio": Bins.linear(0.0, 1.0, 200),
        "angle": Bins.linear(0.0, 180.0, 360),
    }


@dataclass(frozen=True)
class StatsConfig:
    """Which statistic families to compute and how.

    - ``bins``: per kind (see ``default_bins``); entries given here replace the defaults.
    - ``nucleus_p``: mass of the top-p nucleus whose size the decoding walk reports.
    - ``self_sim_types``: token ids whose per-type sums of unit vectors are kept for
      self-similarity. Memory is ``len * (L+1) * d * 8`` bytes, so the set is explicit
      and fixed before any shard runs (pick the top-K by frequency with
      ``most_frequent_types`` from the token table); a
      set chosen per shard would not merge exactly.
    - ``cov_layers``: layers whose d x d second-moment matrix is kept (None = all).
    - ``assoc_include_self``: count the i == j pair in the association-bias correlation
      (off by default: its cosine is 1 whatever the weight, which pulls the correlation up).
    - ``exclude_positions``: sequence positions (0 = a sequence's first token) left out of
      every family: their tokens' rows, the attention queries there and every pair with one
      of them (keys keep their weight in each query's row: rows still sum to 1).
    - ``exclude_massive``: also leave out every token whose vector has a massive activation
      at any residual layer the shard holds (largest |x_k| over ``massive_ratio`` x the
      vector's median |x_k|; Sun et al. 2024), the same way.
    - ``massive_ratio``: that factor (100), also the geometry family's ``massive_*`` counts.
    - ``out``: the statistics directory under the store's root (``stats``; a variant such as
      ``stats-nopos0`` keeps a second set of results beside the first). Where, not what:
      not part of the fingerprint.
    - ``chunk_tokens``: tokens per [chunk, vocab] logits block (memory only, not meaning).
    - ``fast_moments``: geometry sums and second moments, and one sequence's association-bias
      sums, formed in float32 (second moments centred) and added in float64: ~2x faster,
      ~1e-7 relative instead of ~1e-15, and a result then depends on how tokens were
      batched at that level (not part of the fingerprint).
    """

    families: tuple[str, ...] = DEFAULT_FAMILIES
    bins: Mapping[str, Bins] = field(default_factory=default_bins)
    nucleus_p: float = 0.9
    self_sim_types: tuple[int, ...] = ()
    cov_layers: tuple[int, ...] | None = None
    assoc_include_self: bool = False
    chunk_tokens: int = 256
    fast_moments: bool = False
    exclude_positions: tuple[int, ...] = ()
    exclude_massive: bool = False
    massive_ratio: float = 100.0
    out: str = STATS_DIR

    def __post_init__(self) -> None:
        unknown = set(self.families) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown statistic families {sorted(unknown)}; known: {FAMILIES}")
        bins = default_bins()
        for kind, spec in dict(self.bins).items():
            if kind not in bins:
                raise ValueError(f"unknown bin kind {kind!r}; known: {sorted(bins)}")
            bins[kind] = Bins.from_spec(spec)
        if not 0.0 < self.nucleus_p <= 1.0:
            raise ValueError(f"nucleus_p must be in (0, 1], got {self.nucleus_p}")
        if self.chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be >= 1, got {self.chunk_tokens}")
        object.__setattr__(self, "families", tuple(self.families))
        object.__setattr__(self, "bins", bins)
        types = tuple(sorted({int(t) for t in self.self_sim_types}))
        object.__setattr__(self, "self_sim_types", types)
        if self.cov_layers is not None:
            object.__setattr__(self, "cov_layers", tuple(int(v) for v in self.cov_layers))
        positions = tuple(sorted({int(p) for p in self.exclude_positions}))
        if positions and positions[0] < 0:
            raise ValueError(f"exclude_positions must be positions >= 0, got {list(self.exclude_positions)}")
        object.__setattr__(self, "exclude_positions", positions)
        check_out(self.out)
        if not self.massive_ratio > 1.0:
            raise ValueError(f"massive_ratio must be > 1, got {self.massive_ratio}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (stored with every partial)."""
        return {
            "families": list(self.families),
            "bins": {k: {"edges": list(b.edges)} for k, b in sorted(self.bins.items())},
            "nucleus_p": self.nucleus_p,
            "self_sim_types": list(self.self_sim_types),
            "cov_layers": None if self.cov_layers is None else list(self.cov_layers),
            "assoc_include_self": self.assoc_include_self,
            "chunk_tokens": self.chunk_tokens,
            "fast_moments": self.fast_moments,
            "exclude_positions": list(self.exclude_positions),
            "exclude_massive": self.exclude_massive,
            "massive_ratio": self.massive_ratio,
            "out": self.out,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StatsConfig:
        d = dict(d)
        for key in ("families", "self_sim_types", "cov_layers", "exclude_positions"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        return cls(**d)

    def fingerprint(self) -> dict[str, Any]:
        """The part of the config that partials must share to be merged."""
        d = self.to_dict()
        del d["families"], d["chunk_tokens"], d["fast_moments"], d["out"]
        return d

    @property
    def excludes(self) -> bool:
        """Some tokens are left out of the statistics (``exclude_positions``, ``exclude_massive``)."""
        return bool(self.exclude_positions) or self.exclude_massive


_OUT = re.compile(rf"{STATS_DIR}([-_.][A-Za-z0-9_.-]+)?")


def check_out(out: str) -> None:
    """A statistics directory is ``stats`` or ``stats-NAME``: a plain name under the store's root
    (never a path that could land in, or over, the store's data)."""
    if not isinstance(out, str) or not _OUT.fullmatch(out) or ".." in out:
        raise ValueError(f"the statistics directory must be {STATS_DIR!r} or {STATS_DIR}-NAME "
                         f"(letters, digits, - _ .), got {out!r}")


def most_frequent_types(token_ids: Iterable[int] | np.ndarray, k: int) -> tuple[int, ...]:
    """The ``k`` most frequent token ids (ties broken by smaller id), sorted by id, for
    ``self_sim_types``. Feed it the corpus's token ids (the token table) before any shard runs."""
    arr = token_ids if isinstance(token_ids, np.ndarray) else np.fromiter(token_ids, np.int64)
    return top_types(*np.unique(arr.astype(np.int64), return_counts=True), k)


def top_types(ids: np.ndarray, counts: np.ndarray, k: int) -> tuple[int, ...]:
    """``most_frequent_types`` from token ids and how often each occurs (summed over a corpus's parts)."""
    ids, counts = np.asarray(ids, np.int64), np.asarray(counts, np.int64)
    order = np.lexsort((ids, -counts))[:k]
    return tuple(int(t) for t in sorted(ids[order]))


@dataclass
class StatsOptions:
    """Which walk statistics, and how (``stats_config`` makes the StatsConfig once the corpus is known).

    The Hydra ``stats`` group, and ``capture.stats`` for statistics computed in the pass."""

    families: list[str] | None = None  # None: every family the store can feed (generation: on a generation store)
    self_sim_top_k: int = 100  # token types tracked for self-similarity: the corpus's most frequent
    cov_layers: list[int] | None = None  # layers with a covariance spectrum (None = all)
    cov_every: int | None = None  # or: every k-th residual layer and the last (the d x d product is the cost)
    nucleus_p: float = 0.9
    assoc_include_self: bool = False  # count i == j pairs (cosine 1) in the association-bias correlation
    chunk_tokens: int = 256
    fast_moments: bool = False  # geometry sums in float32 (centred): ~2x faster, ~1e-7 relative (stats=fast)
    exclude_positions: list[int] = field(default_factory=list)  # sequence positions left out, e.g. [0] or [0,1,2,3]
    exclude_massive: bool = False  # leave out tokens with a massive activation (max |x_k| > massive_ratio x median)
    massive_ratio: float = 100.0  # what counts as massive: largest |x_k| over this many times the vector's median |x_k|
    out: str = "stats"  # results directory under the store: stats, or stats-NAME for a variant
    bins: dict | None = None
    device: str = "auto"  # where statistics are computed: cpu | cuda | cuda:N | auto
    resume: bool = True  # skip shards whose partials match this config and store

    def families_for(self, generation: bool = False, position_bias: bool = False) -> tuple[str, ...]:
        """The families asked for; by default every one, the generation families on a generation store
        only, and the position-bias ones for a model with a learned position bias only."""
        if self.families is not None:
            return tuple(self.families)
        extra = (GENERATION_FAMILIES if generation else ()) + (POSITION_BIAS_FAMILIES if position_bias else ())
        return tuple(f for f in FAMILIES if f in DEFAULT_FAMILIES or f in extra)

    def stats_config(
        self, token_ids: np.ndarray | None = None, n_resid: int | None = None,
        counts: tuple[np.ndarray, np.ndarray] | None = None, generation: bool = False,
        position_bias: bool = False,
    ) -> StatsConfig:
        """The StatsConfig for a corpus; self-similarity types are its top-K by frequency, from
        its ``token_ids`` or from ``counts`` (token ids, how often each occurs).
        ``n_resid``: residual layers the statistics see (needed with ``cov_every``);
        ``generation``: the store holds generated continuations (embwalk generate);
        ``position_bias``: the model learns a relative position bias (Family.position_bias)."""
        families = self.families_for(generation, position_bias)
        unknown = sorted(set(families) - set(FAMILIES))
        if unknown:
            raise EmbwalkError(f"unknown stats.families {unknown}; known: {', '.join(FAMILIES)}")
        if counts is None:
            counts = np.unique(np.asarray(token_ids if token_ids is not None else [], np.int64), return_counts=True)
        types = top_types(*counts, self.self_sim_top_k) if self.self_sim_top_k > 0 else ()
        cov = None if self.cov_layers is None else tuple(self.cov_layers)
        if self.cov_every:
            if self.cov_layers is not None or n_resid is None or self.cov_every < 1:
                raise EmbwalkError("stats.cov_every takes a positive step, without stats.cov_layers")
            cov = tuple(sorted(set(range(0, n_resid, self.cov_every)) | {n_resid - 1}))
        try:
            return StatsConfig(
                families=families, bins=dict(self.bins or {}), nucleus_p=self.nucleus_p,
                self_sim_types=types, cov_layers=cov,
                assoc_include_self=self.assoc_include_self, chunk_tokens=self.chunk_tokens,
                fast_moments=self.fast_moments, exclude_positions=tuple(self.exclude_positions),
                exclude_massive=self.exclude_massive, massive_ratio=self.massive_ratio, out=self.out,
            )
        except ValueError as exc:
            raise EmbwalkError(f"bad stats option: {exc}") from exc
