"""Binned moments and histogram quantiles."""

import numpy as np
import pytest
import torch

from embwalk.stats import hist
from embwalk.stats.config import Bins, StatsConfig


def _add(state: dict, values: torch.Tensor, edges: np.ndarray, keep=None) -> None:
    for key, inc in hist.binned("v", values, edges, keep).items():
        state[key] = hist.combine(key, state[key], inc.numpy())


def _fill(values: np.ndarray, edges: np.ndarray) -> dict:
    state: dict = {}
    hist.init(state, "v", 1, len(edges) - 1)
    _add(state, torch.tensor(values)[:, None], edges)
    return state


def test_histogram_counts_match_numpy_with_under_overflow_and_closed_last_bin():
    edges = np.linspace(-1, 1, 11)
    vals = np.array([-1.5, -1.0, -0.95, 0.0, 0.1999, 0.2, 1.0, 1.0, 2.0, np.nan, np.inf])
    h = _fill(vals, edges)["v.hist"][0]
    finite = vals[np.isfinite(vals)]
    inner, _ = np.histogram(finite, edges)  # numpy closes the last bin too
    assert h[0] == 1 and h[-1] == 1  # -1.5 below, 2.0 above; nan/inf skipped
    assert list(h[1:-1]) == list(inner)


def test_moments_and_grouping():
    g = np.random.default_rng(0)
    v = g.normal(size=(500, 3))
    state: dict = {}
    hist.init(state, "v", 3, 20)
    keep = torch.tensor(g.random(500) > 0.3)
    _add(state, torch.tensor(v), np.linspace(-4, 4, 21), keep)
    kept = v[keep.numpy()]
    s = hist.summary(state, "v", np.linspace(-4, 4, 21))
    assert list(s["count"]) == [len(kept)] * 3
    np.testing.assert_allclose(s["mean"], kept.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s["std"], kept.std(0), rtol=1e-12)
    assert state["v.hist"].sum(1).tolist() == [len(kept)] * 3


@pytest.mark.parametrize(
    "bins, sample",
    [
        (Bins.linear(-1, 1, 100), lambda g: np.tanh(g.normal(size=20000))),
        (Bins.log(1e-3, 1e5, 160), lambda g: np.exp(g.normal(2, 1.5, size=20000))),
        (Bins.pow2(24), lambda g: np.floor(np.exp(g.normal(3, 2, size=20000)))),
        (Bins.linear(0, 1, 7), lambda g: g.random(20000)),
    ],
)
def test_quartiles_within_one_bin_of_numpy(bins, sample):
    edges = bins.array
    vals = sample(np.random.default_rng(1))
    s = hist.summary(_fill(vals, edges), "v", edges)
    for col, q in (("q25", 0.25), ("median", 0.5), ("q75", 0.75)):
        ref = np.quantile(vals, q)
        k = np.clip(np.searchsorted(edges, ref, side="right"), 1, len(edges) - 1)
        assert abs(s[col][0] - ref) <= edges[k] - edges[k - 1], (col, s[col][0], ref)


def test_quantile_interpolates_inside_the_bin():
    # uniform data in wide bins: linear interpolation is far better than one bin
    vals = np.random.default_rng(2).random(50000)
    edges = Bins.linear(0, 1, 7).array
    s = hist.summary(_fill(vals, edges), "v", edges)
    for col, q in (("q25", 0.25), ("median", 0.5), ("q75", 0.75)):
        assert abs(s[col][0] - np.quantile(vals, q)) < 0.01


def test_quantile_of_empty_and_out_of_range():
    edges = np.array([0.0, 1.0, 2.0])
    assert np.isnan(hist.quantile(edges, np.zeros(4, np.int64), 0.5))
    assert hist.quantile(edges, np.array([5, 0, 0, 0]), 0.5) == 0.0
    assert hist.quantile(edges, np.array([0, 0, 0, 5]), 0.5) == 2.0


def test_bins_specs_and_config_round_trip():
    assert Bins.from_spec({"linear": [0, 1, 4]}).edges == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert Bins.pow2(3).edges == (0.0, 1.0, 2.0, 4.0, 8.0)
    assert Bins.pow2(2, zero=False).edges == (1.0, 2.0, 4.0)
    with pytest.raises(ValueError):
        Bins((1.0, 1.0))
    with pytest.raises(ValueError):
        StatsConfig(families=("nope",))
    with pytest.raises(ValueError):
        StatsConfig(bins={"nope": [0, 1]})
    cfg = StatsConfig(bins={"cos": {"linear": [-1, 1, 10]}}, self_sim_types=(5, 3, 3),
                      cov_layers=(0, -1))
    assert cfg.self_sim_types == (3, 5)
    assert StatsConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.fingerprint() == StatsConfig.from_dict(
        {**cfg.to_dict(), "chunk_tokens": 3, "families": ["encoding"]}).fingerprint()


def test_integer_quantiles_are_the_samples_own_below_the_bound():
    """Ranks and nucleus sizes: exact (inverted-CDF) quantiles up to EXACT_INTEGERS, not a value
    interpolated inside a power-of-two bin (a median rank of 2 used to read 2.49)."""
    from embwalk.stats.config import EXACT_INTEGERS, default_bins

    edges = default_bins()["rank"].array
    g = np.random.default_rng(3)
    for sample in (np.array([0, 1, 2, 2, 2, 3, 7]), g.geometric(0.3, size=999) - 1, g.integers(0, 200, size=1000)):
        state: dict = {}
        hist.init(state, "rank", 1, len(edges) - 1)
        for key, inc in hist.binned("rank", torch.tensor(sample, dtype=torch.float64)[:, None], edges).items():
            state[key] = hist.combine(key, state[key], inc.numpy())
        got = hist.summary(state, "rank", edges, integer=True)
        for col, q in (("q25", 0.25), ("median", 0.5), ("q75", 0.75)):
            assert got[col][0] == np.quantile(sample, q, method="inverted_cdf"), (col, sample[:10])
    assert edges[EXACT_INTEGERS] == EXACT_INTEGERS and edges[EXACT_INTEGERS + 1] == 2 * EXACT_INTEGERS
