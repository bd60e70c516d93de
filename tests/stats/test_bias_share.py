"""The bias_share statistic of a T5-family store: q and k recomputed from each stored layer input
equal the scores the model attends with (Seq2SeqCapturer's in-pass BiasShareStats, from inside its
attention function), summed per head in float64 over every sequence."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from embwalk.errors import EmbwalkError
from embwalk.executors.config import ClusterConfig
from embwalk.models.config import ModelConfig
from embwalk.models.loading import load_model
from embwalk.models.position_bias import BiasShareStats, ScoreTerms
from embwalk.models.seq2seq import Seq2SeqCapturer
from embwalk.stats.config import StatsOptions
from embwalk.stats.job import compute_store_stats
from embwalk.store.reader import Store
from tests.models.t5_checkpoints import save_t5
from tests.stats.stores import build_store

ONE = ClusterConfig(workers=1, progress=False)
COLUMNS = ("var_content", "var_bias", "cov", "var_score", "bias_share", "r2_bias", "pairs")


def reference(store, model, exclude: tuple[int, ...] = ()) -> list[BiasShareStats]:
    """Each stored sequence alone through the model, its score terms taken inside the attention call."""
    n_layers, n_heads = model.config.num_layers, model.config.num_heads
    out = [BiasShareStats(n_heads) for _ in range(n_layers)]
    for _, rows in Store(store).tokens().to_pandas().groupby("seq_id"):
        ids = torch.tensor(rows["token_id"].to_numpy())[None]
        with Seq2SeqCapturer(model, ["enc.attn_content", "enc.attn_bias"]) as cap:
            got = cap.run(ids)
        keep = ~torch.isin(torch.arange(ids.shape[1]), torch.tensor(exclude, dtype=torch.long))  # exclude_positions
        for layer, stats in enumerate(out):
            terms = ScoreTerms(got["enc.attn_content"][:, layer], got["enc.attn_bias"][:, layer], None)
            stats.update(terms, keep[None])
    return out


@pytest.mark.parametrize("name, exclude", [("t5", ()), ("umt5", ()), ("umt5", (0,))])
def test_bias_share_from_stored_inputs_equals_the_models_own_scores(tmp_path, name, exclude):
    path = save_t5(tmp_path, name)
    # document mode: sequences of several lengths; float32 so the recomputed q·k sees the model's inputs
    store = build_store(tmp_path, None, model_name=str(path), sites=["resid_pre.0", "resid_post"], dtype="float32",
                        mode="document", seq_len=24)
    summary = compute_store_stats(store, StatsOptions(exclude_positions=list(exclude)), ONE)
    assert "bias_share" in summary["families"]  # in the defaults of a model with a learned position bias
    table = pq.read_table(store / "stats" / "bias_share.parquet").to_pandas()
    model = load_model(ModelConfig(name=str(path), device="cpu")).model
    want = reference(store, model, exclude)
    assert sorted(table.layer.unique()) == [0, 1]  # residual index L = block L's input
    for layer, stats in zip((0, 1), want, strict=True):
        for kind in ("within_query", "pooled"):
            got = table[(table.layer == layer) & (table.kind == kind)].sort_values("head")
            ref = stats.summary(kind)
            for column in COLUMNS:
                np.testing.assert_allclose(got[column].to_numpy(), ref[column], rtol=2e-5, atol=1e-7,
                                           err_msg=f"layer {layer} {kind} {column}")


def test_in_pass_equals_two_step_and_other_models_do_not_offer_it(tmp_path, pack_store, tiny_llama):
    tmp_path /= "t5"
    path = save_t5(tmp_path, "umt5")
    stats = {"self_sim_top_k": 4, "resume": False}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # both routes on one thread: float32 reductions round alike
    try:
        store = build_store(tmp_path, None, model_name=str(path), sites=["resid_pre.0", "resid_post"], stats=stats)
        in_pass = pq.read_table(store / "stats" / "bias_share.parquet")
        compute_store_stats(store, StatsOptions(**stats), ONE)
    finally:
        torch.set_num_threads(threads)
    two_step = pq.read_table(store / "stats" / "bias_share.parquet")
    assert in_pass.num_rows == two_step.num_rows == 2 * 4 * 2  # layers, heads, kinds
    for col in in_pass.column_names:
        a, b = in_pass[col].to_numpy(zero_copy_only=False), two_step[col].to_numpy(zero_copy_only=False)
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-9, err_msg=col)
        else:
            assert (a == b).all(), col
    # a model without a learned position bias: not in its defaults, and refused when named
    assert "bias_share" not in StatsOptions().families_for() and "bias_share" in StatsOptions().families_for(
        position_bias=True)
    with pytest.raises(EmbwalkError, match="bias_share: does not apply: the model has no learned relative position"):
        compute_store_stats(pack_store, StatsOptions(families=["bias_share"]), ONE, loaded=tiny_llama)
