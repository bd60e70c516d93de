"""Ray at scale: the corpus is tokenized by Ray tasks, the driver never builds the model, and
what the workers receive does not grow with the corpus."""

from __future__ import annotations

from pathlib import Path

import pytest
import transformers
from ray import cloudpickle

ray = pytest.importorskip("ray")

from embwalk.corpus import CorpusConfig  # noqa: E402
from embwalk.executors.config import ClusterConfig  # noqa: E402
from embwalk.executors.local import extract_local  # noqa: E402
from embwalk.executors.ray import extract_ray, ray_mapper  # noqa: E402
from embwalk.extraction.config import CaptureConfig, ExtractConfig  # noqa: E402
from embwalk.models.config import ModelConfig  # noqa: E402
from embwalk.store.config import StoreConfig  # noqa: E402
from tests.conftest import assert_same_contents, tiny_loaded  # noqa: E402
from tests.corpus.test_staged import check_equal, write_corpus  # noqa: E402
from tests.executors.test_ray import _contents  # noqa: E402


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_tasks_tokenize_as_one_process_does(tmp_path, ray_instance, smollm2, minilm):
    corpus = write_corpus(tmp_path / "corpus", n_files=8)
    check_equal(CorpusConfig(path=str(corpus), mode="pack", seq_len=16, max_tokens=800), smollm2.tokenizer,
                tmp_path / "pack", ray_mapper(2))
    check_equal(CorpusConfig(path=str(corpus), mode="document", seq_len=24), minilm.tokenizer,
                tmp_path / "document", ray_mapper(2))


def _config(store: Path, corpus: Path, model: str, kind: str, shard_tokens: int) -> ExtractConfig:
    return ExtractConfig(
        model=ModelConfig(name=model, device="cpu"),
        corpus=CorpusConfig(path=str(corpus), txt_unit="line", seq_len=32),
        capture=CaptureConfig(sites=["resid_pre.0", "resid_post", "final"]),
        store=StoreConfig(path=str(store), shard_tokens=shard_tokens, chunk_tokens=32),
        cluster=ClusterConfig(kind=kind, batch_size=4, threads=1, workers=2, progress=False),
    )


def reference_shards(tmp_path: Path) -> list:
    from embwalk.store.commits import read_manifest

    return read_manifest(tmp_path / "local")["shards"]


def test_the_driver_never_builds_the_model_and_ships_no_corpus(tmp_path, ray_instance, smollm2, monkeypatch):
    model_dir = tmp_path / "tiny-llama"
    tiny = tiny_loaded("llama", smollm2.tokenizer)
    tiny.model.save_pretrained(model_dir, safe_serialization=True)
    smollm2.tokenizer.save_pretrained(model_dir)
    small, large = tmp_path / "small.txt", tmp_path / "large.txt"
    line = "A token walks through layer after layer of the residual stream, step {}."
    small.write_text("\n".join(line.format(i) for i in range(40)) + "\n")
    large.write_text("\n".join(line.format(i) for i in range(400)) + "\n")
    reference = _config(tmp_path / "local", small, str(model_dir), "local", 128)
    small_tokens = extract_local(reference)["n_tokens"]

    def no_model(self, *args, **kwargs):
        raise AssertionError("the driver built a model")

    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", no_model)  # in this process only
    shipped: list[int] = []
    original_put = ray.put

    def put(value, *args, **kwargs):
        shipped.append(len(cloudpickle.dumps(value)))
        return original_put(value, *args, **kwargs)

    monkeypatch.setattr(ray, "put", put)
    extract_ray(_config(tmp_path / "ray-small", small, str(model_dir), "ray", 128))
    assert_same_contents(_contents(tmp_path / "ray-small"), _contents(tmp_path / "local"))
    small_bytes, shipped[:] = sum(shipped), []
    # Ten times the corpus, shards ten times as long (the same number of shards): the same bytes shipped.
    manifest = extract_ray(_config(tmp_path / "ray-large", large, str(model_dir), "ray", 1280))
    assert manifest["n_tokens"] > 9 * small_tokens and len(manifest["shards"]) == len(reference_shards(tmp_path))
    assert abs(sum(shipped) - small_bytes) < 0.02 * small_bytes, (small_bytes, sum(shipped))


def _dies_once(part, location, cfg, tokenizer, flag_dir):
    """A tokenizing task whose worker is SIGKILLed the first time it reaches part 2."""
    import os
    import signal

    from embwalk.corpus.staged import stage_part_at

    flag = Path(flag_dir) / f"died-{part.index}"
    if part.index == 2 and not flag.exists():
        flag.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return stage_part_at(part, location, cfg, tokenizer)


def test_a_tokenizing_worker_killed_mid_run_is_retried(tmp_path, ray_instance, smollm2):
    """Ray runs the part again on another worker; the staged corpus is the uninterrupted one."""
    import sys

    from embwalk.corpus import read_documents, tokenize_corpus
    from embwalk.corpus.documents import corpus_parts
    from embwalk.corpus.staged import StagedCorpus
    from embwalk.store.fs import open_fs

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the task ships with its code
    cfg = CorpusConfig(path=str(write_corpus(tmp_path / "corpus", n_files=6)), mode="pack", seq_len=16)
    fs = open_fs(tmp_path / "store")
    counts = list(ray_mapper(2)(_dies_once, corpus_parts(cfg), (fs.location, cfg, smollm2.tokenizer,
                                                                      str(tmp_path))))
    assert (tmp_path / "died-2").exists() and [c.index for c in counts] == list(range(6))
    staged = StagedCorpus.from_counts(fs, counts, cfg, "smollm2")
    want = tokenize_corpus(read_documents(cfg), smollm2.tokenizer, cfg)
    rows = staged.read_rows(fs, 0, staged.n_tokens)
    assert staged.n_tokens == want.n_tokens
    assert (rows["token_id"] == want.token_ids).all() and (rows["doc_id"] == want.doc_ids).all()
