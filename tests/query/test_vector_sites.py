"""Site names resolve to an array and a layer position; names a store lacks fail in one line."""

from __future__ import annotations

import json

import pytest

from embwalk.errors import SiteError
from embwalk.query.vector_sites import VectorSite, pattern_index, vector_sites


@pytest.fixture(scope="module")
def manifest(packed):
    return json.loads((packed / "manifest.json").read_text())


def test_mapping(manifest):
    assert vector_sites(manifest, "resid_pre.0") == [VectorSite("resid_pre.0", "resid", 0)]
    assert vector_sites(manifest, "resid_post.2") == [VectorSite("resid_post.2", "resid", 3)]
    assert vector_sites(manifest, "final") == [VectorSite("final", "final", None)]
    assert vector_sites(manifest, "resid_mid.1") == [VectorSite("resid_mid.1", "resid_mid", 1)]
    assert vector_sites(manifest, "blocks.0.hook_resid_post") == [VectorSite("resid_post.0", "resid", 1)]
    assert vector_sites(manifest, "resid_post.-1") == [VectorSite("resid_post.2", "resid", 3)]
    assert [s.name for s in vector_sites(manifest, ["final", "resid_post", "final"])] == [
        "final", "resid_post.0", "resid_post.1", "resid_post.2"]


def test_stored_layers_follow_the_layers_attribute(documents):
    manifest = json.loads((documents / "manifest.json").read_text())
    assert vector_sites(manifest, "resid_post.1") == [VectorSite("resid_post.1", "resid", 0)]
    with pytest.raises(SiteError, match="resid_post.0 is not in this store; it has resid_post.1, final"):
        vector_sites(manifest, "resid_post.0")
    with pytest.raises(SiteError, match="resid_mid.0 is not in this store"):
        vector_sites(manifest, "resid_mid.0")
    assert pattern_index(manifest, None) == ([0, 2], [0, 1])
    assert pattern_index(manifest, ["attn_pattern.2", 0]) == ([2, 0], [1, 0])
    with pytest.raises(SiteError, match=r"attn_pattern.1 is not in this store; it has attention of layers \[0, 2\]"):
        pattern_index(manifest, [1])


@pytest.mark.parametrize(
    "name, fragment",
    [
        ("bogus.3", "unknown capture site 'bogus.3'"),
        ("resid_post.7", "layer 7 in capture site 'resid_post.7' is past the model's depth"),
        ("blocks.1.hook_nothing", "unknown TransformerLens hook"),
        ("attn_pattern.1", "is attention, not a per-token vector"),
        ([], "no sites given"),
    ],
)
def test_bad_sites(manifest, name, fragment):
    with pytest.raises(SiteError, match=fragment) as info:
        vector_sites(manifest, name)
    assert "\n" not in str(info.value)


def test_attention_layers_past_the_depth(manifest):
    with pytest.raises(SiteError, match="past the model's depth"):
        pattern_index(manifest, [3])
    with pytest.raises(SiteError, match="not an attention site"):
        pattern_index(manifest, ["resid_post.1"])
