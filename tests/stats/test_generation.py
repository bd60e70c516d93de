"""Generated walks (GenerationWalk) against float64 / pure-Python loop references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from embwalk.stats import StatsConfig
from embwalk.stats.base import (
    ACCUMULATORS,
    Accumulator,
    ShardOverlapError,
    StatsMergeError,
    read_partial,
    write_partial,
)
from embwalk.stats.generation import (
    FAMILY,
    MAX_PERIOD,
    MIN_PERIODS,
    NGRAM_SIZES,
    RECENT,
    GenerationWalk,
)
from embwalk.stats.head import ModelHead
from embwalk.stats.inputs import SequenceInputs

from .helpers import assert_same_table, check_moments, rng, summary_rows

V, D, LAYERS = 50, 16, 4
ATOL = 2e-6  # float32 cosines of vectors whose norms span 1e-3..1e4: ~1e-7 each
REC = ("prob", "entropy", "sample_prob", "rank")


# ---- data --------------------------------------------------------------------------


def head(seed: int = 0):
    """Token vectors with norms over three orders of magnitude, one of them zero; a bias."""
    g = rng(seed)
    w = g.normal(size=(V, D)) * 10 ** g.uniform(-1.5, 1.5, size=(V, 1))
    w[7] = 0.0  # a token without a direction
    return torch.tensor(w, dtype=torch.float32), torch.tensor(g.normal(size=V), dtype=torch.float32)


def continuation(g, p: int, n_gen: int, loop: tuple[int, int] | None = None, distinct: bool = False,
                 massive: int | None = None) -> dict:
    """A prompt of ``p`` tokens and ``n_gen`` generated ones; ``loop`` = (start, period) planted;
    ``distinct``: generated tokens all different (no loop); ``massive``: a row with a massive
    activation. Vectors' norms span three orders of magnitude."""
    n = p + n_gen
    ids = g.integers(0, V, n)
    if distinct:
        ids[p:] = g.choice(V, n_gen, replace=False)
    if loop is not None:
        start, period = loop
        pattern = g.choice(V, period, replace=False)  # primitive: no shorter period
        gen = ids[p:]
        gen[start:] = np.resize(pattern, n_gen - start)
        if start > 0:  # the loop starts exactly at ``start``
            gen[start - 1] = (gen[start - 1 + period] + 1) % V
    scale = 10 ** g.uniform(-1.5, 1.5, size=(n, 1))
    final = g.normal(size=(n, D)) * scale
    resid = g.normal(size=(n, LAYERS, D)) * scale[:, :, None] * np.linspace(0.5, 2, LAYERS)[:, None]
    if massive is not None:
        final[massive, 3] = 3e4
        resid[massive, 1:, 3] = 2e4
    generated = np.arange(n) >= p
    prob = np.where(generated, 10 ** g.uniform(-8, 0, n), np.nan)
    return {
        "token_ids": torch.tensor(ids),
        "generated": torch.tensor(generated),
        "final": torch.tensor(final, dtype=torch.float32),
        "resid": torch.tensor(resid, dtype=torch.float32),
        "prob": torch.tensor(prob, dtype=torch.float32),
        "sample_prob": torch.tensor(np.where(generated, g.uniform(0, 1, n), np.nan), dtype=torch.float32),
        "entropy": torch.tensor(np.where(generated, g.uniform(0, 6, n), np.nan), dtype=torch.float32),
        "rank": torch.tensor(np.where(generated, g.integers(0, V, n), -1), dtype=torch.int32),
        "loop": loop,
    }


def corpus(seed: int = 1) -> list[dict]:
    """Continuations of several lengths: planted loops (one from step 0, one of period 16), one
    without any, N = 1, a prompt of one token, a massive position."""
    g = rng(seed)
    specs = [
        dict(p=6, n_gen=20, loop=(5, 3)),
        dict(p=3, n_gen=12, loop=(0, 1)),
        dict(p=9, n_gen=17, distinct=True),
        dict(p=1, n_gen=40, loop=(8, 16)),
        dict(p=5, n_gen=1),
        dict(p=4, n_gen=20, loop=(12, 2), massive=6),
        dict(p=7, n_gen=9, massive=2),
        dict(p=2, n_gen=20, loop=(3, 7)),
    ]
    return [continuation(g, **s) for s in specs]


def feed(acc: GenerationWalk, c: dict, w, b, resid: bool = True) -> None:
    acc.update(c["token_ids"], c["generated"], c["final"], w, prob=c["prob"], rank=c["rank"],
               entropy=c["entropy"], sample_prob=c["sample_prob"], bias=b,
               resid=c["resid"] if resid else None)


# ---- the reference -----------------------------------------------------------------


def ref_loop(gen: list[int]) -> tuple[int, int] | None:
    """The first step s (and smallest period k) from which ``gen`` is k-periodic over >= 2 periods."""
    n = len(gen)
    for s in range(n):
        for k in range(1, MAX_PERIOD + 1):
            if n - s >= MIN_PERIODS * k and all(gen[j] == gen[j + k] for j in range(s, n - k)):
                return s, k
    return None


def ref_ngrams(ids: list[int], p: int) -> dict[int, tuple[int, int, int, int]]:
    """Per size: (n-grams ending at a generated row, of them seen ending earlier, n-grams inside
    the generated part, distinct ones among those)."""
    n, out = len(ids), {}
    for size in NGRAM_SIZES:
        grams = {e: tuple(ids[e - size + 1 : e + 1]) for e in range(size - 1, n)}
        ending = [e for e in range(p, n) if e - size + 1 >= 0]
        repeated = sum(any(grams[f] == grams[e] for f in range(size - 1, e)) for e in ending)
        inner = [grams[e] for e in range(p, n) if e - size + 1 >= p]
        out[size] = (len(ending), repeated, len(inner), len(set(inner)))
    return out


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def ref_one(c: dict, w: np.ndarray, b: np.ndarray, nucleus_p: float, resid: bool = True) -> dict:
    ids = c["token_ids"].tolist()
    n = len(ids)
    p = n - int(c["generated"].sum())
    n_gen = n - p
    final = c["final"].double().numpy()
    res = c["resid"].double().numpy()
    out: dict = {"rep": ref_ngrams(ids, p), "loop": ref_loop(ids[p:]), "n_gen": n_gen}
    out["records"] = {k: [float(c[k][i]) for i in range(p, n)] for k in REC}
    w_has = np.linalg.norm(w, axis=1) > 0
    steps = {}
    for j in range(n_gen):
        i = p + j
        if i == 0:
            continue
        ctx = final[i - 1]
        logits = ctx @ w.T + b
        prob = np.exp(logits - logits.max())
        prob /= prob.sum()
        top = np.sort(prob)[::-1]
        nucleus = int(np.argmax(np.cumsum(top) >= nucleus_p) + 1)
        back = [s for s in range(i - RECENT, i) if s >= 0]
        recent = np.mean([cos(ctx, w[ids[s]]) for s in back if w_has[ids[s]]])
        vocab = np.mean([cos(ctx, w[v]) for v in range(V) if w_has[v]])
        x = ids[i]
        step = {"nucleus": nucleus, "recent": recent, "chosen": cos(ctx, w[x]) if w_has[x] else math.nan,
                "vocab": vocab, "in_recent": any(ids[s] == x for s in back)}
        if resid and w_has[x]:
            ranks = []
            for layer in range(res.shape[1]):
                h = res[i - 1, layer]
                cv = [cos(h, w[v]) for v in range(V) if w_has[v]]
                ranks.append(sum(v > cos(h, w[x]) for v in cv))
            step["nearest"] = ranks
        steps[j] = step
    out["steps"] = steps
    return out


def ref_tables(refs: list[dict]) -> dict:
    """Per-step values, repetition sums, loops and self/nearest sums over continuations."""
    n_steps = max(r["n_gen"] for r in refs)
    per_step = {k: [[] for _ in range(n_steps)] for k in REC + ("nucleus",)}
    self_rows = {k: [[] for _ in range(n_steps)] for k in ("recent", "chosen", "vocab", "in_recent")}
    nearest = [[] for _ in range(LAYERS)]
    for r in refs:
        for k in REC:
            for j, v in enumerate(r["records"][k]):
                per_step[k][j].append(v)
        for j, s in r["steps"].items():
            per_step["nucleus"][j].append(s["nucleus"])
            if all(np.isfinite(s[k]) for k in ("recent", "chosen", "vocab")):
                for k in self_rows:
                    self_rows[k][j].append(float(s[k]))
            for layer, rank in enumerate(s.get("nearest", [])):
                nearest[layer].append(rank)
    return {"per_step": per_step, "self": self_rows, "nearest": nearest, "n_steps": n_steps}


def check_quartiles(rows: dict, keep: np.ndarray, groups: list[np.ndarray], edges: np.ndarray,
                    integer: bool, what: str) -> None:
    """Integer kinds: the sample's quartiles exactly (inverted CDF); others: in the histogram bin
    of the sample's quartile (what the interpolation promises, also for a handful of values)."""
    for col, q in (("q25", 0.25), ("median", 0.5), ("q75", 0.75)):
        for est, v in zip(rows[col][keep], groups, strict=True):
            ref = np.quantile(v, q, method="inverted_cdf")
            if integer:
                assert est == ref, (what, col, est, ref)
                continue
            k = np.searchsorted(edges, ref, side="right")  # its bin: [edges[k-1], edges[k])
            lo, hi = (edges[k - 1] if k > 0 else v.min()), (edges[k] if k < len(edges) else v.max())
            assert lo - 1e-12 <= est <= hi + 1e-12, (what, col, est, ref, lo, hi)


def check_all(res: dict, refs: list[dict], cfg: StatsConfig) -> None:
    ref = ref_tables(refs)
    table = res["generation"]
    # per-step curves: moments against numpy, quartiles within a bin (floats) or exact (integers)
    for stat, kind in (("prob", "prob"), ("sample_prob", "prob"), ("entropy", "entropy"),
                       ("rank", "rank"), ("nucleus", "nucleus")):
        groups = [np.array(v, np.float64) for v in ref["per_step"][stat]]
        groups = [np.concatenate(groups)] + groups  # step -1: every step
        nonempty = [g for g in groups if len(g)]
        rows = summary_rows(table, stat, "step")
        assert rows["step"].tolist() == list(range(-1, ref["n_steps"])), stat
        keep = np.array([len(g) > 0 for g in groups])
        assert rows["count"].tolist() == [len(g) for g in groups], stat
        sub = table.filter(np.isin(table["stat"].to_numpy(zero_copy_only=False), [stat])
                           & np.isin(table["step"].to_numpy(), rows["step"][keep]))
        check_moments(sub, stat, nonempty, group="step")
        check_quartiles(rows, keep, nonempty, cfg.bins[kind].array, kind in ("rank", "nucleus"), stat)
    # histogram: per step, the counts of the summary
    hist = res["generation_hist"].to_pydict()
    for stat in REC:
        per = {}
        for s, st, c in zip(hist["stat"], hist["step"], hist["count"], strict=True):
            if s == stat:
                per[st] = per.get(st, 0) + c
        assert [per[j] for j in range(ref["n_steps"])] == [len(v) for v in ref["per_step"][stat]]
    # repetition
    rep = res["generation_repetition"].to_pydict()
    assert rep["n"] == list(NGRAM_SIZES)
    for g, size in enumerate(NGRAM_SIZES):
        sums = np.sum([r["rep"][size] for r in refs], axis=0)
        assert [rep[k][g] for k in ("ngrams", "repeated", "inner_ngrams", "distinct")] == sums.tolist()
        shares = [r["rep"][size][1] / r["rep"][size][0] for r in refs if r["rep"][size][0]]
        dshares = [r["rep"][size][3] / r["rep"][size][2] for r in refs if r["rep"][size][2]]
        assert rep["sequences"][g] == len(shares) and rep["inner_sequences"][g] == len(dshares)
        with np.errstate(invalid="ignore", divide="ignore"):
            expect = [sums[1] / sums[0], sums[3] / sums[2],
                      np.mean(shares) if shares else np.nan, np.mean(dshares) if dshares else np.nan]
        got = [rep[k][g] for k in ("repeated_share", "distinct_share", "mean_repeated_share",
                                   "mean_distinct_share")]
        np.testing.assert_allclose(got, expect, rtol=1e-12)
    # loops
    loops = res["generation_loops"].to_pylist()
    assert len(loops) == 1
    found = [r["loop"] for r in refs if r["loop"] is not None]
    gen = sum(r["n_gen"] for r in refs)
    looped = sum(r["n_gen"] - r["loop"][0] for r in refs if r["loop"] is not None)
    assert loops[0]["n_sequences"] == len(refs) and loops[0]["looping"] == len(found)
    assert loops[0]["generated_tokens"] == gen and loops[0]["looped_tokens"] == looped
    np.testing.assert_allclose(loops[0]["share"], len(found) / len(refs), rtol=1e-12)
    np.testing.assert_allclose(loops[0]["looped_token_share"], looped / gen, rtol=1e-12)
    dist = res["generation_loop_dist"]
    for stat, col in (("loop_start", 0), ("loop_period", 1)):
        v = np.array([f[col] for f in found], np.float64)
        rows = summary_rows(dist, stat, None)
        assert rows["count"].tolist() == [len(v)]
        if len(v):
            np.testing.assert_allclose(rows["mean"], [v.mean()], rtol=1e-12)
            np.testing.assert_allclose(rows["std"], [v.std()], rtol=1e-9, atol=1e-12)
            for c, q in (("q25", 0.25), ("median", 0.5), ("q75", 0.75)):
                assert rows[c].tolist() == [np.quantile(v, q, method="inverted_cdf")], (stat, c)
    # self-bias
    st = res["generation_self"].to_pydict()
    assert st["step"] == list(range(-1, ref["n_steps"]))
    groups = {k: [sum(v, [])] + v for k, v in ref["self"].items()}
    assert st["count"] == [len(v) for v in groups["recent"]]
    with np.errstate(invalid="ignore"):
        mean = {k: np.array([np.mean(v) if v else np.nan for v in vs]) for k, vs in groups.items()}
    for col, key in (("recent_cos", "recent"), ("chosen_cos", "chosen"), ("vocab_cos", "vocab"),
                     ("chosen_in_recent_share", "in_recent")):
        np.testing.assert_allclose(st[col], mean[key], rtol=1e-5, atol=ATOL, err_msg=col)
    np.testing.assert_allclose(st["self_bias"], mean["recent"] - mean["vocab"], rtol=1e-5, atol=ATOL)
    np.testing.assert_allclose(st["chosen_bias"], mean["chosen"] - mean["vocab"], rtol=1e-5, atol=ATOL)
    # nearest-token decoding: ranks are integers, compared exactly
    near = res["generation_nearest"].to_pydict()
    if not res["generation_nearest"].num_rows:  # no resid given
        assert not any(ref["nearest"])
        return
    assert near["layer"] == list(range(LAYERS))
    for layer, ranks in enumerate(ref["nearest"]):
        v = np.array(ranks, np.float64)
        assert near["count"][layer] == len(v)
        if not len(v):
            continue
        np.testing.assert_allclose(near["share_nearest"][layer], np.mean(v == 0), rtol=1e-12)
        np.testing.assert_allclose(near["mean_rank"][layer], v.mean(), rtol=1e-12)
        np.testing.assert_allclose(near["std_rank"][layer], v.std(), rtol=1e-9, atol=1e-12)
        for c, q in (("q25_rank", 0.25), ("median_rank", 0.5), ("q75_rank", 0.75)):
            assert near[c][layer] == np.quantile(v, q, method="inverted_cdf"), (layer, c)
    nh = res["generation_nearest_hist"].to_pydict()
    per = [sum(c for lay, c in zip(nh["layer"], nh["count"], strict=True) if lay == layer)
           for layer in range(LAYERS)]
    assert per == [len(r) for r in ref["nearest"]]


# ---- tests -------------------------------------------------------------------------


def test_planted_loops_are_found_per_continuation():
    """Each planted loop's start and period exactly, from one continuation's accumulator."""
    w, b = head()
    for c in corpus():
        gen = c["token_ids"][c["generated"]].tolist()
        assert ref_loop(gen) == c["loop"]  # the planting is what the reference finds
        acc = GenerationWalk()
        feed(acc, c, w, b, resid=False)
        res = acc.result()
        assert res["generation_loops"]["looping"].to_pylist() == [int(c["loop"] is not None)]
        dist = {s: m for s, m in zip(res["generation_loop_dist"]["stat"].to_pylist(),
                                     res["generation_loop_dist"]["mean"].to_pylist(), strict=True)}
        if c["loop"] is not None:
            assert (dist["loop_start"], dist["loop_period"]) == c["loop"]


def test_loops_and_ngrams_on_small_alphabets():
    """Many short continuations over 2-3 tokens (periodic tails, near-loops, repeats everywhere):
    loop start, period and n-gram counts against brute force, one continuation at a time."""
    g = rng(13)
    w, b = head()
    for trial in range(80):
        p, n_gen = int(g.integers(0, 5)), int(g.integers(1, 40))
        ids = g.integers(0, 2 + trial % 2, p + n_gen)
        if trial % 3 == 0:  # a planted tail with a random (perhaps non-primitive) pattern
            k = int(g.integers(1, 9))
            ids[p + n_gen // 2 :] = np.resize(g.integers(0, 3, k), n_gen - n_gen // 2)
        n = p + n_gen
        acc = GenerationWalk()
        acc.update(torch.tensor(ids), torch.arange(n) >= p, torch.ones(n, D), w, bias=b)
        st = acc.export_state()
        loop = ref_loop(ids[p:].tolist())
        assert st["loop_looping"].tolist() == [int(loop is not None)], (ids, p)
        if loop is not None:
            assert st["loop_looped"].tolist() == [n_gen - loop[0]]
            assert (st["loop_start.sum"][0], st["loop_period.sum"][0]) == loop, (ids, p)
        ref = ref_ngrams(ids.tolist(), p)
        for k, key in enumerate(("rep_ngrams", "rep_repeated", "rep_inner", "rep_distinct")):
            assert st[key].tolist() == [ref[size][k] for size in NGRAM_SIZES], (key, ids, p)


def test_generation_matches_reference():
    cfg = StatsConfig(chunk_tokens=7)  # several logit chunks per continuation
    w, b = head()
    data = corpus()
    acc = GenerationWalk(cfg)
    for c in data:
        feed(acc, c, w, b)
    refs = [ref_one(c, w.double().numpy(), b.double().numpy(), cfg.nucleus_p) for c in data]
    assert sum(r["loop"] is not None for r in refs) == 5
    check_all(acc.result(), refs, cfg)


def test_other_nucleus_p_and_no_bias():
    cfg = StatsConfig(nucleus_p=0.5)
    w, _ = head(3)
    data = corpus(4)[:4]
    acc = GenerationWalk(cfg)
    for c in data:
        feed(acc, c, w, None)
    zero = np.zeros(V)
    refs = [ref_one(c, w.double().numpy(), zero, 0.5) for c in data]
    check_all(acc.result(), refs, cfg)


def test_continuation_without_loop_and_single_step():
    g = rng(5)
    w, b = head()
    cfg = StatsConfig()
    for c in (continuation(g, 6, 15, distinct=True), continuation(g, 3, 1)):
        acc = GenerationWalk(cfg)
        feed(acc, c, w, b)
        ref = ref_one(c, w.double().numpy(), b.double().numpy(), cfg.nucleus_p)
        assert ref["loop"] is None
        res = acc.result()
        check_all(res, [ref], cfg)
        assert res["generation_loops"].to_pylist()[0]["looping"] == 0
        assert summary_rows(res["generation_loop_dist"], "loop_start", None)["count"].tolist() == [0]
    rep = res["generation_repetition"].to_pydict()  # N = 1: one n-gram of each size ending there
    assert rep["ngrams"] == [1, 1, 1, 1] and rep["inner_ngrams"] == [1, 0, 0, 0]
    assert res["generation"].filter(np.array(res["generation"]["stat"].to_pylist()) == "nucleus")[
        "step"].to_pylist() == [-1, 0]


def test_prompt_free_continuation_has_no_first_context():
    """Row 0 generated (no prompt): step 0 has no context vector, the rest is counted."""
    g = rng(6)
    w, b = head()
    cfg = StatsConfig()
    c = continuation(g, 0, 10, loop=(4, 2))
    acc = GenerationWalk(cfg)
    feed(acc, c, w, b)
    ref = ref_one(c, w.double().numpy(), b.double().numpy(), cfg.nucleus_p)
    assert 0 not in ref["steps"]
    check_all(acc.result(), [ref], cfg)
    single = GenerationWalk(cfg)
    feed(single, continuation(g, 0, 1), w, b)  # nothing has a context
    res = single.result()
    assert res["generation_self"]["count"].to_pylist() == [0, 0]
    assert res["generation_nearest"]["count"].to_pylist() == [0] * LAYERS


def test_massive_position_and_tiny_vectors_keep_cosines_accurate():
    """Cosines stay float32-accurate whatever the norms (1e-3 .. 3e4 in one continuation)."""
    g = rng(7)
    w, b = head()
    c = continuation(g, 5, 30, massive=8)
    c["final"][12] *= 1e-3
    c["resid"][20] *= 1e-3
    acc = GenerationWalk()
    feed(acc, c, w, b)
    check_all(acc.result(), [ref_one(c, w.double().numpy(), b.double().numpy(), 0.9)], StatsConfig())


def test_merge_equals_one_pass_in_any_order():
    """Two partials (different continuation lengths; one without resid) merge into the one pass."""
    cfg = StatsConfig(chunk_tokens=5)
    w, b = head()
    data = corpus(8)
    first, second = data[:3], data[3:]  # longest continuation in the second
    one = GenerationWalk(cfg)
    a, c = GenerationWalk(cfg, "shard-00000"), GenerationWalk(cfg, "shard-00001")
    for x in first:
        feed(one, x, w, b, resid=False)
        feed(a, x, w, b, resid=False)
    for x in second:
        feed(one, x, w, b)
        feed(c, x, w, b)
    ab = GenerationWalk(cfg).merge(a).merge(c)
    ba = GenerationWalk(cfg).merge(c).merge(a)
    expect = one.result()
    for merged in (ab, ba):
        assert merged.shard_ids == {"shard-00000", "shard-00001"}
        got = merged.result()
        assert set(got) == set(expect)
        for name in expect:
            assert_same_table(got[name], expect[name], name)
    refs = [ref_one(x, w.double().numpy(), b.double().numpy(), cfg.nucleus_p, resid=False) for x in first]
    refs += [ref_one(x, w.double().numpy(), b.double().numpy(), cfg.nucleus_p) for x in second]
    check_all(expect, refs, cfg)
    # a fresh accumulator merging into one that already holds data (the non-empty branch)
    again = GenerationWalk(cfg, "shard-00000")
    for x in first:
        feed(again, x, w, b, resid=False)
    got = again.merge(c).result()
    for name in expect:
        assert_same_table(got[name], expect[name], name)


def test_merge_refusals_change_nothing():
    w, b = head()
    data = corpus(9)
    a, c = GenerationWalk(shard_ids="s0"), GenerationWalk(shard_ids="s0")
    feed(a, data[0], w, b)
    feed(c, data[3], w, b)
    before = {k: v.copy() for k, v in a.export_state().items()}
    with pytest.raises(ShardOverlapError):
        a.merge(c)
    other = GenerationWalk(shard_ids="s1")
    x = dict(data[3], resid=data[3]["resid"][:, :2])  # resid with another number of layers
    feed(other, x, w, b)
    with pytest.raises(StatsMergeError):
        a.merge(other)
    after = a.export_state()
    assert set(after) == set(before) and all(np.array_equal(after[k], before[k]) for k in before)
    with pytest.raises(StatsMergeError):
        a.merge(GenerationWalk(StatsConfig(nucleus_p=0.5), "s2"))
    with pytest.raises(ValueError, match="layers"):
        feed(a, x, w, b)  # one accumulator, one resid layout


def test_round_trip_through_arrow_and_parquet(monkeypatch, tmp_path):
    """Persisted partials rebuild the same tables. ``from_arrow`` finds the class by its family
    name in ACCUMULATORS: registered here as it is once families.py imports the module."""
    monkeypatch.setitem(ACCUMULATORS, GenerationWalk.family, GenerationWalk)
    w, b = head()
    acc = GenerationWalk(StatsConfig(), ["shard-00003"])
    for c in corpus(10)[:4]:
        feed(acc, c, w, b)
    expect = acc.result()
    write_partial(acc, tmp_path / "generation.parquet")
    for back in (Accumulator.from_arrow(acc.to_arrow()), GenerationWalk.from_arrow(acc.to_arrow()),
                 read_partial(tmp_path / "generation.parquet")):
        assert type(back) is GenerationWalk and back.shard_ids == {"shard-00003"}
        got = back.result()
        for name, table in expect.items():
            assert_same_table(got[name], table, name)


def test_empty_and_prompt_only():
    acc = GenerationWalk()
    assert acc.empty
    res = acc.result()
    assert all(t.num_rows == 0 for t in res.values())
    w, b = head()
    c = continuation(rng(11), 5, 3)
    prompt_only = {k: (v[:5] if isinstance(v, torch.Tensor) else v) for k, v in c.items()}
    feed(acc, prompt_only, w, b)  # no generated rows: nothing counted
    res = acc.result()
    assert res["generation_loops"].to_pylist()[0]["n_sequences"] == 0
    assert res["generation"].num_rows == len(res["generation"].column("stat").unique())  # step -1 only
    with pytest.raises(ValueError, match="last rows"):
        bad = dict(c, generated=torch.tensor([False, True, False, True, True, True, True, True]))
        feed(acc, bad, w, b)


def test_update_from_sequence_inputs():
    """The family reads the step records from ``SequenceInputs.columns`` and the head."""
    w, b = head()
    c = corpus(12)[0]
    direct, via = GenerationWalk(), GenerationWalk()
    feed(direct, c, w, b)
    cols = {k: c[k] for k in ("generated", "prob", "rank", "entropy", "sample_prob")}
    ids = c["token_ids"]
    inputs = SequenceInputs(ids, torch.zeros_like(ids), ids, ModelHead(LAYERS - 1, D, True, w, b),
                            resid=c["resid"], captured_final=c["final"], resid_layers=list(range(LAYERS)),
                            columns=cols)
    via.update_from(inputs)
    got = via.result()
    for name, table in direct.result().items():
        assert_same_table(got[name], table, name)
    assert FAMILY == "generation" and GenerationWalk.family in ("", FAMILY)
