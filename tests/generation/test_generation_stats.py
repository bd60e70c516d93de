"""Statistics of generated walks: the generation family from a store equals the same family
computed in the pass (the stats job runs it by default on generation stores)."""

from __future__ import annotations

import pyarrow.parquet as pq
import torch

from embwalk.executors.config import ClusterConfig
from embwalk.executors.local import extract_local
from embwalk.extraction.config import CaptureConfig
from embwalk.stats.config import StatsOptions
from embwalk.stats.job import compute_store_stats
from tests.conftest import tiny_loaded
from tests.stats.helpers import assert_same_tables
from tests.stats.stores import peaked

from .test_generate import config

QUIET = ClusterConfig(workers=1, progress=False)


def tables(root) -> dict:
    return {p.stem: pq.read_table(p) for p in sorted((root / "stats").glob("*.parquet"))}


def test_in_pass_equals_two_step_on_a_generation_store(tmp_path, smollm2):
    loaded = peaked(tiny_loaded("llama", smollm2.tokenizer))
    cfg = config(tmp_path, strategy="sample", samples=2, temperature=1.2)
    cfg.capture = CaptureConfig(sites=cfg.capture.sites, stats={"self_sim_top_k": 4, "resume": False})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the stats job's workers: a float32 sum split over threads rounds otherwise
    try:
        extract_local(cfg, loaded)
    finally:
        torch.set_num_threads(threads)
    root = tmp_path / "store"
    in_pass = tables(root)
    assert {"generation", "generation_repetition", "generation_loops", "generation_self",
            "generation_nearest"} <= set(in_pass)
    summary = compute_store_stats(root, StatsOptions(self_sim_top_k=4, resume=False), QUIET, loaded=loaded)
    assert "generation" in summary["families"] and "generation" not in summary["skipped"]
    two_step = tables(root)
    assert in_pass.keys() == two_step.keys()
    assert_same_tables(in_pass, two_step)
    steps = two_step["generation_self"].column("step").to_pylist()
    assert sorted(steps) == [-1, *range(cfg.decode.max_new_tokens)]

