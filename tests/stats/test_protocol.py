"""The accumulator protocol for every family: streaming == merging == one pass,
overlapping shards refused, and partials round-trip through Arrow/Parquet."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from embwalk.stats import (
    Accumulator,
    AttentionStats,
    DecodingWalk,
    EncodingWalk,
    Geometry,
    LogitLens,
    ShardOverlapError,
    StatsConfig,
    StatsMergeError,
    build_accumulators,
    merge_all,
    read_partial,
    write_partial,
)

from .helpers import causal_attention, np64, rng, walk
from .test_attention import check as check_attention

D, V, L1 = 8, 30, 4
CFG = StatsConfig(self_sim_types=(0, 1, 2), chunk_tokens=7)
G = rng(42)
W = torch.tensor(G.normal(size=(V, D)), dtype=torch.float32)
NORM_W = torch.tensor(1 + 0.1 * G.normal(size=D), dtype=torch.float32)


def norm(x):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * NORM_W


def token_batch(seed: int, lengths: list[int], first_seq: int, docs: list[int]) -> dict:
    g = rng(seed)
    n = sum(lengths)
    nxt = torch.tensor(g.integers(0, V, n))
    nxt[np.cumsum(lengths) - 1] = -1
    return {
        "resid": walk(g, n, L1, D),
        "next": nxt,
        "tok": torch.tensor(g.integers(0, 4, n)),
        "seq": torch.tensor(first_seq + np.repeat(np.arange(len(lengths)), lengths)),
        "doc": torch.tensor(np.repeat(docs, lengths)),
    }


# Batch B continues document 5 of batch A (a document split across shards).
A = token_batch(1, [11, 6], 0, [4, 5])
B = token_batch(2, [9, 1, 4], 2, [5, 6, 7])
UNION = {k: torch.cat([A[k], B[k]]) for k in A}
ATT_A = [(causal_attention(rng(3), np64(x), 2, True), x)
         for x in [walk(rng(4), 9, 2, D).transpose(0, 1).contiguous()]]
ATT_B = [(causal_attention(rng(5), np64(x), 2, True), x)
         for x in [walk(rng(6), 5, 2, D).transpose(0, 1).contiguous(),
                   walk(rng(7), 12, 2, D).transpose(0, 1).contiguous()]]


def feed(acc: Accumulator, batch) -> Accumulator:
    if isinstance(acc, EncodingWalk):
        acc.update(batch["resid"])
    elif isinstance(acc, LogitLens):
        acc.update(batch["resid"], batch["next"], W, norm)
    elif isinstance(acc, DecodingWalk):
        acc.update(norm(batch["resid"][:, -1]), batch["next"], W, batch["doc"], batch["seq"])
    elif isinstance(acc, Geometry):
        acc.update(batch["resid"], batch["tok"], batch["seq"])
    else:
        for pattern, x in batch:
            acc.update(pattern, True, x)
    return acc


def batches(cls):
    return (ATT_A, ATT_B, ATT_A + ATT_B) if cls is AttentionStats else (A, B, UNION)


FAMILIES = [EncodingWalk, LogitLens, DecodingWalk, AttentionStats, Geometry]


def assert_results_equal(r1: dict, r2: dict, rtol: float = 1e-12) -> None:
    assert r1.keys() == r2.keys()
    for name in r1:
        t1, t2 = r1[name], r2[name]
        assert t1.schema == t2.schema and t1.num_rows == t2.num_rows, name
        for col in t1.column_names:
            a, b = t1[col].to_numpy(zero_copy_only=False), t2[col].to_numpy(zero_copy_only=False)
            if pa.types.is_floating(t1.schema.field(col).type):
                np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-15, err_msg=f"{name}.{col}")
            else:
                assert (a == b).all(), f"{name}.{col}"


@pytest.mark.parametrize("cls", FAMILIES)
def test_streaming_equals_merging_equals_one_pass(cls):
    ba, bb, union = batches(cls)
    streamed = feed(feed(cls(CFG, ["s0"]), ba), bb)
    merged = feed(cls(CFG, ["s0"]), ba).merge(feed(cls(CFG, ["s1"]), bb))
    reverse = feed(cls(CFG, ["s1"]), bb).merge(feed(cls(CFG, ["s0"]), ba))
    assert merged.shard_ids == reverse.shard_ids == {"s0", "s1"}
    assert_results_equal(streamed.result(), merged.result())
    assert_results_equal(streamed.result(), reverse.result())
    if cls is AttentionStats:  # a sequence per call: one pass = the pooled reference
        check_attention(merged, union, causal=True)
    else:
        # Same float64 sums, but the float32 per-token values of a differently shaped
        # batch may differ in the last bit (BLAS blocking), hence float32-level rtol.
        assert_results_equal(feed(cls(CFG), union).result(), merged.result(), rtol=1e-6)


def test_document_split_across_partials_is_summed():
    merged = feed(DecodingWalk(CFG, "a"), A).merge(feed(DecodingWalk(CFG, "b"), B))
    one = feed(DecodingWalk(CFG), UNION).result()["decoding_docs"].to_pydict()
    docs = merged.result()["decoding_docs"].to_pydict()
    # doc 6 is a lone token with no next token: no prediction, no row
    assert docs["doc_id"] == [4, 5, 7] and docs["n_pred"] == one["n_pred"]
    assert docs["n_pred"][1] == 5 + 8  # doc 5: tail of A's second sequence + B's first


@pytest.mark.parametrize("cls", FAMILIES)
def test_overlapping_shards_are_refused(cls):
    ba, bb, _ = batches(cls)
    a = feed(cls(CFG, ["s0", "s1"]), ba)
    before = {k: v.copy() for k, v in a.export_state().items()}
    with pytest.raises(ShardOverlapError) as err:
        a.merge(feed(cls(CFG, ["s1", "s2"]), bb))
    assert isinstance(err.value, ValueError) and "s1" in str(err.value)
    assert a.shard_ids == {"s0", "s1"}
    assert all(np.array_equal(before[k], v) for k, v in a.export_state().items())
    # a partial read back from Parquet still knows its shards
    again = Accumulator.from_arrow(a.to_arrow())
    with pytest.raises(ValueError):
        again.merge(a)
    with pytest.raises(ValueError):
        a.merge(a)


def test_incompatible_partials_are_refused():
    a = feed(EncodingWalk(CFG, "a"), A)
    with pytest.raises(StatsMergeError):
        a.merge(feed(LogitLens(CFG, "b"), A))
    # same number of bins on another range: only the config tells them apart
    other_bins = StatsConfig(bins={"cos": {"linear": [-2, 2, 200]}}, self_sim_types=(0, 1, 2))
    with pytest.raises(StatsMergeError):
        a.merge(feed(EncodingWalk(other_bins, "b"), A))
    with pytest.raises(StatsMergeError):
        a.merge(feed(EncodingWalk(CFG, "c"), {"resid": A["resid"][:, :3]}))
    # execution-only settings (chunking, families) do not block a merge
    a.merge(feed(EncodingWalk(StatsConfig(self_sim_types=(0, 1, 2), chunk_tokens=3), "d"), B))


@pytest.mark.parametrize("cls", FAMILIES)
def test_round_trip_through_arrow_and_parquet(cls, tmp_path):
    ba, bb, _ = batches(cls)
    acc = feed(feed(cls(CFG, ["s3", "s4"]), ba), bb)
    table = acc.to_arrow()
    back = cls.from_arrow(table)
    assert type(back) is cls and back.shard_ids == {"s3", "s4"} and back.config == CFG
    mine, theirs = acc.export_state(), back.export_state()
    assert mine.keys() == theirs.keys()
    for k in mine:
        assert mine[k].dtype == theirs[k].dtype and np.array_equal(mine[k], theirs[k]), k
    assert_results_equal(acc.result(), back.result())
    path = tmp_path / f"{cls.family}.parquet"
    write_partial(acc, path)
    loaded = read_partial(path)
    assert type(loaded) is cls
    assert_results_equal(acc.result(), loaded.result())
    # a round-tripped partial keeps streaming and merging
    assert_results_equal(feed(loaded, ba).result(), feed(acc, ba).result())
    other = next(c for c in FAMILIES if c is not cls)
    with pytest.raises(StatsMergeError):
        other.from_arrow(table)


@pytest.mark.parametrize("cls", FAMILIES)
def test_empty_partials(cls):
    empty = cls(CFG, "e")
    back = Accumulator.from_arrow(empty.to_arrow())
    assert back.empty and back.shard_ids == {"e"}
    for t in empty.result().values():
        assert isinstance(t, pa.Table) and t.num_rows == 0
    ba, _, _ = batches(cls)
    full = feed(cls(CFG, "f"), ba)
    assert_results_equal(back.merge(full).result(), feed(cls(CFG), ba).result(), rtol=1e-6)


def test_merge_all_and_build():
    parts = [feed(EncodingWalk(CFG, f"s{i}"), b) for i, b in enumerate((A, B))]
    before = parts[0].export_state()["norm.count"].copy()
    total = merge_all(parts)
    assert total.shard_ids == {"s0", "s1"}
    assert np.array_equal(parts[0].export_state()["norm.count"], before)
    assert_results_equal(total.result(), feed(EncodingWalk(CFG), UNION).result(), rtol=1e-6)
    accs = build_accumulators(StatsConfig(families=("encoding", "geometry")), "shard-7")
    assert set(accs) == {"encoding", "geometry"}
    assert all(a.shard_ids == {"shard-7"} for a in accs.values())


def test_result_schemas_are_tidy():
    accs = {c.family: feed(c(CFG), batches(c)[0]) for c in FAMILIES}
    names = {f: sorted(a.result()) for f, a in accs.items()}
    assert names == {
        "encoding": ["encoding", "encoding_hist"],
        "logit_lens": ["logit_lens", "logit_lens_hist"],
        "decoding": ["decoding", "decoding_docs", "decoding_hist"],
        "attention": ["attention", "attention_kernel"],
        "geometry": ["geometry", "geometry_self_sim", "geometry_spectrum"],
    }
    summary = accs["encoding"].result()["encoding"].schema
    assert summary.names == ["stat", "layer", "count", "mean", "std", "q25", "median", "q75"]
    assert accs["decoding"].result()["decoding_hist"].schema.names == [
        "stat", "bin", "lo", "hi", "count"]
    assert accs["attention"].result()["attention_kernel"].schema.names == [
        "layer", "head", "offset", "count", "mean_weight", "uniform_weight", "ratio_to_uniform"]
    for t in accs["geometry"].result().values():
        assert t.num_rows > 0 and "layer" in t.column_names
    assert torch.get_default_dtype() == torch.float32
