"""The two-step route over a real (small) store against float64 numpy computed from the
stored arrays; reruns and duplicates never double count; document-mode sequences that run
across shards are counted once."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from embwalk.errors import EmbwalkError, StoreError
from embwalk.executors.config import ClusterConfig
from embwalk.stats import ShardOverlapError, StatsConfig
from embwalk.stats.config import StatsOptions
from embwalk.stats.decoding import nucleus_size
from embwalk.stats.encoding import _STATS as ENCODING_KINDS
from embwalk.stats.from_store import shard_stats
from embwalk.stats.job import compute_store_stats
from embwalk.stats.partials import merge_store_stats, shard_dir
from embwalk.store.reader import Store

from . import store_refs as R
from .helpers import assert_rel, assert_same_table, check_moments, summary_rows

QUIET = ClusterConfig(workers=1, progress=False)


def run(store, loaded, **opts) -> dict:
    return compute_store_stats(store, StatsOptions(self_sim_top_k=6, **opts), QUIET, loaded=loaded)


def tables(store) -> dict:
    return {p.stem: p for p in (store / "stats").glob("*.parquet")}


@pytest.mark.parametrize("fast", [False, True], ids=["float64-moments", "fast-moments"])
def test_every_statistic_matches_float64_numpy(pack_store, copy_store, tiny_llama, fast):
    store = copy_store(pack_store)
    summary = run(store, tiny_llama, fast_moments=fast)
    assert summary["shards"]["with_stats"] == len(Store(store).committed) >= 3
    assert set(summary["families"]) == {"encoding", "logit_lens", "decoding", "attention", "geometry"}
    d = R.load(store)
    assert summary["n_tokens"] == len(d["tok"])
    t = lambda name: R.stats_table(store, name)  # noqa: E731
    cfg = StatsConfig()
    for stat, ref in R.encoding(d).items():
        check_moments(t("encoding"), stat, ref, bins=cfg.bins[ENCODING_KINDS[stat][0]].array)
    model = tiny_llama.model
    w = model.lm_head.weight.double().numpy()
    norm_w = model.model.norm.weight.double().numpy()
    for stat, ref in R.lens(d, w, norm_w, model.config.rms_norm_eps).items():
        check_moments(t("logit_lens"), stat, ref)
    dec, docs = R.decoding(d, w)
    for stat, ref in dec.items():
        check_moments(t("decoding"), stat, [ref], group=None)
    got_docs = t("decoding_docs").to_pydict()
    assert sorted(got_docs["doc_id"]) == sorted(docs)
    assert_rel([got_docs["logprob"][got_docs["doc_id"].index(k)] for k in sorted(docs)],
               [docs[k] for k in sorted(docs)], what="doc logprob")
    att = R.attention(d, True, list(range(tiny_llama.n_layers)))
    a = t("attention").to_pydict()
    shape = att["self_weight"].shape
    for col in ("self_weight", "sink_mass", "entropy", "assoc_corr"):
        assert_rel(np.reshape(a[col], shape), att[col], what=col)
    assert_rel(a["uniform_baseline"], np.full(len(a["layer"]), att["uniform_baseline"]), what="baseline")
    k = t("attention_kernel").to_pydict()
    got_k = {(lay, h, o): v for lay, h, o, v in zip(k["layer"], k["head"], k["offset"], k["mean_weight"],
                                                   strict=True)}
    assert got_k.keys() == att["kernel"].keys()
    assert_rel([got_k[key] for key in att["kernel"]], list(att["kernel"].values()), what="kernel")
    types = tuple(json.loads((store / "stats/summary.json").read_text())["config"]["self_sim_types"])
    assert len(types) == 6
    ref, _, spectra = R.geometry(d, types)
    g = t("geometry").to_pydict()
    for col, want in ref.items():
        assert_rel(g[col], want, what=col)


def test_document_mode_sequences_across_shards_count_once(doc_store, copy_store, tiny_llama):
    store = copy_store(doc_store)
    manifest = Store(store).manifest
    straddling = [s for s in manifest["shards"] if s["seqs"][0] < s["pattern_seqs"][0]]
    assert straddling, "the fixture must have sequences that run across shard boundaries"
    summary = run(store, tiny_llama, families=["encoding", "attention", "decoding"])
    d = R.load(store)
    assert summary["n_tokens"] == len(d["tok"]) and summary["n_sequences"] == manifest["n_sequences"]
    for stat, ref in R.encoding(d).items():
        check_moments(R.stats_table(store, "encoding"), stat, ref)
    dec, _ = R.decoding(d, tiny_llama.model.lm_head.weight.double().numpy())
    for stat in ("cos_step", "rank", "entropy"):
        check_moments(R.stats_table(store, "decoding"), stat, [dec[stat]], group=None)
    att = R.attention(d, True, list(range(tiny_llama.n_layers)))
    a = R.stats_table(store, "attention").to_pydict()
    assert_rel(np.reshape(a["assoc_corr"], att["assoc_corr"].shape), att["assoc_corr"], what="assoc")


def test_a_rerun_replaces_a_shard_and_never_double_counts(pack_store, copy_store, tiny_llama):
    store = copy_store(pack_store)
    run(store, tiny_llama)
    before = {name: R.stats_table(store, name) for name in tables(store)}
    config = StatsOptions(self_sim_top_k=6).stats_config(R.load(store)["tok"])
    from embwalk.stats.job import model_head

    shard_stats(store, 1, config, model_head(Store(store), tiny_llama))  # rerun one shard
    merge_store_stats(store)
    for name, table in before.items():
        assert_same_table(table, R.stats_table(store, name), name)
    # resume: nothing left to compute
    assert run(store, tiny_llama)["timings"]["shards"] == 0


def test_a_partial_copied_into_another_shard_is_refused(pack_store, copy_store, tiny_llama):
    store = copy_store(pack_store)
    run(store, tiny_llama, families=["encoding"])
    shutil.copy(shard_dir(store, 0) / "encoding.parquet", shard_dir(store, 1) / "encoding.parquet")
    with pytest.raises(ShardOverlapError):
        merge_store_stats(store)


def test_uncommitted_shards_are_left_out(pack_store, copy_store, tiny_llama):
    store = copy_store(pack_store)
    (store / "tokens" / "shard-00002.parquet").unlink()  # its token table is its commit
    summary = run(store, tiny_llama, families=["encoding"])
    assert summary["shards"] == {"total": 3, "committed": 2, "with_stats": 2, "missing": []}
    rows = Store(store).committed_rows().sum()
    assert summary_rows(R.stats_table(store, "encoding"), "norm")["count"][0] == rows


def test_a_different_model_is_refused(pack_store, copy_store, smollm2):
    from tests.conftest import tiny_loaded

    with pytest.raises(StoreError, match="does not match"):
        run(copy_store(pack_store), tiny_loaded("gpt2", smollm2.tokenizer), families=["encoding"])


def test_process_pool_equals_one_process(pack_store, copy_store, tiny_llama, tmp_path):
    one = copy_store(pack_store)
    run(one, tiny_llama, families=["encoding", "geometry", "attention"])
    two = tmp_path / "two"
    shutil.copytree(pack_store, two)
    compute_store_stats(two, StatsOptions(self_sim_top_k=6, families=["encoding", "geometry", "attention"]),
                        ClusterConfig(workers=2, threads=1, progress=False), loaded=tiny_llama)
    for name in ("encoding", "geometry", "attention"):
        assert_same_table(R.stats_table(one, name), R.stats_table(two, name), name)


def test_nucleus_from_topk_equals_full_sort():
    g = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.1, 1.0, 4.0, 12.0]).repeat_interleave(8)[:, None]  # flat .. peaked rows
    logp = torch.log_softmax(torch.randn(32, 5000, generator=g) * scale, -1)
    probs = logp.exp().sort(dim=-1, descending=True).values
    want = ((probs.cumsum(-1) - probs) < 0.9).sum(-1).clamp(1, 5000)
    for first_k in (1, 16, 256, 5000):
        assert torch.equal(nucleus_size(logp, 0.9, first_k), want)


def test_an_extraction_store_skips_the_generation_family_unless_asked(pack_store, copy_store, tiny_llama):
    store = copy_store(pack_store)
    summary = compute_store_stats(store, StatsOptions(self_sim_top_k=4), QUIET, loaded=tiny_llama)
    assert "generation" not in summary["families"] and "generation" not in summary["skipped"]
    before = sorted(p.name for p in (store / "stats" / "partials").rglob("*"))
    with pytest.raises(EmbwalkError, match="stats.families cannot compute generation: needs a generation store"):
        compute_store_stats(store, StatsOptions(families=["encoding", "generation"]), QUIET, loaded=tiny_llama)
    assert sorted(p.name for p in (store / "stats" / "partials").rglob("*")) == before  # nothing written
