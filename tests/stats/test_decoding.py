"""Decoding walk against a float64 loop reference."""

import numpy as np
import torch

from embwalk.stats import DecodingWalk, StatsConfig

from .helpers import assert_rel, check_moments, np64, ref_decoding, rng, walk

D, V = 12, 40
STATS = ("cos_unembed", "dot_unembed", "rank", "prob", "logprob", "entropy", "nucleus",
         "cos_step")


def data(seed: int, lengths: list[int], first_doc: int = 0):
    """Several sequences in one batch; docs change inside the first sequence (packing)."""
    g = rng(seed)
    n = sum(lengths)
    final = walk(g, n, 2, D)[:, 1] * 0.5
    w = torch.tensor(g.normal(size=(V, D)), dtype=torch.float32)
    seq = torch.tensor(np.repeat(np.arange(len(lengths)), lengths))
    nxt = torch.tensor(g.integers(0, V, n))
    ends = np.cumsum(lengths) - 1
    nxt[ends] = -1
    docs = torch.tensor(first_doc + np.repeat(np.arange(len(lengths)), lengths) * 2)
    docs[: lengths[0] // 2] += 1
    return final, nxt, w, docs, seq


def test_decoding_matches_reference():
    final, nxt, w, docs, seq = data(0, [30, 17, 1, 9])
    acc = DecodingWalk(StatsConfig(chunk_tokens=8))
    acc.update(final, nxt, w, docs, seq)
    res = acc.result()
    ref, ref_docs = ref_decoding(np64(final), nxt.numpy(), np64(w), docs.numpy(), seq.numpy())
    for stat in STATS:
        check_moments(res["decoding"], stat, [ref[stat]], group=None)
    table = res["decoding_docs"].to_pydict()
    assert table["doc_id"] == sorted(ref_docs)
    assert table["n_pred"] == [len(ref_docs[k]) for k in sorted(ref_docs)]
    assert_rel(table["logprob"], [sum(ref_docs[k]) for k in sorted(ref_docs)], what="doc lp")
    assert_rel(table["perplexity"],
               [np.exp(-np.mean(ref_docs[k])) for k in sorted(ref_docs)], what="ppl")


def test_decoding_quartiles_dense():
    cfg = StatsConfig(bins={"cos": {"linear": [-1, 1, 100]}})
    final, nxt, w, docs, seq = data(1, [1200, 800])
    acc = DecodingWalk(cfg)
    acc.update(final, nxt, w, docs, seq)
    ref, _ = ref_decoding(np64(final), nxt.numpy(), np64(w), docs.numpy(), seq.numpy())
    kinds = {"cos_unembed": "cos", "dot_unembed": "dot", "cos_step": "cos"}
    for stat in STATS:
        check_moments(acc.result()["decoding"], stat, [ref[stat]], group=None,
                      bins=cfg.bins[kinds.get(stat, stat)].array)


def test_nucleus_size_other_p():
    final, nxt, w, docs, seq = data(2, [20])
    acc = DecodingWalk(StatsConfig(nucleus_p=0.5))
    acc.update(final, nxt, w, docs, seq)
    ref, _ = ref_decoding(np64(final), nxt.numpy(), np64(w), docs.numpy(), seq.numpy(), 0.5)
    check_moments(acc.result()["decoding"], "nucleus", [ref["nucleus"]], group=None)


def test_single_token_sequence():
    final, nxt, w, docs, seq = data(3, [1])
    acc = DecodingWalk()
    acc.update(final, nxt, w, docs)
    rows = acc.result()["decoding"].to_pydict()
    counts = dict(zip(rows["stat"], rows["count"], strict=True))
    assert counts["rank"] == 0 and counts["cos_step"] == 0 and counts["entropy"] == 1
    assert acc.result()["decoding_docs"].num_rows == 0
