"""A store describes itself: labelled layer and head axes, consolidated metadata, ``complete``."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr

from embwalk.corpus import CorpusConfig
from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.extraction.config import CaptureConfig, ExtractConfig
from embwalk.store import layout
from embwalk.store.config import StoreConfig
from embwalk.store.writer import StoreWriter
from tests.conftest import tiny_loaded

LINES = [f"Line {i}: which layer is layer seven, and which head is head three? {i}." for i in range(6)]


@pytest.fixture(scope="module")
def subset_store(tmp_path_factory, smollm2) -> Path:
    tmp = tmp_path_factory.mktemp("subset")
    (tmp / "corpus.txt").write_text("\n".join(LINES) + "\n")
    cfg = ExtractConfig(
        corpus=CorpusConfig(path=str(tmp / "corpus.txt"), txt_unit="line", seq_len=16),
        # Residual indices 0 and 2 (resid_pre.0, resid_post.1), block 1's resid_mid, block 2's attention
        # heads 1 and 3: positions along each axis differ from the indices they hold.
        capture=CaptureConfig(sites=["resid_pre.0", "resid_post.1", "resid_mid.1", "attn_pattern.2"], heads=[1, 3]),
        store=StoreConfig(path=str(tmp / "store"), dtype="float16", shard_tokens=32, chunk_tokens=8),
        cluster=ClusterConfig(batch_size=4, progress=False),
    )
    extract_local(cfg, tiny_loaded("llama", smollm2.tokenizer))
    return tmp / "store"


def _open(path: Path) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "consolidated metadata missing" fallback warning
        return xr.open_zarr(path)  # no flag needed


def test_layer_coordinates_select_residual_indices(subset_store):
    acts = _open(subset_store / "activations.zarr")
    raw = zarr.open_array(subset_store / "activations.zarr" / "resid", mode="r")[:]
    assert acts.layer.values.tolist() == [0, 2]
    np.testing.assert_array_equal(acts.resid.sel(layer=2).values, raw[:, 1])  # index 2, position 1
    np.testing.assert_array_equal(acts.resid.sel(layer=0).values, raw[:, 0])
    with pytest.raises(KeyError):
        acts.resid.sel(layer=1)  # not captured: an error, not position 1
    # block-indexed arrays have an axis of their own, so a group with both opens in xarray
    assert acts.resid_mid.dims == ("token", "resid_mid_layer", "d_model")
    assert acts.resid_mid_layer.values.tolist() == [1]


def test_head_coordinates_select_head_ids(subset_store):
    attn = _open(subset_store / "attention.zarr")
    raw = zarr.open_array(subset_store / "attention.zarr" / "pattern", mode="r")[:]
    assert attn["head"].values.tolist() == [1, 3] and attn["layer"].values.tolist() == [2]
    np.testing.assert_array_equal(attn.pattern.sel(head=3, layer=2).values, raw[:, 0, 1])
    with pytest.raises(KeyError):
        attn.pattern.sel(head=0)


def test_manifest_says_complete_from_the_start(tmp_path):
    spec = layout.array_specs(
        n_tokens=16, n_sequences=2, seq_len=8, d_model=4, shard_tokens=8, chunk_tokens=8,
        per_token_layers={"resid": (0, 1)}, final=False, pattern_layers=(), heads=(),
    )
    manifest = {"format": layout.FORMAT, "format_version": layout.FORMAT_VERSION, "identity": {},
                "shards": [{"index": 0, "rows": [0, 8]}, {"index": 1, "rows": [8, 16]}]}
    StoreWriter.open(tmp_path / "s", manifest, spec)  # created, no shard run yet (an interrupted job)
    assert json.loads((tmp_path / "s" / layout.MANIFEST).read_text())["complete"] is False
