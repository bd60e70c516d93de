"""Store writer: durable writes, disk errors, overflow detection, creation rules."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from embwalk.errors import EmbwalkError, StoreError
from embwalk.store import layout
from embwalk.store.commits import read_manifest
from embwalk.store.durable import atomic_write
from embwalk.store.writer import StoreWriter, _check_finite


def _spec(n_tokens: int) -> layout.ArraySpec:
    return layout.array_specs(
        n_tokens=n_tokens, n_sequences=1, seq_len=8, d_model=4, shard_tokens=8, chunk_tokens=8,
        per_token_layers={"resid": (0, 1)}, final=False, pattern_layers=(), heads=(),
    )[0]


def _manifest() -> dict:
    return {"format": layout.FORMAT, "format_version": layout.FORMAT_VERSION, "identity": {"x": 1},
            "shards": [{"index": 0, "rows": [0, 8]}]}


def test_full_disk_while_writing_is_one_line_and_leaves_nothing(tmp_path):
    target = tmp_path / "marker.json"

    def write(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StoreError, match=f"disk full while writing {target}"):
        atomic_write(target, write)
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary


def test_store_larger_than_free_disk_is_refused_before_writing(tmp_path):
    with pytest.raises(StoreError, match="not enough disk"):
        StoreWriter.open(tmp_path / "s", _manifest(), [_spec(10**14)])
    assert not (tmp_path / "s" / layout.MANIFEST).exists()


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_values_are_detected(dtype, bad):
    data = np.ones((4, 3), dtype=dtype)
    _check_finite("resid", data, 0, (0, 4))
    data[2, 1] = bad
    with pytest.raises(StoreError, match="overflow: resid"):
        _check_finite("resid", data, 0, (0, 4))


def test_refuses_a_foreign_directory_and_resumes_its_own(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not an embwalk store"):
        StoreWriter.open(tmp_path / "other", _manifest(), [_spec(16)])
    writer = StoreWriter.open(tmp_path / "s", _manifest(), [_spec(16)])
    assert writer.committed() == set()
    again = StoreWriter.open(tmp_path / "s", _manifest(), [_spec(16)])
    assert again.manifest["arrays"]["resid"]["layers"] == [0, 1]
    changed = dict(_manifest(), identity={"x": 2})
    with pytest.raises(StoreError, match="different job"):
        StoreWriter.open(tmp_path / "s", changed, [_spec(16)])


def test_commit_marker_follows_the_data(tmp_path):
    import pyarrow as pa

    writer = StoreWriter.open(tmp_path / "s", _manifest(), [_spec(16)])
    data = np.arange(2 * 8 * 4, dtype=np.float16).reshape(2, 8, 4)  # layer-major, as the runner hands it over
    columns = {c.name: pa.array(["t" if c.type == pa.string() else 0] * 8, type=c.type) for c in layout.TOKEN_SCHEMA}
    tokens = pa.table(columns, schema=layout.TOKEN_SCHEMA)
    record = writer.write_shard(1, (8, 16), {"resid": data}, tokens)
    assert writer.committed() == {1}
    assert record["n_tokens"] == 8
    shard_file, token_file = "activations.zarr/resid/c/1/0/0", layout.tokens_file(1)
    assert set(record["files"]) == {shard_file, token_file}
    assert record["files"][shard_file]["size"] == (tmp_path / "s" / shard_file).stat().st_size
    assert record["files"][token_file]["size"] == (tmp_path / "s" / token_file).stat().st_size
    np.testing.assert_array_equal(writer.arrays["resid"][8:16], data.transpose(1, 0, 2))


def test_commit_order_record_first_then_the_token_table(tmp_path, monkeypatch):
    """The token table's appearance is the commit: the record is durable before it, and a
    record without its token table (a cut-off commit) is not committed and is cleared on resume."""
    import pyarrow as pa

    writer = StoreWriter.open(tmp_path / "s", _manifest(), [_spec(16)])
    columns = {c.name: pa.array(["t" if c.type == pa.string() else 0] * 8, type=c.type) for c in layout.TOKEN_SCHEMA}
    tokens = pa.table(columns, schema=layout.TOKEN_SCHEMA)
    order = []
    original = writer.fs.write_atomic

    def write_atomic(rel, data):
        order.append(rel)
        if rel == layout.tokens_file(1):
            raise OSError("killed before the commit")
        return original(rel, data)

    monkeypatch.setattr(writer.fs, "write_atomic", write_atomic)
    with pytest.raises(OSError):
        writer.write_shard(1, (8, 16), {"resid": np.ones((2, 8, 4), np.float16)}, tokens)
    assert order[-2:] == [layout.commit_file(1), layout.tokens_file(1)]
    assert (tmp_path / "s" / layout.commit_file(1)).exists() and writer.committed() == set()
    again = StoreWriter.open(tmp_path / "s", _manifest(), [_spec(16)])
    assert again.trusted_shards() == set()
    assert not (tmp_path / "s" / layout.commit_file(1)).exists()


def test_options_are_checked_before_a_file_is_written(tmp_path):
    with pytest.raises(EmbwalkError, match="unknown store.compressor 'lz5'"):
        StoreWriter.open(tmp_path / "s", _manifest(), [_spec(16)], compressor="lz5")
    assert not (tmp_path / "s").exists()


def test_a_version_1_store_is_one_line_naming_the_version(tmp_path):
    import json

    root = tmp_path / "old"
    root.mkdir()
    (root / layout.MANIFEST).write_text(json.dumps({"format": layout.FORMAT, "format_version": 1}))
    for call in (lambda: StoreWriter.open(root, _manifest(), [_spec(16)]), lambda: read_manifest(root)):
        with pytest.raises(StoreError, match="format version 1; this embwalk reads version 2") as info:
            call()
        assert "\n" not in str(info.value)


def test_leftover_temporary_files_are_removed_on_the_next_run(tmp_path):
    StoreWriter.open(tmp_path / "s", _manifest(), [_spec(16)])
    tmp = tmp_path / "s" / layout.TMP_DIR
    assert tmp.is_dir() and not list(tmp.iterdir())  # every finished write renamed its temporary away
    (tmp / "0.host-123-abc").write_bytes(b"half a shard file")
    StoreWriter.open(tmp_path / "s", _manifest(), [_spec(16)])
    assert not list(tmp.iterdir())


def test_the_manifest_lists_no_shards_and_readers_get_them_back(tmp_path):
    """Pack mode: derived by arithmetic; otherwise (document mode) from plan.parquet."""
    import json

    from embwalk.plan import pack_shards
    from embwalk.store.commits import write_manifest
    from embwalk.store.fs import open_fs

    base = {"format": layout.FORMAT, "format_version": layout.FORMAT_VERSION, "n_tokens": 100, "shard_tokens": 32,
            "seq_len": 16}
    pack = dict(base, mode="pack", shards=[s.to_dict() for s in pack_shards(100, 32, 16)])
    document = dict(base, mode="document", shards=[
        {"index": 0, "rows": [0, 32], "seqs": [0, 3], "pattern_seqs": [0, 3], "seq_rows": [0, 40]},
        {"index": 1, "rows": [32, 64], "seqs": [2, 5], "pattern_seqs": [3, 5], "seq_rows": [25, 70]},
        {"index": 2, "rows": [64, 100], "seqs": [4, 8], "pattern_seqs": [5, 8], "seq_rows": [60, 100]},
    ])
    for name, manifest in (("pack", pack), ("document", document)):
        fs = open_fs(tmp_path / name)
        want = [dict(s) for s in manifest["shards"]]
        write_manifest(fs, dict(manifest))
        on_disk = json.loads((tmp_path / name / layout.MANIFEST).read_text())
        assert "shards" not in on_disk and on_disk["plan"]["n_shards"] == len(want)
        assert (on_disk["plan"]["file"] is None) == (name == "pack")
        assert (tmp_path / name / layout.PLAN_FILE).exists() == (name == "document")
        assert read_manifest(tmp_path / name)["shards"] == want
