"""Controls: positions and massive-activation tokens left out of every family, the same way
in each (stats.exclude_positions, stats.exclude_massive), against float64 references on the
kept tokens; a variant statistics directory (stats.out) beside the default one."""

from __future__ import annotations

import json

import numpy as np
import torch

from embwalk.executors.config import ClusterConfig
from embwalk.stats import StatsConfig
from embwalk.stats.config import StatsOptions
from embwalk.stats.head import ModelHead
from embwalk.stats.job import compute_store_stats
from embwalk.stats.ops import MASSIVE_RATIO
from embwalk.stats.walk import WalkStats

from . import store_refs as R
from .helpers import assert_rel, assert_same_table, check_moments

QUIET = ClusterConfig(workers=1, progress=False)
EXCLUDED = [0, 3]


def test_excluded_positions_leave_every_family_and_a_variant_directory_keeps_both(
        pack_store, copy_store, tiny_llama):
    store = copy_store(pack_store)
    plain = compute_store_stats(store, StatsOptions(self_sim_top_k=6), QUIET, loaded=tiny_llama)
    before = {p.name: p.read_bytes() for p in (store / "stats").glob("*.parquet")}
    out = "stats-nopos"
    summary = compute_store_stats(store, StatsOptions(self_sim_top_k=6, exclude_positions=EXCLUDED, out=out),
                                  QUIET, loaded=tiny_llama)
    # the default directory is untouched; the variant records what it left out
    assert {p.name: p.read_bytes() for p in (store / "stats").glob("*.parquet")} == before
    assert json.loads((store / out / "summary.json").read_text())["config"]["exclude_positions"] == EXCLUDED
    d = R.load(store)
    keep = ~np.isin(R.positions(d), EXCLUDED)
    assert summary["n_excluded"] == int((~keep).sum()) > 0
    assert summary["n_tokens"] == plain["n_tokens"] == len(keep)
    kept = R.subset(d, keep)
    t = lambda name: R.stats_table(store, name, out)  # noqa: E731
    for stat, ref in R.encoding(kept).items():
        check_moments(t("encoding"), stat, ref)
    model = tiny_llama.model
    w = model.lm_head.weight.double().numpy()
    for stat, ref in R.lens(kept, w, model.model.norm.weight.double().numpy(), model.config.rms_norm_eps).items():
        check_moments(t("logit_lens"), stat, ref)
    dec, docs = R.decoding(d, w, keep=keep)
    for stat, ref in dec.items():
        check_moments(t("decoding"), stat, [ref], group=None)
    got_docs = t("decoding_docs").to_pydict()
    assert_rel([got_docs["logprob"][got_docs["doc_id"].index(k)] for k in sorted(docs)],
               [docs[k] for k in sorted(docs)], what="doc logprob")
    att = R.attention(d, True, list(range(tiny_llama.n_layers)), keep=keep)
    a = t("attention").to_pydict()
    for col in ("self_weight", "sink_mass", "entropy", "assoc_corr"):
        assert_rel(np.reshape(a[col], att[col].shape), att[col], what=col)
    k = t("attention_kernel").to_pydict()
    got_k = {(lay, h, o): v for lay, h, o, v in zip(k["layer"], k["head"], k["offset"], k["mean_weight"],
                                                   strict=True)}
    assert got_k.keys() == att["kernel"].keys()
    assert_rel([got_k[key] for key in att["kernel"]], list(att["kernel"].values()), what="kernel")
    types = tuple(summary["config"]["self_sim_types"])
    ref, _, _ = R.geometry(kept, types)
    g = t("geometry").to_pydict()
    for col, want in ref.items():
        assert_rel(g[col], want, what=col)


def massive_sequence(seed: int, n: int = 20, layers: int = 4, d: int = 32) -> tuple[torch.Tensor, list[int]]:
    """Residual vectors of norm ~6, and at a few positions one coordinate 1000x the rest
    (at one layer only, as massive activations appear after the first blocks)."""
    g = torch.Generator().manual_seed(seed)
    resid = torch.randn(n, layers, d, generator=g)
    massive = [0, 7, 13]
    for i, p in enumerate(massive):
        resid[p, 1 + i % (layers - 1), 5] = 1000.0 * resid[p].abs().median()
    return resid, massive


def test_massive_tokens_are_left_out_like_the_positions_they_sit_at():
    head = ModelHead(n_layers=3, d_model=32, causal=True)
    families = ("encoding", "geometry")
    resid, massive = massive_sequence(0)
    mag = resid.double().abs()
    assert (mag.amax(-1) > MASSIVE_RATIO * mag.median(-1).values).any(1).nonzero().ravel().tolist() == massive
    tok = torch.arange(resid.shape[0]) % 5
    docs = torch.zeros(resid.shape[0], dtype=torch.long)
    by_rule = WalkStats(StatsConfig(families=families, exclude_massive=True), head, "shard-000000")
    by_position = WalkStats(StatsConfig(families=families, exclude_positions=massive), head, "shard-000000")
    for ws in (by_rule, by_position):
        ws.update_sequence(resid, None, tok, docs)
    assert by_rule.n_excluded == by_position.n_excluded == len(massive)
    for family in families:
        for name, table in by_rule.accumulators[family].result().items():
            assert_same_table(table, by_position.accumulators[family].result()[name], what=name)
    # ... and nothing was left out without them
    everything = WalkStats(StatsConfig(families=families), head, "shard-000000")
    everything.update_sequence(resid, None, tok, docs)
    n = everything.accumulators["encoding"].result()["encoding"].to_pydict()["count"][0]
    assert n == resid.shape[0] == by_rule.accumulators["encoding"].result()["encoding"]["count"][0].as_py() + 3


def test_the_summary_says_when_decoding_read_a_final_derived_from_resid(tmp_path, tiny_llama):
    """Nothing silently replaced: a store without final has its decoding walk computed from
    final_norm(resid of the last block), and summary.json says so."""
    from .stores import build_store

    store = build_store(tmp_path, tiny_llama, sites=["resid_pre.0", "resid_post"])
    summary = compute_store_stats(store, StatsOptions(families=["decoding"]), QUIET, loaded=tiny_llama)
    assert summary["final_from"].startswith("final_norm(resid of the last block)")
    summary = compute_store_stats(store, StatsOptions(families=["encoding"]), QUIET, loaded=tiny_llama)
    assert summary["final_from"] is None


def test_the_massive_ratio_decides_what_counts_as_massive():
    """stats.massive_ratio moves the threshold for the exclusion and the geometry counts alike:
    the test's activations are 1000x the median, so a ratio of 2000 finds none."""
    head = ModelHead(n_layers=3, d_model=32, causal=True)
    resid, massive = massive_sequence(1)
    tok, docs = torch.arange(resid.shape[0]) % 5, torch.zeros(resid.shape[0], dtype=torch.long)
    for ratio, found in ((100.0, len(massive)), (2000.0, 0)):
        ws = WalkStats(StatsConfig(families=("geometry",), exclude_massive=True, massive_ratio=ratio),
                       head, "shard-000000")
        ws.update_sequence(resid, None, tok, docs)
        assert ws.n_excluded == found
        everything = WalkStats(StatsConfig(families=("geometry",), massive_ratio=ratio), head, "shard-000000")
        everything.update_sequence(resid, None, tok, docs)
        geo = everything.accumulators["geometry"].result()["geometry"].to_pydict()
        assert sum(geo["massive_tokens"]) == found
