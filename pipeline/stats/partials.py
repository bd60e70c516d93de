"""Per-shard partial results in a store, and their merge into corpus tables.

    STORE/stats/partials/shard-NNNNN/<family>.parquet   one partial per family
    STORE/stats/partials/shard-NNNNN/sample.npz         vectors of the sample sequence (its shard only)
    STORE/stats/partials/shard-NNNNN/meta.json          written last: what the partials cover
    STORE/stats/<table>.parquet                         merged corpus tables (and the model's: position_kernel)
    STORE/stats/summary.json                            what was merged, and headline figures

Every file is replaced atomically (``StoreFS.write_atomic``: a local rename or one
put of the whole object, pipeline/store/fs.py), and a shard has one file per family,
so a rerun of a shard replaces its partials instead of adding to them; merging also
refuses two partials that carry the same shard id (``ShardOverlapError``).
Only partials of committed shards are merged. Every function takes a store as a
path, a URL or a ``StoreFS``.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from embwalk.errors import StoreError
from embwalk.stats.base import Accumulator, merge_all
from embwalk.stats.families import ACCUMULATORS
from embwalk.stats.walk import WalkStats
from embwalk.store import layout as store_layout
from embwalk.store.commits import committed_shards, read_manifest, write_json
from embwalk.store.fs import StoreFS, open_fs

SINK_EPSILON = 0.3  # the attention-sink threshold of Gu et al. 2024
PARTIALS_DIR = "partials"
META = "meta.json"
SAMPLE = "sample.npz"
SUMMARY = "summary.json"
STATS = store_layout.STATS_DIR  # the default statistics directory; StatsConfig.out names others

StoreLike = StoreFS | str | Path  # a path, a URL or an opened store


def stats_dir(root: str | Path, out: str = STATS) -> Path:
    """``STORE/stats`` (or the variant ``out``) of a store on a local or shared filesystem."""
    return Path(root) / out


def shard_rel(index: int, out: str = STATS) -> str:
    """Shard ``index``'s partials directory, relative to the store's root."""
    return f"{out}/{PARTIALS_DIR}/{store_layout.shard_name(index)}"


def shard_dir(root: str | Path, index: int, out: str = STATS) -> Path:
    """Shard ``index``'s partials directory of a store on a local or shared filesystem."""
    return Path(root) / shard_rel(index, out)


def identity_hash(manifest: dict) -> str:
    """A short hash of what decides a store's data: partials from another store are refused."""
    raw = json.dumps(manifest.get("identity", {}), sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


def write_shard_partials(store: StoreLike, shard_index: int, ws: WalkStats,
                         extra: dict[str, Any] | None = None) -> str:
    """Write (or replace) shard ``shard_index``'s partial of every family ``ws`` computed;
    returns the directory's full name.

    Files of families ``ws`` no longer computes are removed, so the directory always
    describes one run of the shard; ``meta.json`` is written last.
    """
    fs = open_fs(store)
    manifest = read_manifest(fs)
    out = shard_rel(shard_index, ws.config.out)
    fs.makedirs(out)
    partials = ws.partials()
    for family, acc in partials.items():
        # Uncompressed: the sums are float64 bytes that snappy shrinks by ~10% at 3x the
        # write time (0.27 vs 0.09 s for a 40 MB geometry partial), paid once per shard.
        _write_table(fs, f"{out}/{family}.parquet", acc.to_arrow(), compression="none")
    _remove_stale(fs, out, partials)
    if ws.sample is not None:
        fs.write_atomic(f"{out}/{SAMPLE}", lambda f: np.savez(f, **ws.sample))  # a file object: no ".npz" appended
    else:
        fs.remove(f"{out}/{SAMPLE}")
    meta = {
        "shard": shard_index,
        "families": sorted(partials),
        "skipped": ws.skipped,
        "n_tokens": ws.n_tokens,
        "n_sequences": ws.n_sequences,
        "n_excluded": ws.n_excluded,
        "resid_layers": ws.resid_layers,
        "pattern_layers": ws.pattern_layers,
        "pattern_heads": ws.pattern_heads,
        "family_seconds": {k: round(v, 4) for k, v in ws.seconds.items()},
        "config": ws.config.fingerprint(),
        "store_identity": identity_hash(manifest),
        "written_at": time.time(),
        **(extra or {}),
    }
    write_json(fs, f"{out}/{META}", meta)
    return fs.describe(out)


def _write_table(fs: StoreFS, rel: str, table: pa.Table, **options: Any) -> None:
    fs.write_atomic(rel, lambda f: pq.write_table(table, f, **options))


def _remove_stale(fs: StoreFS, rel: str, keep: dict) -> None:
    """Remove the tables in directory ``rel`` that ``keep`` does not name (a rerun computed other ones)."""
    for name in fs.list(rel, "*.parquet"):
        if name.removesuffix(".parquet") not in keep:
            fs.remove(f"{rel}/{name}")


def read_shard_meta(store: StoreLike, index: int, out: str = STATS) -> dict | None:
    fs = open_fs(store)
    rel = f"{shard_rel(index, out)}/{META}"
    if not fs.is_file(rel):
        return None
    return json.loads(fs.read_bytes(rel))


def load_sample(store: StoreLike, out: str = STATS) -> dict[str, np.ndarray] | None:
    """The sample sequence's vectors kept by the statistics (None when no shard kept one)."""
    fs = open_fs(store)
    partials = f"{out}/{PARTIALS_DIR}"
    for shard in fs.list(partials, "shard-*"):
        rel = f"{partials}/{shard}/{SAMPLE}"
        if fs.is_file(rel):
            with np.load(io.BytesIO(fs.read_bytes(rel)), allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
    return None


def read_summary(store: StoreLike, out: str = STATS) -> dict | None:
    """``stats/summary.json`` (or ``out``'s) of the last merge (None before the first)."""
    fs = open_fs(store)
    rel = f"{out}/{SUMMARY}"
    return json.loads(fs.read_bytes(rel)) if fs.is_file(rel) else None


def read_tables(store: StoreLike, out: str = STATS) -> dict[str, pa.Table]:
    """The merged tables ``stats/<table>.parquet`` (or ``out``'s) by name."""
    fs = open_fs(store)
    return {name.removesuffix(".parquet"): _read_table(fs, f"{out}/{name}") for name in fs.list(out, "*.parquet")}


def merge_store_stats(store: StoreLike, timings: dict[str, Any] | None = None, out: str = STATS,
                      model_tables: dict[str, tuple[pa.Table, str]] | None = None) -> dict:
    """Merge the partials of every committed shard into ``stats/<table>.parquet`` and
    ``stats/summary.json`` (``out``: a variant directory); returns the summary. Raises StoreError when no committed
    shard has partials, StatsMergeError when partials disagree (config, layout). ``model_tables``
    ({name: (table, what it holds)}, pipeline/stats/position_kernel.py) come from the model's
    weights: written beside the merged tables and listed in the summary (a merge without them
    removes them, so the files always match the summary)."""
    fs = open_fs(store)
    where = fs.describe()
    manifest = read_manifest(fs)
    ident = identity_hash(manifest)
    committed = sorted(committed_shards(fs))
    by_family: dict[str, list[Accumulator]] = {}
    metas: dict[int, dict] = {}
    for index in committed:
        meta = read_shard_meta(fs, index, out)
        if meta is None:
            continue
        if meta.get("store_identity") != ident:
            raise StoreError(
                f"statistics of {store_layout.shard_name(index)} in {where} were computed on a different "
                "store (its identity changed): rerun the stats job"
            )
        metas[index] = meta
        for family in meta["families"]:
            rel = f"{shard_rel(index, out)}/{family}.parquet"
            if fs.is_file(rel):
                by_family.setdefault(family, []).append(Accumulator.from_arrow(_read_table(fs, rel)))
    if not metas:
        raise StoreError(f"no statistics partials in {out}/ for any committed shard of {where}: run embwalk stats")
    layouts = {json.dumps([m["resid_layers"], m["pattern_layers"]]) for m in metas.values()}
    if len(layouts) > 1:
        raise StoreError(f"statistics partials of {where} disagree in their layers: rerun the stats job")
    first = next(iter(metas.values()))
    tables: dict[str, pa.Table] = {}
    merged: dict[str, Accumulator] = {}
    for family, parts in sorted(by_family.items()):
        merged[family] = merge_all(parts)
        for name, table in merged[family].result().items():
            tables[name] = _relabel_axes(ACCUMULATORS[family], table, first)
    tables |= {name: table for name, (table, _) in (model_tables or {}).items()}
    for name, table in tables.items():
        _write_table(fs, f"{out}/{name}.parquet", table)
    _remove_stale(fs, out, tables)
    summary = _summary(fs, manifest, committed, metas, merged, tables, timings) | {"out": out}
    summary["model_tables"] = {name: what for name, (_, what) in (model_tables or {}).items()}
    write_json(fs, f"{out}/{SUMMARY}", summary)
    return summary


def _read_table(fs: StoreFS, rel: str) -> pa.Table:
    return pq.read_table(pa.BufferReader(fs.read_bytes(rel)))


def _relabel_axes(family: type[Accumulator], table: pa.Table, meta: dict) -> pa.Table:
    """A family's positions along resid's layer axis and the pattern's head axis (its declared
    inputs, pipeline/stats/base.py) -> the residual indices and head ids the store gives them."""
    if family.needs_resid or family.uses_resid:
        table = _relabel(table, "layer", meta["resid_layers"])
    if family.needs_pattern and meta.get("pattern_heads") is not None:
        table = _relabel(table, "head", meta["pattern_heads"])
    return table


def _relabel(table: pa.Table, column: str, labels: list[int]) -> pa.Table:
    """Positions 0..k-1 along an axis -> the labels the store gives that axis."""
    if column not in table.column_names or list(labels) == list(range(len(labels))):
        return table
    lut = np.asarray(labels, np.int64)
    i = table.column_names.index(column)
    return table.set_column(i, column, pa.array(lut[table.column(column).to_numpy()], pa.int64()))


def _summary(fs: StoreFS, manifest: dict, committed: list[int], metas: dict[int, dict],
             merged: dict[str, Accumulator], tables: dict[str, pa.Table], timings: dict | None) -> dict:
    covered = sorted(metas)
    first = metas[covered[0]]
    return {
        "store": str(Path(fs.root).resolve()) if fs.local else fs.describe(),
        "model": manifest["model"]["id"],
        "n_layers": manifest["model"]["n_layers"],
        "d_model": manifest["model"]["d_model"],
        "shards": {"total": len(manifest["shards"]), "committed": len(committed), "with_stats": len(covered),
                   "missing": [i for i in committed if i not in metas]},
        "n_tokens": int(sum(m["n_tokens"] for m in metas.values())),
        "n_sequences": int(sum(m["n_sequences"] for m in metas.values())),
        "n_excluded": int(sum(m.get("n_excluded", 0) for m in metas.values())),
        "families": {f: len(acc.shard_ids) for f, acc in merged.items()},
        "skipped": first.get("skipped", {}),
        # never silently replaced: where the decoding walk's context vectors came from
        "final_from": None if "decoding" not in merged else (
            "captured" if "final" in manifest.get("arrays", {}) or not manifest.get("arrays")
            else "final_norm(resid of the last block): the store has no final"),
        "routes": sorted({m.get("route", "unknown") for m in metas.values()}),
        "resid_layers": first["resid_layers"],
        "pattern_layers": first["pattern_layers"],
        "pattern_heads": first.get("pattern_heads"),
        "config": first["config"] | {"bins": "see the partials' metadata"},
        "tables": {name: t.num_rows for name, t in sorted(tables.items())},
        "headline": headline(tables),
        "timings": timings or {},
    }


def headline(tables: dict[str, pa.Table]) -> dict:
    """A few corpus-level figures worth seeing without opening the tables."""
    out: dict[str, Any] = {}

    def rows(name: str, stat: str) -> dict[str, list]:
        t = tables.get(name)
        if t is None:
            return {}
        d = t.to_pydict()
        keep = [i for i, s in enumerate(d["stat"]) if s == stat]
        return {k: [v[i] for i in keep] for k, v in d.items()}

    rank = rows("logit_lens", "rank")
    if rank.get("layer"):
        out["logit_lens_median_rank_by_layer"] = [_round(v) for v in rank["median"]]
    dec = tables.get("decoding_docs")
    if dec is not None and dec.num_rows:
        n = int(dec.column("n_pred").to_numpy().sum())
        lp = float(dec.column("logprob").to_numpy().sum())
        if n:
            out["decoding_mean_logprob"] = _round(lp / n)
            out["decoding_perplexity"] = _round(float(np.exp(-lp / n)))
    geo = tables.get("geometry")
    if geo is not None and geo.num_rows:
        out["anisotropy_by_layer"] = [_round(v) for v in geo.column("anisotropy").to_pylist()]
        out["eff_dim_by_layer"] = [_round(v) for v in geo.column("eff_dim").to_pylist()]
    att = tables.get("attention")
    if att is not None and att.num_rows:
        sink = att.column("sink_mass").to_numpy()
        bias = att.column("self_bias").to_numpy()
        out["attention_mean_sink_mass"] = _round(float(np.nanmean(sink)))
        out["attention_heads_negative_self_bias"] = int((bias < 0).sum())
        out["attention_heads"] = int(len(bias))
        # Gu et al. 2024 ("When attention sink emerges"): the share of heads whose mean weight on
        # the first token exceeds SINK_EPSILON; by layer, in the table's layer order
        layer = att.column("layer").to_numpy()
        sinks = sink > SINK_EPSILON
        out["attention_sink_rate"] = _round(float(sinks.mean()))
        out["attention_sink_rate_by_layer"] = [_round(float(sinks[layer == v].mean())) for v in np.unique(layer)]
    return out


def _round(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and not np.isfinite(v)) else round(float(v), 6)
