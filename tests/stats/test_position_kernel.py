"""The position-kernel table of a T5-family store: the model's compute_bias at every offset, both
stacks (the decoder's read from the checkpoint), listed in the summary; other stores have none."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import transformers as T

from embwalk.executors.config import ClusterConfig
from embwalk.models.position_bias import bias_layers, bias_module
from embwalk.stats.config import StatsOptions
from embwalk.stats.job import compute_store_stats
from tests.models.t5_checkpoints import T5_NAMES, save_t5
from tests.stats.stores import build_store

ONE = ClusterConfig(workers=1, progress=False)
MAX_DISTANCE = 16  # the tiny configs' relative_attention_max_distance
OWNERS = {"t5": ([0], [0]), "t5_v1_1": ([0], [0]), "mt5": ([0], [0]), "umt5": ([0, 1], [0, 1, 2])}


def t5_stats(root, name, **save):
    path = save_t5(root, name, **save)
    store = build_store(root, None, model_name=str(path), sites=["resid_pre.0", "resid_post", "attn_pattern.0"],
                        dtype="float32")
    return path, store, compute_store_stats(store, StatsOptions(), ONE)


@pytest.mark.parametrize("name", T5_NAMES)
def test_the_table_is_compute_bias_at_every_offset_of_both_stacks(tmp_path, name):
    path, store, summary = t5_stats(tmp_path, name)
    table = pq.read_table(store / "stats" / "position_kernel.parquet")
    assert table.column_names == ["stack", "layer", "head", "offset", "bias"]
    assert summary["tables"]["position_kernel"] == table.num_rows
    assert "position_kernel" in summary["model_tables"]
    assert json.loads((store / "stats" / "summary.json").read_text())["model_tables"] == summary["model_tables"]
    rows = table.to_pandas()
    full = T.AutoModelForSeq2SeqLM.from_pretrained(path)  # the whole checkpoint, both stacks
    n = MAX_DISTANCE + 1
    q, k = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    for stack, owners in zip(("enc", "dec"), OWNERS[name], strict=True):
        assert bias_layers(full, stack) == owners == sorted(rows[rows["stack"] == stack].layer.unique())
        for layer in owners:
            part = rows[(rows["stack"] == stack) & (rows.layer == layer)]
            offsets = np.arange(-MAX_DISTANCE, MAX_DISTANCE + 1 if stack == "enc" else 1)
            grid = part.pivot(index="head", columns="offset", values="bias")
            assert list(grid.index) == [0, 1, 2, 3] and list(grid.columns) == list(offsets)
            with torch.no_grad():
                want = bias_module(full, stack, layer).compute_bias(n, n)[0].numpy()  # [head, query, key]
            seen = (k <= q) if stack == "dec" else np.ones_like(q, bool)  # the decoder's later keys are masked
            got = grid.to_numpy()[:, (k - q + MAX_DISTANCE)[seen]]
            np.testing.assert_array_equal(got, want[:, seen])


def test_an_encoder_only_checkpoint_has_the_encoder_rows_and_says_why(tmp_path):
    _, store, summary = t5_stats(tmp_path, "umt5", encoder_only=True)
    rows = pq.read_table(store / "stats" / "position_kernel.parquet").to_pandas()
    assert set(rows["stack"]) == {"enc"} and sorted(rows.layer.unique()) == [0, 1]
    assert "no dec rows: the checkpoint has no decoder" in summary["model_tables"]["position_kernel"]


def test_a_rerun_keeps_it_and_other_models_have_none(tmp_path, pack_store, copy_store, tiny_llama):
    _, store, _ = t5_stats(tmp_path / "t5", "t5")
    again = compute_store_stats(store, StatsOptions(), ONE)  # every shard up to date: merged again
    assert again["timings"]["shards"] == 0 and (store / "stats" / "position_kernel.parquet").is_file()
    llama = compute_store_stats(copy_store(pack_store), StatsOptions(families=["encoding"]), ONE, loaded=tiny_llama)
    assert llama["model_tables"] == {} and "position_kernel" not in llama["tables"]


def test_a_stats_only_extraction_gets_it_from_embwalk_stats(tmp_path):
    """The in-pass merge has no model weights at hand; embwalk stats on that store adds the table."""
    path = save_t5(tmp_path, "t5")
    store = build_store(tmp_path, None, model_name=str(path), sites=["resid_post", "attn_pattern"],
                        stats={"self_sim_top_k": 4}, store_arrays=False)
    assert not (store / "stats" / "position_kernel.parquet").exists()
    summary = compute_store_stats(store, StatsOptions(), ONE)
    assert summary["tables"]["position_kernel"] == 4 * (2 * MAX_DISTANCE + 1) + 4 * (MAX_DISTANCE + 1)  # enc, dec
