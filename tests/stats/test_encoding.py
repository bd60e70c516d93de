"""Encoding walk against a float64 loop reference."""

import numpy as np
import torch

from embwalk.stats import EncodingWalk, StatsConfig

from .helpers import check_moments, np64, ref_encoding, rng, summary_rows, walk

KIND = {"norm": "norm", "step": "step", "step_cos": "cos", "cos_next": "cos", "cos_last": "cos",
        "path_length": "step", "straightness": "ratio", "turn_angle": "angle"}


def test_encoding_matches_reference():
    resid = walk(rng(0), 60, 6, 16)
    acc = EncodingWalk()
    acc.update(resid)
    table = acc.result()["encoding"]
    ref = ref_encoding(np64(resid))
    for stat, values in ref.items():
        check_moments(table, stat, values)
    layers = {s: sorted(v for st, v in zip(table["stat"].to_pylist(), table["layer"].to_pylist(),
                                             strict=True) if st == s) for s in KIND}
    assert layers["norm"] == [0, 1, 2, 3, 4, 5]
    assert layers["step"] == layers["cos_next"] == layers["cos_last"] == [0, 1, 2, 3, 4]
    assert layers["step_cos"] == layers["turn_angle"] == [1, 2, 3, 4]
    assert layers["path_length"] == layers["straightness"] == [1, 2, 3, 4, 5]


def test_encoding_quartiles_dense():
    cfg = StatsConfig(bins={"cos": {"linear": [-1, 1, 100]}})
    resid = walk(rng(1), 3000, 3, 6)
    acc = EncodingWalk(cfg)
    acc.update(resid)
    table = acc.result()["encoding"]
    ref = ref_encoding(np64(resid))
    for stat, values in ref.items():
        check_moments(table, stat, values, bins=cfg.bins[KIND[stat]].array)


def test_histogram_table_shape():
    acc = EncodingWalk()
    acc.update(walk(rng(2), 5, 3, 4))
    h = acc.result()["encoding_hist"]
    d = h.to_pydict()
    rows = [i for i, (s, lay) in enumerate(zip(d["stat"], d["layer"], strict=True))
            if s == "norm" and lay == 1]
    assert sum(d["count"][i] for i in rows) == 5
    assert d["lo"][rows[0]] == -np.inf and d["hi"][rows[-1]] == np.inf


def test_low_precision_input_is_computed_in_float32():
    resid = walk(rng(3), 8, 4, 8)
    a, b = EncodingWalk(), EncodingWalk()
    a.update(resid.to(torch.bfloat16))
    b.update(resid.to(torch.bfloat16).float())
    assert a.result()["encoding"].equals(b.result()["encoding"])


def test_single_token_and_single_layer():
    acc = EncodingWalk()
    acc.update(walk(rng(4), 1, 3, 4))
    t = acc.result()["encoding"].to_pydict()
    assert set(t["count"]) == {1}
    one = EncodingWalk()
    one.update(torch.randn(3, 1, 4))
    rows = one.result()["encoding"].to_pydict()
    assert rows["stat"] == ["norm"] and rows["count"] == [3]


def adversarial_walk(g: np.random.Generator, n: int = 64, n_layers: int = 8, d: int = 576) -> torch.Tensor:
    """Norms spanning four orders of magnitude, as in SmolLM2: embeddings of norm ~2.7, later
    layers ~900, and position-0 tokens with massive activations (~24,000 in a few dimensions)."""
    x0 = g.normal(size=(n, d)) * (2.7 / np.sqrt(d))
    direction = g.normal(size=d)
    steps = g.normal(size=(n, n_layers - 1, d)) * (900 / np.sqrt(d) / np.sqrt(n_layers - 1))
    x = np.concatenate([x0[:, None], x0[:, None] + np.cumsum(steps, axis=1) + direction * 3.0], axis=1)
    massive = np.arange(0, n, 16)  # the first token of each 16-token sequence
    x[massive, 2:, :4] += 24_000.0
    return torch.tensor(x, dtype=torch.float32)


def test_cosines_are_accurate_when_norms_differ_by_orders_of_magnitude():
    """docs/statistics.md promises ~1e-7 of the cosine: the cosines are dot products over norms,
    not differences of squared norms (which cancel when |a| = 2.7 and |b| = 900)."""
    resid = adversarial_walk(rng(7))
    acc = EncodingWalk()
    acc.update(resid)
    table = acc.result()["encoding"]
    ref = ref_encoding(np64(resid))
    for stat in ("step_cos", "cos_next", "cos_last"):
        rows = summary_rows(table, stat, "layer")
        want = np.array([np.mean(v) for v in ref[stat]])
        # an absolute bound on means of cosines (|cos| <= 1): the old polarization formula was off by ~1e-4
        np.testing.assert_allclose(rows["mean"], want, rtol=0, atol=2e-7, err_msg=stat)
    check_moments(table, "norm", ref["norm"])


def test_trajectory_length_straightness_and_turns_on_adversarial_walks():
    """Path length, straightness and turn angles against float64 on the same adversarial walk
    (norms 2.7 .. 24,000); and turns of a nearly straight walk, which acos(cos) in float32
    would report as 0: the angle is 2 atan2(|a'-b'|, |a'+b'|) of the unit steps."""
    resid = adversarial_walk(rng(8))
    acc = EncodingWalk()
    acc.update(resid)
    table = acc.result()["encoding"]
    ref = ref_encoding(np64(resid))
    check_moments(table, "path_length", ref["path_length"], rtol=1e-6)
    for stat, atol in (("straightness", 1e-6), ("turn_angle", 2e-5)):
        rows = summary_rows(table, stat, "layer")
        np.testing.assert_allclose(rows["mean"], [np.mean(v) for v in ref[stat]], rtol=0, atol=atol, err_msg=stat)
    # nearly straight: every step along one direction, bent by ~0.03 degrees
    g = rng(9)
    direction = g.normal(size=64)
    direction /= np.linalg.norm(direction)
    bends = g.normal(size=(32, 6, 64)) * 4e-5
    straight = np.cumsum(direction * 1.0 + bends, axis=1)
    acc = EncodingWalk()
    acc.update(torch.tensor(straight, dtype=torch.float32))
    got = summary_rows(acc.result()["encoding"], "turn_angle", "layer")["mean"]
    x = np64(torch.tensor(straight, dtype=torch.float32))
    s = np.diff(x, axis=1)
    u = s / np.linalg.norm(s, axis=-1, keepdims=True)
    want = np.degrees(2 * np.arctan2(np.linalg.norm(u[:, 1:] - u[:, :-1], axis=-1),
                                     np.linalg.norm(u[:, 1:] + u[:, :-1], axis=-1))).mean(0)
    assert (want > 1e-3).all() and (want < 0.1).all()
    np.testing.assert_allclose(got, want, rtol=0.05)
