"""One validation path for every job's options: unknown keys rejected in one line, anywhere."""

from __future__ import annotations

import pytest

from embwalk.config import from_dict
from embwalk.errors import EmbwalkError
from embwalk.executors.config import ClusterConfig
from embwalk.extraction.config import ExtractConfig
from embwalk.stats.config import StatsOptions


def test_nested_sections_become_their_owners_dataclasses():
    cfg = ExtractConfig.from_dict({"store": {"shard_tokens": 512}, "capture": {"stats": {"families": ["encoding"]}}})
    assert cfg.store.shard_tokens == 512 and cfg.store.chunk_tokens == 256
    assert isinstance(cfg.capture.stats, StatsOptions) and cfg.capture.stats.families == ["encoding"]
    assert cfg.capture.stats.fast_moments is False  # one default for StatsOptions and StatsConfig
    assert from_dict(ExtractConfig, {}).cluster == ClusterConfig()


@pytest.mark.parametrize(
    "data, fragments",
    [
        ({"store": {"shard_tokns": 4}}, ["unknown store option(s): shard_tokns", "did you mean shard_tokens?"]),
        ({"corpus": {"max_token": 5}}, ["unknown corpus option(s): max_token", "did you mean max_tokens?"]),
        ({"capture": {"stats": {"bogus": 1}}}, ["unknown capture.stats option(s): bogus"]),
        ({"cluster": {"wrokers": 2}}, ["unknown cluster option(s): wrokers", "did you mean workers?"]),
        ({"modle": {}}, ["unknown option(s): modle", "did you mean model?"]),
    ],
)
def test_unknown_keys_are_named_with_the_closest_known_one(data, fragments):
    with pytest.raises(EmbwalkError) as info:
        ExtractConfig.from_dict(data)
    message = str(info.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message
