"""Store writer: durable writes, disk errors, overflow detection, creation rules."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from pipeline.errors import StoreError
from pipeline.store import layout
from pipeline.store.durable import atomic_write
from pipeline.store.writer import StoreWriter, _check_finite


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
    assert record["n_tokens"] == 8 and record["checksums"]["resid"]
    np.testing.assert_array_equal(writer.arrays["resid"][8:16], data.transpose(1, 0, 2))
