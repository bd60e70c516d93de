"""The accumulator protocol shared by every statistic family.

An accumulator is a bag of additive numpy arrays (its *state*) plus the set of
shard ids it covers. ``merge`` adds states and unions shard ids, refusing to
merge partials that share a shard: a rerun of a shard can then never be counted
twice. Partials persist as one Arrow table (Parquet-ready, no pickle): one row
per array chunk with its dtype and shape, and the config and shard ids as JSON
in the schema metadata.

Each family also declares what it reads (``needs_*`` below) and takes it from one
sequence's ``SequenceInputs`` in ``update_from``; whether a family can run on a
shard (and why not), which stored arrays the two-step route reads and which
capture sites the in-pass route needs are derived from those declarations, and
``ACCUMULATORS`` (filled as each family's class is defined) is the one registry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from embwalk.errors import EmbwalkError
from embwalk.stats import hist
from embwalk.stats.config import FAMILIES, INTEGER_KINDS, StatsConfig
from embwalk.stats.inputs import ARRAYS, Offer, SequenceInputs

FORMAT_VERSION = 1
META_KEY = b"embwalk.stats"
_CHUNK_BYTES = 1 << 26  # Parquet byte-array values must stay well below 2 GiB

_PARTIAL_SCHEMA = pa.schema(
    [
        ("name", pa.string()),
        ("dtype", pa.string()),
        ("shape", pa.list_(pa.int64())),
        ("chunk", pa.int32()),
        ("data", pa.large_binary()),
    ]
)

# Every family's class by name, in FAMILIES order: filled as each class is defined.
ACCUMULATORS: dict[str, type[Accumulator]] = {}


class StatsMergeError(EmbwalkError, ValueError):
    """Two partial results cannot be combined (different family, config or shape)."""


class ShardOverlapError(StatsMergeError):
    """Two partial results cover the same shard: merging them would double count it."""


class Accumulator:
    """Base of the per-family accumulators.

    Subclasses define ``family``, ``update(...)``, ``update_from(inputs)`` and ``result()``,
    and list in ``labels`` the state arrays that describe the layout (layer ids, ...) and
    must be equal, not added, when merging; ``special`` arrays are merged by the subclass.

    What a family reads is declared, not coded where it is used:

    - ``needs_resid``: the residual stream, with at least ``min_resid_layers`` layers;
      its tables' ``layer`` column then counts positions along resid's layer axis
      (the merge maps them to the store's residual indices)
    - ``needs_final_or_last_resid``: the final context vectors, captured or derived
      as final_norm(resid of the last block)
    - ``needs_pattern``: attention patterns; its tables' ``head`` column then counts
      positions along the pattern's head axis (capture.heads)
    - ``needs_unembed``: the model's unembedding (LM head)
    - ``uses_layer_inputs``: resid at each pattern layer's input, when the shard has it
      (optional: without it that part of the family is left out)
    - ``uses_resid``: the residual stream where the shard has it (optional; its ``layer``
      columns are then positions along resid's layer axis, as with ``needs_resid``)
    - ``needs_columns``: token-table columns beyond the token ids (a generation store's step
      records, ``store.layout.GENERATION_COLUMNS``), read into ``SequenceInputs.columns``
    - ``needs_position_bias``: a learned relative position bias (T5) and resid at some block's
      input, from which the head recomputes the scores (``ModelHead.scores``)
    """

    family: ClassVar[str] = ""
    labels: ClassVar[tuple[str, ...]] = ()
    special: ClassVar[tuple[str, ...]] = ()
    needs_resid: ClassVar[bool] = False
    min_resid_layers: ClassVar[int] = 1
    needs_final_or_last_resid: ClassVar[bool] = False
    needs_pattern: ClassVar[bool] = False
    needs_unembed: ClassVar[bool] = False
    uses_layer_inputs: ClassVar[bool] = False
    needs_columns: ClassVar[tuple[str, ...]] = ()
    uses_resid: ClassVar[bool] = False  # reads resid where the shard has it (optional, unlike needs_resid)
    needs_position_bias: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.family:
            if cls.family not in FAMILIES:
                raise TypeError(f"statistic family {cls.family!r} is not one of FAMILIES {FAMILIES}")
            registered = {**ACCUMULATORS, cls.family: cls}
            ACCUMULATORS.clear()
            ACCUMULATORS.update(sorted(registered.items(), key=lambda item: FAMILIES.index(item[0])))

    # ---- what the family reads -----------------------------------------------------

    @classmethod
    def missing(cls, offer: Offer) -> str | None:
        """Why the family cannot run on a shard that offers ``offer`` (None: it can)."""
        if cls.needs_resid and (offer.resid_layers is None or len(offer.resid_layers) < cls.min_resid_layers):
            return "needs resid" + (f" with >= {cls.min_resid_layers} layers" if cls.min_resid_layers > 1 else "")
        if cls.needs_final_or_last_resid and not (offer.final or offer.last_resid):
            return "needs final" + (" (or resid of the last block)" if offer.final_from_resid else "")
        if cls.needs_pattern and not offer.attention:
            return "does not apply: the model is attention-free"
        if cls.needs_pattern and not offer.pattern_layers:
            return "needs attention patterns"
        if cls.needs_unembed and not offer.unembed:
            return "the model has no unembedding (LM head)"
        if cls.needs_position_bias and not offer.position_bias:
            return "does not apply: the model has no learned relative position bias"
        if cls.needs_position_bias and not offer.layer_input_resid:
            return "needs resid at a layer's input (resid_pre.L)"
        if not set(cls.needs_columns) <= offer.columns:
            return "needs a generation store (embwalk generate): its step records"
        return None

    @classmethod
    def reads(cls, offer: Offer | None = None) -> list[str]:
        """The arrays (of ``ARRAYS``) the family reads from a shard that offers ``offer``;
        without an offer, every array it can use (what a capture for it should hold)."""
        read = set()
        optional = (cls.uses_layer_inputs and (offer is None or offer.layer_inputs)) or (
            cls.uses_resid and (offer is None or offer.resid_layers is not None))
        if cls.needs_resid or optional:
            read.add("resid")
        if cls.needs_final_or_last_resid:
            read.add("final" if offer is None or offer.final else "resid")
        if cls.needs_pattern:
            read.add("pattern")
        return [name for name in ARRAYS if name in read]

    def update_from(self, inputs: SequenceInputs) -> None:
        """Add one whole sequence, taking from ``inputs`` what the family declares it reads."""
        raise NotImplementedError

    def __init__(self, config: StatsConfig | None = None, shard_ids: Iterable[str] | str = ()):
        self.config = config if config is not None else StatsConfig()
        self.shard_ids: set[str] = {shard_ids} if isinstance(shard_ids, str) else set(shard_ids)
        self.state: dict[str, np.ndarray] = {}
        # Device-side float64/int64 twins of state arrays that updates add into, so an
        # update never waits on a device-to-host copy (d x d second moments are large).
        self._pending: dict[str, torch.Tensor] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shards={len(self.shard_ids)}, empty={self.empty})"

    @property
    def empty(self) -> bool:
        return not self.export_state()

    def edges(self, kind: str) -> np.ndarray:
        return self.config.bins[kind].array

    def _acc(self, key: str, device: torch.device) -> torch.Tensor:
        """The device-side accumulator of ``state[key]`` (its identity until flushed)."""
        t = self._pending.get(key)
        if t is None:
            arr = self.state[key]
            dtype = torch.float64 if arr.dtype.kind == "f" else torch.int64
            identity = next((i for suffix, (_, i) in hist.EXTREMES.items() if key.endswith(suffix)), 0)
            t = self._pending[key] = torch.full(arr.shape, identity, dtype=dtype, device=device)
        return t

    def _add(self, key: str, value: torch.Tensor) -> None:
        t = self._acc(key, value.device)
        value = value.detach().to(device=t.device, dtype=t.dtype)
        if key.endswith(".min"):
            torch.minimum(t, value, out=t)
        elif key.endswith(".max"):
            torch.maximum(t, value, out=t)
        else:
            t += value

    def _add_binned(self, name: str, values: torch.Tensor, kind: str,
                    keep: torch.Tensor | None = None) -> None:
        for key, inc in hist.binned(name, values, self.edges(kind), keep).items():
            self._add(key, inc)

    # ---- merging -----------------------------------------------------------------

    def merge(self, other: Accumulator) -> Accumulator:
        """Add ``other`` into ``self`` exactly and return ``self``."""
        if type(other) is not type(self):
            raise StatsMergeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        if other is self:
            raise ShardOverlapError(f"cannot merge a {self.family} partial with itself")
        overlap = self.shard_ids & other.shard_ids
        if overlap:
            shown = ", ".join(sorted(overlap)[:5])
            raise ShardOverlapError(
                f"{self.family} partials both cover shard(s) {shown}"
                f"{' ...' if len(overlap) > 5 else ''}: merging would double count"
            )
        if self.config.fingerprint() != other.config.fingerprint():
            raise StatsMergeError(f"{self.family} partials were computed with different configs")
        theirs = other.export_state()
        if theirs:
            if self.empty:
                self.import_state({k: v.copy() for k, v in theirs.items()})
            else:
                self._merge_state(theirs)
        self.shard_ids |= other.shard_ids
        return self

    def _merge_state(self, theirs: dict[str, np.ndarray]) -> None:
        """Add the additive arrays; check every array first so a failed merge changes nothing."""
        mine = self.state
        if set(mine) != set(theirs):
            raise StatsMergeError(f"{self.family} partials hold different arrays")
        for key in mine:
            if key in self.special:
                continue
            if key in self.labels:
                if not np.array_equal(mine[key], theirs[key]):
                    raise StatsMergeError(f"{self.family} partials differ in {key!r}")
            elif mine[key].shape != theirs[key].shape:
                raise StatsMergeError(
                    f"{self.family} partials differ in the shape of {key!r}: "
                    f"{mine[key].shape} vs {theirs[key].shape}"
                )
        for key in mine:
            if key not in self.labels and key not in self.special:
                mine[key] = hist.combine(key, mine[key], theirs[key])

    def export_state(self) -> dict[str, np.ndarray]:
        """The complete state as host numpy arrays (pending device sums flushed)."""
        for key, t in self._pending.items():
            self.state[key] = hist.combine(key, self.state[key], t.cpu().numpy())
        self._pending = {}
        return self.state

    def import_state(self, state: dict[str, np.ndarray]) -> None:
        self._pending = {}
        self.state = state

    # ---- results -----------------------------------------------------------------

    def result(self) -> dict[str, pa.Table]:
        raise NotImplementedError

    def _binned_tables(
        self, stats: dict[str, tuple[str, np.ndarray | None]], group: str | None = "layer"
    ) -> tuple[pa.Table, pa.Table]:
        """Summary and histogram tables for binned stats ``{name: (bin kind, group labels)}``.

        Summary: stat, [group], count, mean, std, q25, median, q75.
        Histogram: stat, [group], bin (0 = underflow), lo, hi, count.
        """
        self.export_state()
        summ: dict[str, list[np.ndarray]] = {}
        hcols: dict[str, list[np.ndarray]] = {}
        for name, (kind, labels) in stats.items():
            if f"{name}.count" not in self.state:
                continue
            edges = self.edges(kind)
            s = hist.summary(self.state, name, edges, integer=kind in INTEGER_KINDS)
            n_groups = len(s["count"])
            labels = np.arange(n_groups) if labels is None else np.asarray(labels)
            summ.setdefault("stat", []).append(np.full(n_groups, name, dtype=object))
            summ.setdefault("group", []).append(labels)
            for k, v in s.items():
                summ.setdefault(k, []).append(v)
            h = self.state[f"{name}.hist"]
            lo, hi = hist.bin_bounds(edges)
            n_cols = h.shape[1]
            hcols.setdefault("stat", []).append(np.full(h.size, name, dtype=object))
            hcols.setdefault("group", []).append(np.repeat(labels, n_cols))
            hcols.setdefault("bin", []).append(np.tile(np.arange(n_cols), n_groups))
            hcols.setdefault("lo", []).append(np.tile(lo, n_groups))
            hcols.setdefault("hi", []).append(np.tile(hi, n_groups))
            hcols.setdefault("count", []).append(h.reshape(-1))
        stat_fields = [("stat", pa.string())] + ([(group, pa.int64())] if group else [])
        summary_schema = pa.schema(
            stat_fields
            + [("count", pa.int64())]
            + [(k, pa.float64()) for k in ("mean", "std", "q25", "median", "q75")]
        )
        hist_schema = pa.schema(
            stat_fields
            + [("bin", pa.int32()), ("lo", pa.float64()), ("hi", pa.float64())]
            + [("count", pa.int64())]
        )
        return _table(summ, summary_schema, group), _table(hcols, hist_schema, group)

    # ---- persistence -------------------------------------------------------------

    def to_arrow(self) -> pa.Table:
        """The partial as an Arrow table (write it with ``pyarrow.parquet.write_table``)."""
        cols: dict[str, list[Any]] = {name: [] for name in _PARTIAL_SCHEMA.names}
        for name, arr in sorted(self.export_state().items()):
            arr = np.ascontiguousarray(arr)
            raw = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
            pieces = [raw[i : i + _CHUNK_BYTES] for i in range(0, len(raw), _CHUNK_BYTES)] or [b""]
            for i, piece in enumerate(pieces):
                cols["name"].append(name)
                cols["dtype"].append(arr.dtype.newbyteorder("<").str)
                cols["shape"].append(list(arr.shape))
                cols["chunk"].append(i)
                cols["data"].append(piece)
        meta = {
            "format": FORMAT_VERSION,
            "family": self.family,
            "config": self.config.to_dict(),
            "shard_ids": sorted(self.shard_ids),
        }
        schema = _PARTIAL_SCHEMA.with_metadata({META_KEY: json.dumps(meta).encode()})
        return pa.table(cols, schema=schema)

    @classmethod
    def from_arrow(cls, table: pa.Table) -> Accumulator:
        """Rebuild a partial from ``to_arrow``'s table; on the base class, any family."""
        raw_meta = (table.schema.metadata or {}).get(META_KEY)
        if raw_meta is None:
            raise StatsMergeError("table is not an embwalk statistics partial (no metadata)")
        meta = json.loads(raw_meta)
        if meta.get("format") != FORMAT_VERSION:
            raise StatsMergeError(f"unsupported statistics partial format {meta.get('format')}")
        target = ACCUMULATORS.get(meta["family"])
        if target is None or (cls is not Accumulator and target is not cls):
            raise StatsMergeError(f"partial of family {meta['family']!r} is not a {cls.__name__}")
        acc = target(StatsConfig.from_dict(meta["config"]), meta["shard_ids"])
        pieces: dict[str, list[tuple[int, bytes]]] = {}
        layout: dict[str, tuple[str, list[int]]] = {}
        for row in table.to_pylist():
            pieces.setdefault(row["name"], []).append((row["chunk"], row["data"]))
            layout[row["name"]] = (row["dtype"], row["shape"])
        state = {}
        for name, parts in pieces.items():
            dtype, shape = layout[name]
            buf = b"".join(data for _, data in sorted(parts))
            state[name] = np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape).copy()
        if state:
            acc.import_state(state)
        return acc


def _table(cols: dict[str, list[np.ndarray]], schema: pa.Schema, group: str | None) -> pa.Table:
    data = {}
    for f in schema:
        key = "group" if f.name == group else f.name
        parts = cols.get(key, [])
        data[f.name] = pa.array(np.concatenate(parts) if parts else [], type=f.type)
    return pa.table(data, schema=schema)


def write_partial(acc: Accumulator, path: str | Path) -> None:
    """Persist a partial result as a Parquet file."""
    pq.write_table(acc.to_arrow(), str(path))


def read_partial(path: str | Path) -> Accumulator:
    """Load a partial written by ``write_partial`` (any family)."""
    return Accumulator.from_arrow(pq.read_table(str(path)))


def merge_all(partials: Iterable[Accumulator]) -> Accumulator:
    """Merge partials of one family into a new accumulator (inputs are left untouched)."""
    it = iter(partials)
    first = next(it, None)
    if first is None:
        raise ValueError("merge_all needs at least one partial")
    out = type(first)(first.config)
    out.merge(first)
    for p in it:
        out.merge(p)
    return out
