"""Ray executor on a local 2-CPU instance: same store as a local run, whatever dies."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from embwalk.corpus import CorpusConfig  # noqa: E402
from embwalk.errors import EmbwalkError, StoreError  # noqa: E402
from embwalk.executors import faults  # noqa: E402
from embwalk.executors.config import ClusterConfig  # noqa: E402
from embwalk.executors.local import extract_local  # noqa: E402
from embwalk.executors.ray import extract_ray  # noqa: E402
from embwalk.extraction.config import CaptureConfig, ExtractConfig  # noqa: E402
from embwalk.models.config import ModelConfig  # noqa: E402
from embwalk.store.config import StoreConfig  # noqa: E402
from embwalk.store.reader import Store  # noqa: E402
from tests.conftest import assert_same_contents, tiny_loaded  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
LINES = [f"Line {i}: the walk of token vectors through layer after layer, number {i * 7}." for i in range(40)]


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES) + "\n")
    return path


def _config(path: Path | str, corpus: Path, workers: int = 1, kind: str = "ray", **cluster) -> ExtractConfig:
    return ExtractConfig(
        corpus=CorpusConfig(path=str(corpus), txt_unit="line", seq_len=32),
        capture=CaptureConfig(sites=["resid_pre.0", "resid_post", "final", "attn_pattern.1"]),
        store=StoreConfig(path=str(path), shard_tokens=64, chunk_tokens=32),
        cluster=ClusterConfig(kind=kind, batch_size=2, threads=1, workers=workers, progress=False, **cluster),
    )


def _contents(path) -> dict:
    store = Store(path)
    out = {name: store.array(name)[:] for name in store.array_names}
    out["tokens"] = store.tokens()
    return out


@pytest.fixture
def model(smollm2):
    return tiny_loaded("llama", smollm2.tokenizer)


@pytest.fixture
def reference(tmp_path, corpus, model):
    """The uninterrupted local run, one thread like each Ray worker."""
    cfg = _config(tmp_path / "local", corpus, kind="local")
    extract_local(cfg, model)
    return _contents(cfg.store.path)


def test_one_and_two_workers_equal_the_local_run(ray_instance, tmp_path, corpus, model, reference):
    # Two workers write to a file:// URL: workers get the URL and open the store themselves.
    for workers, location in ((1, tmp_path / "ray1"), (2, f"file://{tmp_path / 'ray2'}")):
        cfg = _config(location, corpus, workers=workers)
        manifest = extract_ray(cfg, model)
        assert manifest["complete"] and len(manifest["shards"]) > 4
        assert_same_contents(_contents(tmp_path / f"ray{workers}"), reference)


def test_a_memory_store_is_refused_before_any_worker_starts(tmp_path, corpus, model):
    with pytest.raises(StoreError, match="memory://embwalk-ray/store: a memory:// store lives inside one process"):
        extract_ray(_config("memory://embwalk-ray/store", corpus, workers=2), model)


def test_worker_killed_while_writing_costs_only_its_shard(
    ray_instance, tmp_path, corpus, model, reference, monkeypatch
):
    flag = tmp_path / "killed"
    monkeypatch.setenv(faults.ENV, f"kill-while-writing:2:{flag}")
    cfg = _config(tmp_path / "ray", corpus, workers=2)
    manifest = extract_ray(cfg, model)
    assert flag.exists(), "the fault was not injected"
    assert Path(f"{flag}.written").exists(), "the worker failed before writing, it was not killed while writing"
    assert manifest["complete"]
    contents = _contents(cfg.store.path)
    rows = contents["tokens"].column("row").to_pylist()
    assert rows == list(range(manifest["n_tokens"]))  # every token exactly once
    assert_same_contents(contents, reference)


def test_a_shard_failing_every_retry_names_it_and_keeps_the_others(
    ray_instance, tmp_path, corpus, model, reference, monkeypatch
):
    monkeypatch.setenv(faults.ENV, "raise:3")
    cfg = _config(tmp_path / "ray", corpus, workers=2, max_retries=1)
    with pytest.raises(EmbwalkError, match=r"shard 3 \(token rows 192\.\.256\) failed 2 times.*injected failure"):
        extract_ray(cfg, model)
    store = Store(cfg.store.path)
    assert 3 not in store.committed and len(store.committed) == len(store.manifest["shards"]) - 1
    # A reader sees only committed shards: shard 3's rows are absent and refused.
    tokens = store.tokens()
    assert 192 not in tokens.column("row").to_pylist()
    with pytest.raises(StoreError, match="not committed"):
        store.rows("resid", slice(192, 200))
    rows = np.array(tokens.column("row"))
    np.testing.assert_array_equal(store.array("resid")[:][rows], reference["resid"][rows])
    # Without the fault, a rerun finishes the job, skipping what was committed.
    committed_rows = int(store.committed_rows().sum())
    monkeypatch.delenv(faults.ENV)
    manifest = extract_ray(cfg, model)
    assert manifest["run_tokens"] == manifest["n_tokens"] - committed_rows
    assert_same_contents(_contents(cfg.store.path), reference)


def test_killed_driver_resumes_and_equals_an_uninterrupted_run(ray_instance, tmp_path, minilm):
    corpus = tmp_path / "long.txt"
    corpus.write_text("\n".join(LINES * 8) + "\n")
    store = tmp_path / "store"
    args = [
        sys.executable, "-m", "jobs.extract", "model=minilm", "model.device=cpu", "cluster=ray",
        "cluster.workers=1", "cluster.batch_size=1", "cluster.progress=false", "corpus=files",
        f"corpus.path={corpus}", "corpus.txt_unit=line", "corpus.seq_len=32",
        "capture.sites=[resid_pre.0,resid_post,final]", "store.shard_tokens=64", "store.chunk_tokens=32",
        f"store.path={store}",
    ]
    driver = subprocess.Popen(args, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and len(list((store / "commits").glob("*.json"))) < 2:
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver, its local Ray instance and workers
    driver.wait()
    committed = len(list((store / "commits").glob("*.json")))
    assert committed >= 2
    n_shards = len(Store(store).manifest["shards"])
    assert committed < n_shards, "the job finished before it could be killed"

    cfg = _config(store, corpus, workers=2)
    cfg = replace(
        cfg, model=ModelConfig(name="all-minilm-l6-v2", device="cpu"),
        capture=CaptureConfig(sites=["resid_pre.0", "resid_post", "final"]),
        cluster=replace(cfg.cluster, batch_size=1),
    )
    manifest = extract_ray(cfg)
    assert manifest["complete"]
    assert 0 < manifest["run_tokens"] < manifest["n_tokens"]  # committed shards were skipped
    local = replace(
        cfg, store=replace(cfg.store, path=str(tmp_path / "local")), cluster=replace(cfg.cluster, kind="local")
    )
    extract_local(local, minilm)
    assert_same_contents(_contents(store), _contents(local.store.path))


@pytest.mark.parametrize("mode", ["pack", "document"])
def test_generation_on_two_workers_equals_the_local_run(ray_instance, tmp_path, corpus, model, mode):
    """embwalk generate on Ray: the same shard runner, so the same store (sampling is seeded per
    continuation, whichever worker runs it); with one prompt per line too, where continuations
    straddle shards."""
    from embwalk.generation.config import DecodeConfig
    from embwalk.jobs.generate import GenerateConfig

    def gen(path, kind: str, workers: int = 1) -> GenerateConfig:
        base = _config(path, corpus, workers=workers, kind=kind)
        return GenerateConfig(
            corpus=replace(base.corpus, seq_len=8, max_tokens=64, mode=mode), capture=base.capture,
            store=replace(base.store, shard_tokens=24, chunk_tokens=4), cluster=base.cluster,
            decode=DecodeConfig(strategy="sample", samples=2, max_new_tokens=4, seed=5),
        )

    extract_local(gen(tmp_path / "local-gen", "local"), model)
    manifest = extract_ray(gen(tmp_path / "ray-gen", "ray", workers=2), model)
    assert manifest["complete"] and len(manifest["shards"]) >= 4
    assert_same_contents(_contents(tmp_path / "ray-gen"), _contents(tmp_path / "local-gen"))


def test_a_two_stack_store_of_pairs_on_two_workers_equals_the_local_run(ray_instance, tmp_path):
    """Input-target pairs on Ray (docs/seq2seq.md): a two-stack store, each stack cut into several
    shards, written by two workers that load the saved T5 checkpoint themselves from model.name,
    holds what the same job run here with one thread holds, in both stacks."""
    from tests.extraction.test_t5_decoder import decoder_config, pairs_file

    sites = ["enc.resid_pre.0", "enc.resid_post", "enc.final", "enc.attn_pattern.1", "dec.resid_pre.0",
             "dec.resid_post", "dec.final", "dec.attn_pattern.0", "dec.cross_pattern"]
    base = decoder_config(tmp_path, pairs_file(tmp_path), sites=sites, shard_tokens=16)  # saves the checkpoint once

    def job(store: str, kind: str, workers: int | None) -> ExtractConfig:
        cfg = copy.deepcopy(base)
        cfg.store.path = str(tmp_path / store)
        cfg.cluster = replace(cfg.cluster, kind=kind, threads=1, workers=workers)
        return cfg

    local = extract_local(job("local", "local", None))
    got = extract_ray(job("ray", "ray", 2))
    for stack, sub in (("enc", "encoder"), ("dec", "decoder")):
        manifest = got["stacks"][stack]
        assert manifest["complete"] and len(manifest["shards"]) > 2, stack
        assert manifest["n_tokens"] == local["stacks"][stack]["n_tokens"], stack
        ray_contents, local_contents = _contents(tmp_path / "ray" / sub), _contents(tmp_path / "local" / sub)
        assert {"resid", "final", "pattern"} <= ray_contents.keys(), stack
        assert_same_contents(ray_contents, local_contents)
    assert "cross_pattern" in _contents(tmp_path / "ray" / "decoder")
    assert got["run_tokens"] == local["run_tokens"] > 0
