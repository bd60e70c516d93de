"""The report's compact summary, its compare mode, and binned quantiles beyond the bins, from
synthetic tables (no model, no store): what the page says must be what the tables hold."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from embwalk.report import figures as F
from embwalk.report.data import ReportData, quantile_sides
from embwalk.report.html import write_page
from embwalk.report.summary import compare_rows, headline_rows, survive_caption, survives
from embwalk.stats import hist

PROB_EDGES = np.geomspace(1e-12, 1.0, 241)
KL_EDGES = np.geomspace(1e-8, 1e3, 221)
RANK_EDGES = np.arange(0.0, 257.0)


def binned_tables(stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[pa.Table, pa.Table]:
    """``{stat: (values [n, layers], edges)}`` -> the summary and histogram tables a family
    writes (the same hist functions the statistics use)."""
    summ: dict[str, list] = {k: [] for k in ("stat", "layer", "count", "mean", "std", "q25", "median", "q75")}
    hcols: dict[str, list] = {k: [] for k in ("stat", "layer", "bin", "lo", "hi", "count")}
    for name, (values, edges) in stats.items():
        state: dict[str, np.ndarray] = {}
        n_layers = values.shape[1]
        hist.init(state, name, n_layers, len(edges) - 1)
        for k, v in hist.binned(name, torch.as_tensor(values), edges).items():
            state[k] = hist.combine(k, state[k], v.numpy())
        s = hist.summary(state, name, edges, integer=name == "rank")
        summ["stat"] += [name] * n_layers
        summ["layer"] += list(range(n_layers))
        for k in ("count", "mean", "std", "q25", "median", "q75"):
            summ[k] += list(s[k])
        lo, hi = hist.bin_bounds(edges)
        h = state[f"{name}.hist"]
        for layer in range(n_layers):
            hcols["stat"] += [name] * h.shape[1]
            hcols["layer"] += [layer] * h.shape[1]
            hcols["bin"] += list(range(h.shape[1]))
            hcols["lo"] += list(lo)
            hcols["hi"] += list(hi)
            hcols["count"] += list(h[layer])
    return pa.table(summ), pa.table(hcols)


def lens_data(rng: np.random.Generator, n: int = 400, layers: int = 4) -> ReportData:
    """Logit-lens tables: p(next) below 1e-12 for 80% of the tokens at layer 0 (its median and
    quartiles are in the underflow bin), KL exactly 0 at the last layer."""
    prob = 10.0 ** rng.uniform(-6, -1, (n, layers))
    prob[: int(0.8 * n), 0] = 1e-15
    kl = 10.0 ** rng.uniform(-1, 1.5, (n, layers))
    kl[:, -1] = 0.0
    rank = rng.integers(0, 300, (n, layers)).astype(np.float64)
    summary, histogram = binned_tables({"rank": (rank, RANK_EDGES), "prob": (prob, PROB_EDGES),
                                        "kl": (kl, KL_EDGES)})
    return ReportData(None, {"config": {}, "headline": {}}, {"logit_lens": summary, "logit_lens_hist": histogram})


def test_quantile_sides_read_the_underflow_and_overflow_bins():
    h = {"layer": np.zeros(5, np.int64), "bin": np.arange(5), "lo": np.array([-np.inf, 0, 1, 2, 3.0]),
         "hi": np.array([0, 1, 2, 3, np.inf]), "count": np.array([6, 1, 1, 0, 2])}
    assert quantile_sides(h, 0.5) == {0: -1}  # 6 of 10 below the first edge
    assert quantile_sides(h, 0.7) == {0: 0}
    assert quantile_sides(h, 0.9) == {0: 1}  # 2 of 10 above the last edge


def test_a_median_in_the_underflow_bin_is_drawn_as_a_bound(tmp_path, monkeypatch):
    data = lens_data(np.random.default_rng(0))
    q = F.quantiles(data, "logit_lens", "prob")
    assert q.values["median"][0] == pytest.approx(1e-12)  # what the table says: the first edge
    assert list(q.side["median"]) == [-1, 0, 0, 0] and not q.exact[0]
    assert np.isnan(q.known("median")[0]) and np.isfinite(q.known("median")[1:]).all()
    kl = F.quantiles(data, "logit_lens", "kl")
    assert kl.exact[-1] and kl.values["median"][-1] == 0  # all zero: exact, whatever the bins
    drawn = {}
    monkeypatch.setattr("embwalk.report.figures.walk.save", lambda fig, out, name: drawn.setdefault(name, fig))
    fig = F.fig_logit_lens(data, tmp_path)
    ax = next(a for a in drawn["logit_lens"].axes if a.get_title() == "probability of the actual next token")
    median = next(line for line in ax.get_lines() if line.get_label() == "p_l(next) median")
    assert np.isnan(median.get_ydata()[0]) and np.isfinite(median.get_ydata()[1:]).all()
    bounds = [c for c in ax.collections if str(c.get_label()).startswith("median < 1e-12")]
    assert len(bounds) == 1 and bounds[0].get_offsets().tolist() == [[0.0, pytest.approx(1e-12)]]
    assert any("unresolved" in str(p.get_label()) for p in ax.patches)
    assert "median p_l(next) lies below the histogram's range (1e-12) at residual 0" in fig.caption
    assert "KL is 0 at residual 3 by definition" in fig.caption


def summary_data(*, scale: float = 1.0, sign: float = 1.0, exclusions: dict | None = None) -> ReportData:
    """Tables for the compact summary; ``scale`` multiplies the geometry and the sink mass."""
    layers = np.arange(5)
    geometry = pa.table({
        "layer": layers, "anisotropy": sign * scale * np.array([0.1, 0.3, 0.5, 0.6, 0.4]),
        "eff_dim": np.array([60.0, np.nan, 2.0, np.nan, 20.0]),
        "massive_tokens": np.array([0, 3, 5, 5, 0]), "massive_share": np.array([0, 0.03, 0.05, 0.05, 0]) * scale,
        "massive_dim": np.array([-1, 7, 7, 7, -1]),
    })
    attention = pa.table({"layer": np.repeat([0, 1], 2), "head": np.tile([0, 1], 2),
                          "sink_mass": scale * np.array([0.1, 0.2, 0.5, 0.6]),
                          "self_ratio": np.array([2.0, 0.5, 0.8, 3.0])})
    rank_summary = pa.table({"stat": ["rank"] * 5, "layer": layers, "count": [10] * 5,
                             "median": [1000.0, 300.0, 50.0, 8.0, 1.0]})
    decoding = pa.table({"stat": ["rank"], "count": [100], "median": [1.0]})
    decoding_hist = pa.table({"stat": ["rank"] * 3, "bin": [0, 1, 2], "lo": [-np.inf, 0, 1], "hi": [0, 1, np.inf],
                              "count": [0, 40, 60]})
    config = {"nucleus_p": 0.9} | (exclusions or {})
    summary = {"n_tokens": 640, "n_sequences": 10, "config": config, "skipped": {"decoding": "no LM head"},
               "headline": {"decoding_perplexity": 18.6 * scale, "attention_sink_rate": 0.5 * scale}}
    tables = {"geometry": geometry, "attention": attention, "logit_lens": rank_summary, "decoding": decoding,
              "decoding_hist": decoding_hist}
    return ReportData(None, summary, tables, "stats")


def test_the_compact_summary_holds_the_headline_numbers():
    rows = {r.key: r for r in headline_rows(summary_data())}
    assert rows["perplexity"].value == pytest.approx(18.6)
    assert rows["top1"].value == pytest.approx(0.4)
    assert [k for k in rows if k.startswith("lens_rank_")] == ["lens_rank_0", "lens_rank_1", "lens_rank_2",
                                                                "lens_rank_3", "lens_rank_4"]
    assert rows["lens_rank_3"].value == 8.0
    assert [(k, rows[k].value) for k in rows if k.startswith("anisotropy_")] == [
        ("anisotropy_0", pytest.approx(0.1)), ("anisotropy_2", pytest.approx(0.5)),
        ("anisotropy_4", pytest.approx(0.4))]
    assert [k for k in rows if k.startswith("eff_dim_")] == ["eff_dim_0", "eff_dim_2", "eff_dim_4"]  # finite only
    assert rows["sink_rate"].value == 0.5 and rows["sink_mass"].value == pytest.approx(0.35)
    assert rows["self_ratio_below_1"].value == 2
    assert rows["massive_share"].value == pytest.approx(0.05)
    assert rows["massive_where"].value == "residual 2, dimension 7" and not rows["massive_where"].finding
    assert rows["massive_layers"].value == 3 and rows["massive_share_2"].value == pytest.approx(0.05)
    assert rows["skipped"].value == "decoding: no LM head" and not rows["skipped"].finding
    assert "exclusions" not in rows  # statistics of before the exclusion options


@pytest.mark.parametrize(("a", "b", "verdict"), [
    (1.0, 1.0, True), (1.0, 1.99, True), (1.0, 0.51, True), (1.0, 2.01, False), (1.0, 0.49, False),
    (1.0, -1.0, False), (-2.0, -3.0, True), (0.0, 0.0, True), (0.0, 1e-9, False), (5.0, None, None),
    (float("nan"), 1.0, None),
])
def test_the_survive_rule(a, b, verdict):
    assert survives(a, b) is verdict


def test_the_survive_factor_is_an_option():
    assert survives(1.0, 2.9, factor=3.0) and not survives(1.0, 3.1, factor=3.0)
    assert "within 3x" in survive_caption(3.0)


def test_compare_mode_columns_and_verdicts(tmp_path):
    base = summary_data(exclusions={"exclude_positions": [], "exclude_massive": False})
    other = summary_data(scale=3.0, exclusions={"exclude_positions": [0], "exclude_massive": False})
    other.name = "stats-nopos0"
    other.summary["n_excluded"] = 10
    assert other.label == "stats-nopos0 (exclude_positions=[0], exclude_massive=false)"
    rows = {c.row.key: c for c in compare_rows(headline_rows(base), headline_rows(other))}
    assert rows["anisotropy_2"].other == pytest.approx(1.5) and rows["anisotropy_2"].verdict is False  # 3x
    assert rows["lens_rank_3"].verdict is True  # the same
    assert rows["eff_dim_0"].verdict is True
    assert rows["skipped"].verdict is None and rows["skipped"].verdict_text() == ""  # context, not judged
    assert rows["exclusions"].other == "exclude_positions=[0], exclude_massive=false"
    assert rows["tokens"].row.text() == "640, 10" and rows["tokens"].other == "640, 10 (10 tokens left out)"
    flipped = {c.row.key: c for c in compare_rows(headline_rows(base), headline_rows(summary_data(sign=-1.0)))}
    assert flipped["anisotropy_0"].verdict is False  # same size, other sign
    page = tmp_path / "index.html"
    write_page(page, "t", [], [], {}, list(rows.values()), columns=(base.label, other.label),
               survive_rule=survive_caption(), links=[("stats/summary.json", "../stats/summary.json")])
    text = page.read_text()
    assert "<th>stats (exclude_positions=[], exclude_massive=false)</th>" in text
    assert "<th>stats-nopos0 (exclude_positions=[0], exclude_massive=false)</th><th>survives</th>" in text
    assert "<td class='no'>no</td>" in text and "<td class='yes'>yes</td>" in text
    assert "within 2x" in text and "href='../stats/summary.json'" in text
    assert "<pre>" not in text  # no raw JSON dump


def test_one_run_has_one_value_column(tmp_path):
    page = tmp_path / "index.html"
    write_page(page, "t", [], [], {}, headline_rows(summary_data()))
    text = page.read_text()
    assert "survives" not in text and "<th>headline</th><th>stats</th></tr>" in text


def test_attention_figures_of_older_and_bidirectional_statistics(tmp_path):
    """Tables merged before self_ratio / ratio_to_uniform, of a bidirectional model: the figures
    draw what is there and their captions claim nothing the tables lack."""
    layers, heads, offsets = np.arange(2), np.arange(2), np.arange(-3, 4)
    lay, head, off = (a.ravel() for a in np.meshgrid(layers, heads, offsets, indexing="ij"))
    kernel = pa.table({"layer": lay, "head": head, "offset": off, "count": np.full(len(lay), 5),
                       "mean_weight": np.linspace(0.01, 0.3, len(lay)), "uniform_weight": np.full(len(lay), 1 / 7)})
    attention = pa.table({"layer": np.repeat(layers, 2), "head": np.tile(heads, 2),
                          "self_weight": np.array([0.05, 0.2, 0.3, 0.1]), "uniform_baseline": np.full(4, 1 / 7),
                          "self_bias": np.array([0.05, 0.2, 0.3, 0.1]) - 1 / 7, "sink_mass": np.full(4, 0.2)})
    data = ReportData(None, {"config": {}, "headline": {}}, {"attention_kernel": kernel, "attention": attention})
    k = F.fig_kernels(data, tmp_path)
    assert "negative: the key after the query" in k.caption and "Right," not in k.caption
    assert "causal" not in k.caption and "key 0 (query i = offset)" not in k.caption
    s = F.fig_self_bias(data, tmp_path)
    assert s.caption.startswith("2 of 4 (layer, head) pairs") and "predate self_ratio" in s.caption
    assert "every query sees it" in F.fig_sink(data, tmp_path).caption
