"""In-pass statistics equal the two-step route on the same corpus.

The extraction runs with ``capture.stats`` set: every sequence whose first token is in
the shard goes through ``WalkStats.update_sequence`` straight from the capture buffers
(already in the store dtype), and the shard's partials are written before its commit.
The two-step route then recomputes every shard from the stored arrays.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from embwalk.errors import EmbwalkError
from embwalk.executors.config import ClusterConfig
from embwalk.stats.config import StatsOptions
from embwalk.stats.from_store import has_activations
from embwalk.stats.job import compute_store_stats
from embwalk.stats.partials import read_shard_meta
from embwalk.store.reader import Store

from .helpers import assert_same_tables
from .stores import build_store, tiny


def read_tables(root) -> dict:
    return {p.stem: pq.read_table(p) for p in sorted((root / "stats").glob("*.parquet"))}


@pytest.mark.parametrize("fast, extra", [(False, {}), (True, {}),
                                         (False, {"exclude_positions": [0, 2], "exclude_massive": True})],
                         ids=["float64-moments", "fast-moments", "exclusions"])
def test_in_pass_equals_two_step(tmp_path, smollm2, monkeypatch, fast, extra):
    loaded = tiny("llama", smollm2.tokenizer)
    stats = {"self_sim_top_k": 6, "fast_moments": fast, "resume": False, **extra}
    opts = StatsOptions(**stats)
    # one torch thread in both routes (the stats job's default): a float32 reduction split
    # over another number of threads rounds differently in the last bit
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = build_store(tmp_path, loaded, stats=stats)
    finally:
        torch.set_num_threads(threads)
    n_shards = len(Store(store).committed)
    assert n_shards >= 3 and has_activations(Store(store))
    assert all(read_shard_meta(store, i)["route"] == "in-pass" for i in range(n_shards))
    in_pass = read_tables(store)  # merged by the extraction itself
    compute_store_stats(store, opts, ClusterConfig(workers=1, progress=False), loaded=loaded)
    assert all(read_shard_meta(store, i)["route"] == "two-step" for i in range(n_shards))
    two_step = read_tables(store)
    assert in_pass.keys() == two_step.keys() and len(in_pass) >= 12
    for name, a in in_pass.items():
        b = two_step[name]
        assert a.schema == b.schema and a.num_rows == b.num_rows, name
        rtol = 1e-6 if fast and name.startswith("geometry") else 1e-9
        for col in a.column_names:
            x, y = a[col].to_numpy(zero_copy_only=False), b[col].to_numpy(zero_copy_only=False)
            if x.dtype.kind == "f":
                np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-12, err_msg=f"{name}.{col}")
            else:
                assert (x == y).all(), f"{name}.{col}"  # counts and histograms: exactly equal


def test_stats_only_stores_no_arrays_and_the_same_statistics(tmp_path, smollm2):
    loaded = tiny("llama", smollm2.tokenizer)
    stats = {"self_sim_top_k": 6, "resume": False}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with_arrays = build_store(tmp_path / "a", loaded, stats=stats)
        stats_only = build_store(tmp_path / "b", loaded, stats=stats, store_arrays=False)
    finally:
        torch.set_num_threads(threads)
    assert not (stats_only / "activations.zarr").exists() and not (stats_only / "attention.zarr").exists()
    assert Store(stats_only).manifest["arrays"] == {} and not has_activations(Store(stats_only))
    assert len(Store(stats_only).tokens()) == Store(stats_only).manifest["n_tokens"]
    a, b = read_tables(with_arrays), read_tables(stats_only)
    assert a.keys() == b.keys() and len(a) >= 12
    for name in a:
        assert a[name].equals(b[name]), name


@pytest.mark.parametrize(
    "sites, stats, fragments",
    [
        (["resid_pre.0", "resid_post"], {"families": ["encoding", "attention"]},
         ["attention needs attention patterns", "add attn_pattern to capture.sites"]),
        (["resid_pre.0", "resid_post"], {"families": ["decoding"]},
         ["decoding needs final", "add final to capture.sites"]),
        (["resid_post.1"], {"families": ["encoding"]}, ["encoding needs resid with >= 2 layers"]),
        (["final"], {"families": ["decoding"], "exclude_massive": True},
         ["exclude_massive needs resid", "add resid_pre.0, resid_post to capture.sites"]),
    ],
    ids=["attention-without-patterns", "decoding-without-final", "encoding-one-layer", "massive-without-resid"],
)
def test_a_family_the_capture_cannot_feed_is_refused_before_any_work(tmp_path, smollm2, sites, stats, fragments):
    loaded = tiny("llama", smollm2.tokenizer)
    with pytest.raises(EmbwalkError) as info:
        build_store(tmp_path, loaded, sites=sites, stats=stats, store_arrays=False)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    assert not list(tmp_path.rglob("commits/*")) and not list(tmp_path.rglob("tokens/*.parquet"))


# ---- a T5 decoder store (docs/seq2seq.md): input-target pairs, teacher-forced ----------------------

DEC_SITES = ["dec.resid_pre", "dec.resid_post", "dec.final", "dec.attn_pattern"]


def decoder_job(tmp_path, sites=DEC_SITES, stats=None):
    """A T5 decoder store's job over tests/extraction/test_t5_decoder.py's pairs, float16 like a
    default store (the in-pass route rounds its captures to it), several shards."""
    from tests.extraction.test_t5_decoder import decoder_config, pairs_file

    cfg = decoder_config(tmp_path, pairs_file(tmp_path), sites=sites, shard_tokens=24)
    cfg.store.dtype = "float16"
    cfg.capture.stats = None if stats is None else StatsOptions(**stats)
    return cfg


@pytest.mark.parametrize("extra", [{}, {"exclude_positions": [0, 2], "exclude_massive": True}],
                         ids=["default-families", "exclusions"])
def test_in_pass_equals_two_step_on_a_decoder_store(tmp_path, extra):
    from embwalk.executors.local import extract_local

    stats = {"self_sim_top_k": 6, "resume": False, **extra}
    opts = StatsOptions(**stats)
    cfg = decoder_job(tmp_path, stats=stats)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one torch thread in both routes, as above
    try:
        manifest = extract_local(cfg)
    finally:
        torch.set_num_threads(threads)
    store = tmp_path / "store"
    assert manifest["model"]["stack"] == "dec" and manifest["causal"]
    n_shards = len(Store(store).committed)
    assert n_shards >= 3 and has_activations(Store(store))
    # the defaults of a causal model with an LM head and a learned position bias, all in the pass
    families = ["attention", "bias_share", "decoding", "encoding", "geometry", "logit_lens"]
    for i in range(n_shards):
        meta = read_shard_meta(store, i)
        assert meta["route"] == "in-pass" and meta["families"] == families and meta["skipped"] == {}
    in_pass = read_tables(store)
    summary = compute_store_stats(store, opts, ClusterConfig(workers=1, progress=False))  # loads model.name
    assert all(read_shard_meta(store, i)["route"] == "two-step" for i in range(n_shards))
    assert sorted(summary["families"]) == families and not summary["skipped"]
    two_step = read_tables(store)
    # the tables of the model's weights (position_kernel) come from embwalk stats only: the in-pass
    # merge has no weights at hand (tests/stats/test_position_kernel.py)
    assert two_step.keys() - in_pass.keys() == set(summary["model_tables"]) == {"position_kernel"}
    assert in_pass.keys() <= two_step.keys() and len(in_pass) >= 12
    assert_same_tables(in_pass, two_step)
    if not extra:  # bias_share is the decoder's causal self-attention: n(n+1)/2 query-key pairs a pair
        n = Store(store).tokens().to_pandas().groupby("seq_id").size().to_numpy()
        pairs = in_pass["bias_share"].column("pairs").to_numpy()
        assert (pairs == (n * (n + 1) // 2).sum()).all() and (pairs != (n * n).sum()).all()


@pytest.mark.parametrize(
    "sites, stats, fragment",
    [
        (["dec.resid_pre", "dec.resid_post", "dec.final"], {"families": ["attention"]},
         "attention needs attention patterns"),
        (["dec.resid_pre", "dec.resid_post", "dec.attn_pattern"], {"families": ["decoding"]}, "decoding needs final"),
        (["dec.resid_post.2", "dec.final"], {"families": ["bias_share"]}, "bias_share needs resid at a layer's input"),
        (["dec.final"], {"families": ["decoding"], "exclude_massive": True}, "exclude_massive needs resid"),
        (DEC_SITES, {"families": ["generation"]}, "generation needs a generation store"),
    ],
    ids=["attention-without-patterns", "decoding-without-final", "bias-share-without-layer-input",
         "massive-without-resid", "generation"],
)
def test_a_decoder_store_refuses_in_one_line_before_any_work_what_its_capture_cannot_feed(
        tmp_path, sites, stats, fragment):
    from embwalk.executors.local import extract_local

    with pytest.raises(EmbwalkError) as info:
        extract_local(decoder_job(tmp_path, sites=sites, stats=stats))
    message = str(info.value)
    assert message.startswith("capture.stats cannot compute") and fragment in message, message
    assert "\n" not in message and not (tmp_path / "store").exists()


def test_the_refusal_names_the_sites_of_the_store_s_stack():
    """check_capture on a decoder store's layout: the sites to add carry the dec. prefix (a plain
    attn_pattern is an encoder site, which would make the job a two-stack store)."""
    from embwalk.models.capture import CaptureLayout
    from embwalk.stats.inpass import check_capture

    layout = CaptureLayout(residual=(3,))  # dec.resid_post.2 alone
    with pytest.raises(EmbwalkError) as info:
        check_capture(["attention", "decoding", "bias_share"], layout, 3, True, exclude_massive=False,
                      position_bias=True, stack="dec")
    message = str(info.value)
    assert "attention needs attention patterns: add dec.attn_pattern to capture.sites" in message
    assert "decoding needs final: add dec.final to capture.sites" in message
    assert "bias_share needs resid at a layer's input (dec.resid_pre.L)" in message
    with pytest.raises(EmbwalkError, match="exclude_massive needs resid: add dec.resid_pre.0, dec.resid_post to"):
        check_capture(["decoding"], CaptureLayout(final=True), 3, True, exclude_massive=True, stack="dec")
    with pytest.raises(EmbwalkError, match="add attn_pattern to capture.sites"):  # one stack: plain names
        check_capture(["attention"], layout, 3, True)


def test_a_decoder_job_is_told_to_add_decoder_sites(tmp_path):
    from embwalk.executors.local import extract_local

    cfg = decoder_job(tmp_path, sites=["dec.resid_pre", "dec.resid_post", "dec.final"],
                      stats={"families": ["attention"]})
    with pytest.raises(EmbwalkError, match="add dec.attn_pattern to capture.sites"):
        extract_local(cfg)


def test_default_families_a_decoder_capture_cannot_feed_are_left_out(tmp_path):
    from embwalk.executors.local import extract_local

    extract_local(decoder_job(tmp_path, sites=["dec.resid_pre", "dec.resid_post", "dec.final"], stats={}))
    meta = read_shard_meta(tmp_path / "store", 0)
    assert meta["families"] == ["bias_share", "decoding", "encoding", "geometry", "logit_lens"]  # no attention


def test_default_families_a_decoder_capture_cannot_feed_are_skipped_with_the_reason(tmp_path):
    from embwalk.executors.local import extract_local
    from embwalk.stats.partials import read_summary

    extract_local(decoder_job(tmp_path, sites=["dec.resid_pre", "dec.resid_post", "dec.final"], stats={}))
    assert "needs attention patterns" in read_summary(tmp_path / "store")["skipped"].get("attention", "")
